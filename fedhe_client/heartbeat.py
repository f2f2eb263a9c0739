"""A background thread that tells the server this client is still alive."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType

from fedhe_common.errors import FedHEError

logger = logging.getLogger(__name__)


class HeartbeatSender:
    """Calls ``send`` every ``interval_s`` seconds while the ``with`` block runs.

    A failed heartbeat is logged and the next one is tried on schedule: the
    server only stops waiting for a client after two missed intervals.
    """

    def __init__(self, send: Callable[[], object], interval_s: float) -> None:
        self._send = send
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def __enter__(self) -> HeartbeatSender:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 1)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._send()
            except FedHEError as exc:
                logger.warning("heartbeat not delivered: %s", exc)
