"""Server memory flat in the clients (issue 15): idle connections keep a small read
buffer, and the C heap's free pages go back to the system (real gRPC on loopback,
real glibc heap)."""

from __future__ import annotations

import ctypes
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from fedhe_common.rpc.serving import HeapTrimmer, create_server

SERVICE = "fedhe.test.Sink"
CONNECTIONS = 48
MESSAGE = b"u" * 32_000
MESSAGES = 40  # ~1.3 MB per upload, like a client's CKKS update


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2") or not HeapTrimmer().available:
        pytest.skip("needs glibc >= 2.33 (mallinfo2, malloc_trim)")
    libc.mallinfo2.restype = MallInfo2
    return libc


def _rss_anon_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


def _register(server: grpc.aio.Server) -> list[str]:
    async def upload(requests: AsyncIterator[bytes], _context: object) -> bytes:
        total = 0
        async for raw in requests:
            total += len(raw)
        return total.to_bytes(8, "big")

    handler = grpc.stream_unary_rpc_method_handler(upload)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Upload": handler}),)
    )
    return [SERVICE]


def test_connections_that_uploaded_keep_little_memory() -> None:
    """48 clients, each on its own TCP connection, upload ~1.3 MB and stay connected:
    the server's live heap grows by well under 64 KB per connection (gRPC's unbounded
    read buffer kept ~0.1-0.2 MB for each)."""
    libc = _libc()
    handle = create_server("127.0.0.1:0", True, None, 4 * 1024 * 1024, _register)
    channels = [
        grpc.insecure_channel(
            f"127.0.0.1:{handle.port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(CONNECTIONS)
    ]
    try:
        for ch in channels:
            grpc.channel_ready_future(ch).result(timeout=10)
        before = libc.mallinfo2().uordblks
        for ch in channels:
            call = ch.stream_unary(f"/{SERVICE}/Upload", None, None)
            got = call(iter([MESSAGE] * MESSAGES), timeout=30)
            assert int.from_bytes(got, "big") == len(MESSAGE) * MESSAGES
        time.sleep(0.2)
        grown = libc.mallinfo2().uordblks - before
    finally:
        for ch in channels:
            ch.close()
        handle.stop(grace=None)
    assert grown < CONNECTIONS * 64 * 1024, f"{grown / CONNECTIONS / 1024:.0f} KB per connection"


def test_trim_returns_free_pages_from_the_middle_of_the_heap() -> None:
    """16 MB freed between live blocks (so the heap's top cannot shrink) goes back."""
    libc = _libc()
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    size = 64 * 1024
    blocks = [libc.malloc(size) for _ in range(512)]
    for p in blocks:
        libc.memset(p, 1, size)  # touched: resident
    freed, keep = blocks[::2], blocks[1::2]  # every freed block lies between two live ones
    for p in freed:
        libc.free(p)
    before = _rss_anon_kb()
    HeapTrimmer().trim()
    after = _rss_anon_kb()
    for p in keep:
        libc.free(p)
    assert before - after > 8 * 1024, f"only {before - after} KB returned"


def test_trimmer_thread_trims_until_stopped() -> None:
    trimmer = HeapTrimmer(interval_s=0.01)
    if not trimmer.available:
        pytest.skip("C library without malloc_trim (not glibc)")
    trimmer.start()
    deadline = time.monotonic() + 5
    while trimmer.trims < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    trimmer.stop()
    done = trimmer.trims
    assert done >= 3
    time.sleep(0.05)
    assert trimmer.trims == done  # stopped


@pytest.mark.parametrize("window", [0, 64 * 1024])
def test_stream_window_is_configurable(window: int) -> None:
    """``stream_window_kib`` 0 hands the window back to gRPC's bandwidth probing; any
    fixed size still moves a multi-megabyte upload intact."""
    handle = create_server(
        "127.0.0.1:0", True, None, 4 * 1024 * 1024, _register, stream_window_bytes=window
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{handle.port}")
    try:
        call = channel.stream_unary(f"/{SERVICE}/Upload", None, None)
        got = call(iter([MESSAGE] * MESSAGES), timeout=30)
        assert int.from_bytes(got, "big") == len(MESSAGE) * MESSAGES
        assert handle.stream_window_bytes == window
    finally:
        channel.close()
        handle.stop(grace=None)
