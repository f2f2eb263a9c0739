"""Precision and release grid of ``single-key-compact`` sums (issue 15, docs/crypto.md §7).

The released sum is rounded to a grid that must stay coarser than the summed noise
(sigma 3.24 * ||w_eff||_2 units of the common scale, w_eff,i = w_i * 2^shift_i), and,
with many contributors, need not be coarser than that: the mean's error should shrink
with the number of clients the way the noise does.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedhe_common.crypto import compactwire as cw
from fedhe_common.crypto.compact import CompactCipher
from fedhe_common.mlbridge.chunking import ChunkPlan
from fedhe_common.mlbridge.compact_accumulate import CompactAccumulator
from tests.conftest import holder_for

NAME = "single-key-compact"
N = 4096
SIGMA = 3.24  # centered binomial, 21 coin pairs


def _sum(
    weights: list[int], seed: int, scales: list[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Values in (-1, 1) times ``scales`` (default 1: range exponent 0 in every chunk,
    all shifts 0): (decrypted weighted sum, exact weighted sum), 3 chunks."""
    holder = holder_for(NAME)
    ciphers = [CompactCipher(holder, f"job-p/client-{i}") for i in range(len(weights))]
    rng = np.random.default_rng(seed)
    xs = [rng.uniform(-0.999, 0.999, 3 * N) * f for f in scales or [1.0] * len(weights)]
    acc = CompactAccumulator(holder.preset, holder.fingerprint, ChunkPlan(3 * N, N))
    for c, x, w in zip(ciphers, xs, weights, strict=True):
        acc.add_upload(list(c.encrypt_vector(x)), w)
    blobs = [acc.chunk_blob(k) for k in range(acc.plan.count)]
    got = ciphers[0].decrypt_chunks(blobs, 3 * N, sum(weights), keep_base=False)
    exact = np.sum([w * x for w, x in zip(weights, xs, strict=True)], axis=0)
    return got, exact


@pytest.mark.parametrize(
    ("weights", "scales"),
    [
        ([1], [1.0]),
        ([5, 7, 11], [1.0] * 3),
        ([480, 479, 479], [1.0] * 3),
        ([100] * 10, [1.0] * 10),
        # one client's range 2^4 above the others': shift 4, its noise counts 16 times
        ([100] * 3, [1.0, 1.0, 16.0]),
    ],
)
def test_release_grid_stays_coarser_than_the_summed_noise(
    weights: list[int], scales: list[float]
) -> None:
    got, _ = _sum(weights, 1, scales)
    units = np.unique(got * 2.0**cw.VALUE_BITS)  # the sum in units of the finest scale
    spacing = np.diff(units).min()
    shifts = np.log2(scales)  # every client's range exponent is 0 + log2(scale)
    l2 = float(np.linalg.norm(np.array(weights) * 2.0**shifts))
    # 2^RELEASE_BITS * ||w||_2 = 2.47 sigma of the summed noise, whatever the weights
    assert spacing >= (1 << cw.RELEASE_BITS) * l2 * (1 - 1e-9)
    assert spacing >= 2 * SIGMA * l2


def test_mean_error_shrinks_with_many_contributors() -> None:
    weights = [100] * 10
    got, exact = _sum(weights, 2)
    err_units = (got - exact) / sum(weights) * 2.0**cw.VALUE_BITS  # error of the mean
    rms = float(np.sqrt(np.mean(err_units**2)))
    # noise alone: 3.24 / sqrt(10) = 1.02 units; grid 8 units (today): +2.31 -> 2.5;
    # grid 8 * ||w||_2 / sum(w) = 2.53 units: +0.73 -> ~1.25
    assert rms <= 1.7, f"rms error of the mean {rms:.2f} units of 2^-{cw.VALUE_BITS}"
