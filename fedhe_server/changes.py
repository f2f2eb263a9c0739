"""A condition that also wakes asyncio waiters: long-polls wait without a thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading


class ChangeSignal(threading.Condition):
    """``notify_all`` (called with the lock held, as for any condition) also wakes
    every coroutine in :meth:`wait_async`, on whatever event loop it runs."""

    def __init__(self) -> None:
        super().__init__()
        self._async_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()
        self._waiters_lock = threading.Lock()

    def notify_all(self) -> None:
        """Wake threads waiting on the condition and all async waiters."""
        super().notify_all()
        with self._waiters_lock:
            waiters, self._async_waiters = self._async_waiters, set()
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(_resolve, future)

    async def wait_async(self, timeout_s: float) -> bool:
        """Wait for the next ``notify_all`` or ``timeout_s``; True if notified."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        entry = (loop, future)
        with self._waiters_lock:
            self._async_waiters.add(entry)
        try:
            await asyncio.wait_for(future, timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            with self._waiters_lock:
                self._async_waiters.discard(entry)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
