"""FedAvg weights: the largest sample count one client may declare in a job.

Shared by the server (which refuses more) and the client agent (which declares at
most this, so a site with more data than the budget allows is capped, not refused).
"""

from __future__ import annotations

import math

from fedhe_common.config.models import JobConfig
from fedhe_common.crypto.presets import get_preset

# Plaintext jobs and real-weight presets: no wrap-around, but one client must not
# take over the model; operators raise participants.max_sample_count if needed.
DEFAULT_MAX_SAMPLE_COUNT = 1_000_000


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
