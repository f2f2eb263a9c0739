"""The public batch plan and the Nesterov schedule, identical on server, owner and twin.

Samples are assigned to blocks of ``block_rows`` once (a fixed permutation: the server
stores one ciphertext per block); each epoch visits the blocks in its own random order,
``blocks_per_batch`` blocks per mini-batch. Every quantity is a pure function of
(seed, epoch, step), so a restarted party recomputes it without stored RNG state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


def block_assignment(n: int, block_rows: int, seed: int) -> list[NDArray[np.int64]]:
    """Sample indices per block: a seeded permutation cut into blocks (the last may be short)."""
    if n < 1 or block_rows < 1:
        raise ValueError("need at least one sample and one row per block")
    perm = np.random.default_rng([seed, 0]).permutation(n)
    return [perm[i : i + block_rows] for i in range(0, n, block_rows)]


def contiguous_blocks(n: int, block_rows: int) -> list[NDArray[np.int64]]:
    """Validation blocks: samples in order, ``block_rows`` per block."""
    return [np.arange(i, min(i + block_rows, n)) for i in range(0, n, block_rows)]


def epoch_batches(n_blocks: int, blocks_per_batch: int, seed: int, epoch: int) -> list[list[int]]:
    """The mini-batches (lists of block ids) of one epoch, in order."""
    order = np.random.default_rng([seed, 1, epoch]).permutation(n_blocks)
    return [
        [int(b) for b in order[s : s + blocks_per_batch]]
        for s in range(0, n_blocks, blocks_per_batch)
    ]


def steps_per_epoch(n_blocks: int, blocks_per_batch: int) -> int:
    """Mini-batches per epoch."""
    return math.ceil(n_blocks / blocks_per_batch)


def nesterov_eta(step: int, enabled: bool = True) -> float:
    """eta_t of Kim et al. (2018): w' = v - lr g(v); v' = (1 - eta) w' + eta w.

    lambda_0 = 1, lambda_{t+1} = (1 + sqrt(1 + 4 lambda_t^2)) / 2,
    eta_t = (1 - lambda_t) / lambda_{t+1} (so eta_0 = 0, then negative). Zero if disabled.
    """
    if not enabled:
        return 0.0
    if step < 0:
        raise ValueError("step must be >= 0")
    lam = 1.0
    for _ in range(step):
        lam = (1.0 + math.sqrt(1.0 + 4.0 * lam * lam)) / 2.0
    lam_next = (1.0 + math.sqrt(1.0 + 4.0 * lam * lam)) / 2.0
    return (1.0 - lam) / lam_next


@dataclass(frozen=True)
class StepPlan:
    """One step of the plan: global step index, epoch, blocks, whether it ends the epoch."""

    step: int
    epoch: int
    blocks: tuple[int, ...]
    last_in_epoch: bool


def step_at(step: int, n_blocks: int, blocks_per_batch: int, seed: int) -> StepPlan:
    """The plan entry of global step ``step`` (epochs have equal step counts)."""
    per = steps_per_epoch(n_blocks, blocks_per_batch)
    epoch, k = divmod(step, per)
    batches = epoch_batches(n_blocks, blocks_per_batch, seed, epoch)
    return StepPlan(step, epoch, tuple(batches[k]), k == per - 1)


@dataclass
class EarlyStopping:
    """Validation-loss early stopping (HETAL: patience epochs without improvement).

    The data owner runs it on decrypted validation logits; the twin on float64 ones.
    """

    patience: int
    max_epochs: int
    best_loss: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0

    def update(self, epoch: int, loss: float) -> tuple[bool, bool]:
        """Record epoch ``epoch``'s loss; returns (improved, stop)."""
        if not math.isfinite(loss):
            raise ValueError("validation loss is not finite")
        improved = loss < self.best_loss
        if improved:
            self.best_loss, self.best_epoch, self.bad_epochs = loss, epoch, 0
        else:
            self.bad_epochs += 1
        stop = self.bad_epochs >= self.patience or epoch + 1 >= self.max_epochs
        return improved, stop
