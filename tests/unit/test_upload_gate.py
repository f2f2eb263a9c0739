"""Upload admission (issue 15): at most N uploads stream at once, none starves."""

from __future__ import annotations

import asyncio

import pytest

from fedhe_common.errors import QuotaExceededError
from fedhe_server.upload_gate import DownloadSlots, UploadGate


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_slots_bound_uploads_and_free_at_stream_end() -> None:
    clock = Clock()
    gate = UploadGate(slots=2, lease_s=30, clock=clock)
    gate.admit("a")
    gate.admit("b")
    gate.admit("a")  # a renewal, not a new slot
    with pytest.raises(QuotaExceededError, match="retry"):
        gate.admit("c")
    gate.stream_started("a")
    gate.chunk_received("a")
    with pytest.raises(QuotaExceededError):
        gate.admit("c")
    gate.stream_ended("a")
    gate.admit("c")  # a's slot is free
    assert gate.held == 2


def test_unused_leases_expire_and_stalled_streams_stop_counting() -> None:
    clock = Clock()
    gate = UploadGate(slots=2, lease_s=30, clock=clock)
    gate.admit("never-streams")
    gate.admit("stalls")
    gate.stream_started("stalls")
    clock.t = 10
    with pytest.raises(QuotaExceededError):
        gate.admit("c")
    clock.t = 31  # no chunk for 30 s, and the other lease expired
    gate.admit("c")
    gate.admit("d")
    assert gate.held == 2
    gate.stream_ended("stalls")
    gate.stream_ended("unknown")  # a stream of an upload the gate never saw: ignored
    assert gate.held == 2


def test_resumed_streams_without_a_lease_are_counted_not_refused() -> None:
    gate = UploadGate(slots=1, lease_s=30, clock=Clock())
    gate.stream_started("resumed")  # no BeginUpload this time
    gate.stream_started("resumed")  # two streams of one upload
    with pytest.raises(QuotaExceededError):
        gate.admit("new")
    gate.stream_ended("resumed")
    assert gate.held == 1
    gate.stream_ended("resumed")
    gate.admit("new")


def test_download_slots_bound_senders_but_never_starve() -> None:
    async def scenario() -> list[object]:
        slots = DownloadSlots(slots=1, wait_s=0.2)
        events: list[object] = []

        async def download(name: str, hold_s: float) -> None:
            async with slots.slot() as got:
                events.append((name, got))
                await asyncio.sleep(hold_s)
            events.append((name, "done"))

        # a holds the only slot for 0.5 s: b gives up waiting after 0.2 s and goes anyway
        await asyncio.gather(download("a", 0.5), download("b", 0.0))
        async with slots.slot() as got:  # the slot is free again
            events.append(("c", got))
        return events

    events = asyncio.run(scenario())
    assert events[:3] == [("a", True), ("b", False), ("b", "done")]
    assert events[-1] == ("c", True)
