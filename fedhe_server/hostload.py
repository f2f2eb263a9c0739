"""A heartbeat's host load, checked before it is stored (a peer declares these numbers)."""

from __future__ import annotations

import math

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.errors import InvalidArgumentError
from fedhe_server.store.devices import HostLoad

MAX_BYTES = 1 << 50  # 1 PiB: more RAM or GPU memory than any host has
MAX_GPU_NAME = 128


def _percent(value: float, what: str, allow_unknown: bool = False) -> float:
    if allow_unknown and value == -1:
        return value
    if not math.isfinite(value) or not 0 <= value <= 100:
        raise InvalidArgumentError(f"host {what} must be within 0-100, got {value!r}")
    return float(value)


def _bytes(value: int, what: str) -> int:
    if value > MAX_BYTES:
        raise InvalidArgumentError(f"host {what} exceeds {MAX_BYTES} bytes")
    return int(value)


def host_load(request: pb.SendHeartbeatRequest) -> HostLoad | None:
    """The validated host load of a heartbeat, or None when it carries none."""
    if not request.HasField("host"):
        return None
    h = request.host
    name = h.gpu_name
    if len(name) > MAX_GPU_NAME or not name.isprintable():
        raise InvalidArgumentError(f"host gpu_name must be printable, at most {MAX_GPU_NAME}")
    ram_used, ram_total = _bytes(h.ram_used_bytes, "ram_used"), _bytes(h.ram_total_bytes, "ram")
    gpu_used = _bytes(h.gpu_memory_used_bytes, "gpu_memory_used")
    gpu_total = _bytes(h.gpu_memory_total_bytes, "gpu_memory")
    if ram_used > ram_total or gpu_used > gpu_total:
        raise InvalidArgumentError("host memory used exceeds its total")
    return HostLoad(
        _percent(h.cpu_percent, "cpu_percent"),
        ram_used,
        ram_total,
        name,
        gpu_used,
        gpu_total,
        _percent(h.gpu_utilization_percent, "gpu_utilization_percent", allow_unknown=True),
    )
