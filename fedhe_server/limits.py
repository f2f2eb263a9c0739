"""Bounds on what one client may declare: FedAvg weight, model size, metrics."""

from __future__ import annotations

import math

from fedhe_common.config.models import JobConfig
from fedhe_common.config.weights import sample_count_bound
from fedhe_common.errors import InvalidArgumentError, ValueRangeError

MAX_METRIC_NAME = 64
MAX_METRICS_PER_REPORT = 32
MAX_METRIC_NAMES_PER_ROUND = 32  # distinct names one client may report for one round
MAX_METRIC_ABS = 1e12


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
