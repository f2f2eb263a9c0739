"""In-process plaintext FedAvg with the same learners and seeds (the reference run)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedhe_client.learner import LocalLearner
from fedhe_common.config.models import JobConfig
from fedhe_common.crypto.presets import get_preset


def run_plain_fedavg(
    job: JobConfig,
    clients: int,
    num_samples: list[int | None] | None = None,
    on_round: Callable[[int, dict[str, float]], None] = lambda r, m: None,
    torch_threads: int | None = None,
) -> dict[str, float]:
    """FedAvg weighted by sample counts, clipped like the encrypted path; final metrics.

    ``torch_threads``: train with the federation's clients' thread count (float sums in
    torch's kernels depend on it, and a one-image difference on a small test set is
    already 0.28 pp)."""
    sizes = num_samples or [None] * clients
    learners = [
        LocalLearner(job, i, clients, sizes[i], torch_threads=torch_threads)
        for i in range(clients)
    ]
    bound = (
        (job.encryption.clip_bound or get_preset(job.preset_name).clip_bound)
        if job.encryption.mode == "ckks"
        else np.inf
    )
    metrics: dict[str, float] = {}
    for number in range(1, job.job.rounds + 1):
        total = np.zeros(learners[0].manifest.total)
        weight = 0
        for learner in learners:
            vector, _ = learner.train_round(number)
            total += learner.sample_count * np.clip(vector, -bound, bound)
            weight += learner.sample_count
        for learner in learners:
            learner.load_vector(total / weight)
        metrics = learners[0].evaluate()
        on_round(number, metrics)
    return metrics
