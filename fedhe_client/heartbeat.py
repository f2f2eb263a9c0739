"""A background thread that tells the server this client is still alive."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
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
        host_stats()  # psutil's CPU figure is "since the last call": start the first span
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


def host_stats() -> pb.HostStats | None:
    """This host's CPU and RAM (psutil, when installed) and GPU (torch.cuda, if loaded).

    Never imports torch: a GPU is reported only by a process that already uses it.
    """
    try:
        import psutil
    except ImportError:
        return None
    memory = psutil.virtual_memory()
    stats = pb.HostStats(
        cpu_percent=min(100.0, max(0.0, float(psutil.cpu_percent(interval=None)))),
        ram_used_bytes=int(memory.total - memory.available),
        ram_total_bytes=int(memory.total),
        gpu_utilization_percent=-1.0,
    )
    torch: Any = sys.modules.get("torch")
    if torch is not None:
        _add_gpu(stats, torch)
    return stats


def _add_gpu(stats: pb.HostStats, torch: Any) -> None:
    try:
        if not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return
        device = torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(device)
        stats.gpu_name = str(torch.cuda.get_device_name(device))[:128]
        stats.gpu_memory_total_bytes = int(total)
        stats.gpu_memory_used_bytes = int(total - free)
    except (RuntimeError, AssertionError) as exc:
        logger.debug("no GPU figures: %s", exc)
        return
    try:  # needs NVML (pynvml); absent: the utilisation stays -1
        stats.gpu_utilization_percent = float(torch.cuda.utilization(device))
    except Exception as exc:  # any NVML failure only hides one number
        logger.debug("no GPU utilisation: %s", exc)
