"""Bounds on what one client may declare: FedAvg weight, model size, metrics."""

from __future__ import annotations

import math

from fedhe_common.config.models import JobConfig
from fedhe_common.crypto.presets import get_preset
from fedhe_common.errors import InvalidArgumentError, ValueRangeError

# Plaintext jobs and real-weight presets: no wrap-around, but one client must not
# take over the model; operators raise participants.max_sample_count if needed.
DEFAULT_MAX_SAMPLE_COUNT = 1_000_000
MAX_METRIC_NAME = 64
MAX_METRICS_PER_REPORT = 32
MAX_METRIC_NAMES_PER_ROUND = 32  # distinct names one client may report for one round
MAX_METRIC_ABS = 1e12


def expected_clients(config: JobConfig) -> int:
    """How many clients the job plans for (the weight budget is shared among them)."""
    p = config.participants
    return max(p.min_clients, p.expected_clients or 0, len(p.clients or ()))


def sample_count_bound(config: JobConfig) -> int:
    """The largest sample_count one client may declare in this job."""
    if config.participants.max_sample_count is not None:
        return config.participants.max_sample_count
    if config.encryption.mode != "ckks":
        return DEFAULT_MAX_SAMPLE_COUNT
    preset = get_preset(config.preset_name)
    if preset.weight_mode != "integer":
        return DEFAULT_MAX_SAMPLE_COUNT
    budget = preset.max_weight_sum(config.encryption.clip_bound or preset.clip_bound)
    return max(1, min(DEFAULT_MAX_SAMPLE_COUNT, math.floor(budget / expected_clients(config))))


def check_sample_count(config: JobConfig, sample_count: int) -> None:
    """Refuse a weight above the job's per-client bound, naming the setting."""
    bound = sample_count_bound(config)
    if sample_count > bound:
        raise ValueRangeError(
            f"sample_count {sample_count} exceeds this job's per-client bound {bound} "
            "(participants.max_sample_count; the default shares the preset's weight budget "
            "among the expected clients)"
        )


def check_num_values(config: JobConfig, num_values: int) -> None:
    """Refuse a model larger than the job allows (before any layout is pinned)."""
    if num_values > config.job.max_values:
        raise ValueRangeError(
            f"num_values {num_values} exceeds this job's limit {config.job.max_values} "
            "(job.max_values)"
        )


def validated_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Metric names and values a client may report: bounded and finite."""
    if len(metrics) > MAX_METRICS_PER_REPORT:
        raise InvalidArgumentError(
            f"{len(metrics)} metrics in one report; at most {MAX_METRICS_PER_REPORT}"
        )
    clean: dict[str, float] = {}
    for name, value in metrics.items():
        if not name or len(name) > MAX_METRIC_NAME or not name.isprintable():
            raise InvalidArgumentError(
                f"metric names must be 1-{MAX_METRIC_NAME} printable characters"
            )
        v = float(value)
        if not math.isfinite(v) or abs(v) > MAX_METRIC_ABS:
            raise InvalidArgumentError(
                f"metric {name!r} must be a finite number within +-{MAX_METRIC_ABS:g}"
            )
        clean[name] = v
    return clean
