"""Admission of uploads: at most ``slots`` stream at once (issue 15, flat server memory).

gRPC buffers up to one HTTP/2 flow-control window (about 1.5 MB on a fast link) for every
open upload stream, read or not, so the server's memory grows with the uploads in flight,
whatever the server does with them. The gate bounds them *before* a stream opens:
``BeginUpload`` takes a lease on one of ``slots`` slots, or answers RESOURCE_EXHAUSTED
(every client retries it with backoff and jitter). The lease is held while the
upload's chunk stream runs and released when it ends; a lease whose client never
opened its stream expires after ``lease_s``, and a stream that delivered no chunk for
``lease_s`` stops counting (stalled clients cannot starve the others). A stream without a
lease (a resumed upload) is never refused, only counted. All calls run on the server's
event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fedhe_common.errors import QuotaExceededError

UPLOAD_SLOTS = 16  # the server config's transfer_slots
LEASE_S = 30.0


class UploadGate:
    """Leases of the uploads allowed to stream now."""

    def __init__(
        self,
        slots: int = UPLOAD_SLOTS,
        lease_s: float = LEASE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.slots = slots
        self.lease_s = lease_s
        self.clock = clock
        self._expiry: dict[str, float] = {}  # leased, no stream open yet
        self._streams: dict[str, list[float]] = {}  # upload -> [open streams, last chunk at]

    def _holding(self, now: float) -> set[str]:
        """Uploads that hold a slot: unexpired leases, and streams that sent a chunk
        within ``lease_s`` (a stalled stream stops counting: it cannot starve others)."""
        for uid in [u for u, t in self._expiry.items() if t <= now]:
            del self._expiry[uid]
        live = {u for u, (_n, seen) in self._streams.items() if now - seen < self.lease_s}
        return self._expiry.keys() | live

    @property
    def held(self) -> int:
        """Slots in use now."""
        return len(self._holding(self.clock()))

    def admit(self, upload_id: str) -> None:
        """Lease a slot for ``upload_id`` (again: renewed), or raise QuotaExceededError."""
        now = self.clock()
        holding = self._holding(now)
        if upload_id not in holding and len(holding) >= self.slots:
            raise QuotaExceededError(
                f"{len(holding)} uploads are streaming; retry BeginUpload in a moment"
            )
        self._expiry[upload_id] = now + self.lease_s

    def stream_started(self, upload_id: str) -> None:
        """An UploadChunks stream for ``upload_id`` delivered its first chunk."""
        self._expiry.pop(upload_id, None)
        entry = self._streams.setdefault(upload_id, [0, self.clock()])
        entry[0] += 1

    def chunk_received(self, upload_id: str) -> None:
        """The upload's stream is alive."""
        entry = self._streams.get(upload_id)
        if entry is not None:
            entry[1] = self.clock()

    def stream_ended(self, upload_id: str) -> None:
        """That stream ended (complete, failed or cancelled): its slot is free."""
        entry = self._streams.get(upload_id)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] <= 0:
            del self._streams[upload_id]


DOWNLOAD_SLOTS = 16
DOWNLOAD_WAIT_S = 10.0


class DownloadSlots:
    """At most ``slots`` aggregate downloads send at once; the others wait before their
    first message (holding no data). A download never waits longer than ``wait_s``:
    then it goes without a slot, so stalled clients cannot starve the others."""

    def __init__(self, slots: int = DOWNLOAD_SLOTS, wait_s: float = DOWNLOAD_WAIT_S) -> None:
        self.slots = slots
        self.wait_s = wait_s
        self._sem: asyncio.Semaphore | None = None  # made on the server's event loop

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[bool]:
        """Hold a slot for the block; yields False when it went without one."""
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.slots)
        sem = self._sem
        try:
            await asyncio.wait_for(sem.acquire(), self.wait_s)
        except TimeoutError:
            yield False
            return
        try:
            yield True
        finally:
            sem.release()
