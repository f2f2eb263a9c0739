"""``fedhe bench threshold``: threshold CKKS costs per 1M values, next to single-key.

3 clients (weights 1, 2, 3) encrypt with the collective public key of 3 parties
(N-of-N); the server adds; each party makes its decryption share (with smudging);
one client fuses. Process CPU time, scaled to 1M values.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedhe_cli.bench.cputime import PhaseTimer
from fedhe_common.crypto.aggregate import CiphertextAggregator
from fedhe_common.crypto.context import CKKSContext
from fedhe_common.crypto.presets import get_preset
from fedhe_common.crypto.public import PublicKeyEncryptor
from fedhe_common.crypto.secret import SecretKeyHolder
from fedhe_common.crypto.threshold import (
    ShareLedger,
    ShareRequest,
    ThresholdParty,
    collective_public_key,
    crs_for,
    decryption_share,
    fuse,
    ring_for,
)
from fedhe_common.mlbridge.chunking import ChunkPlan

WEIGHTS = (1, 2, 3)
PARTIES = 3


@dataclass
class ThresholdResult:
    """One row; field names are the JSON contract."""

    config: str
    n_values: int
    upload_bytes_per_value: float
    share_bytes_per_value: float
    encrypt_cpu_s_per_1m: float
    share_cpu_s_per_party_per_1m: float
    fusion_cpu_s_per_1m: float
    max_abs_err: float


def _values(n: int, seed: int) -> list[np.ndarray]:
    return [np.random.default_rng([seed, i]).uniform(-10, 10, n) for i in range(len(WEIGHTS))]


def run_threshold(preset_name: str, n: int, workdir: str, seed: int = 0) -> ThresholdResult:
    """N-of-N threshold round for one preset."""
    ring = ring_for(get_preset(preset_name))
    a = crs_for(os.urandom(32), ring)
    parties = [ThresholdParty(ring, alpha) for alpha in range(1, PARTIES + 1)]
    params, pk = collective_public_key(ring, [p.public_key_share(a) for p in parties], a)
    ctx = CKKSContext(params)
    encryptor = PublicKeyEncryptor(params, pk)
    aggregator = CiphertextAggregator(params)
    ledgers = [
        ShareLedger(os.path.join(workdir, f"{preset_name}-{p.alpha}.sqlite")) for p in parties
    ]
    plan = ChunkPlan(n, ctx.preset.values_per_ciphertext)
    timer = PhaseTimer()
    xs = _values(n, seed)
    up = share_bytes = 0
    err = 0.0
    for k in range(plan.count):
        start, stop = plan.bounds(k)
        acc = None
        for w, x in zip(WEIGHTS, xs, strict=True):
            with timer.phase("encrypt"):
                blob = encryptor.encrypt(x[start:stop])
            up += len(blob)
            acc = aggregator.add_weighted(acc, aggregator.load_upload(blob), w)
        aggregate = aggregator.to_blob(acc)
        shares = []
        for party, ledger in zip(parties, ledgers, strict=True):
            request = ShareRequest("bench", 1, k, len(WEIGHTS), len(WEIGHTS), None)
            with timer.phase("share"):
                shares.append(decryption_share(party, ledger, ctx, aggregate, request))
            share_bytes += len(shares[-1])
        with timer.phase("fuse"):
            got = fuse(ctx, ring, aggregate, shares)[: stop - start]
        exact = sum(w * x[start:stop] for w, x in zip(WEIGHTS, xs, strict=True))
        err = max(err, float(np.abs(got - exact).max()))
    per_1m = 1e6 / n
    return ThresholdResult(
        config=preset_name,
        n_values=n,
        upload_bytes_per_value=up / len(WEIGHTS) / n,
        share_bytes_per_value=share_bytes / PARTIES / n,
        encrypt_cpu_s_per_1m=timer.cpu_s["encrypt"] / len(WEIGHTS) * per_1m,
        share_cpu_s_per_party_per_1m=timer.cpu_s["share"] / PARTIES * per_1m,
        fusion_cpu_s_per_1m=timer.cpu_s["fuse"] * per_1m,
        max_abs_err=err,
    )


def run_single_key(n: int, seed: int = 0) -> ThresholdResult:
    """The single-key preset on the same values: no shares; fusion = decryption."""
    holder = SecretKeyHolder.generate(get_preset("single-key"))
    aggregator = CiphertextAggregator(holder.params)
    plan = ChunkPlan(n, holder.preset.values_per_ciphertext)
    timer = PhaseTimer()
    xs = _values(n, seed)
    up, err = 0, 0.0
    for k in range(plan.count):
        start, stop = plan.bounds(k)
        acc = None
        for w, x in zip(WEIGHTS, xs, strict=True):
            with timer.phase("encrypt"):
                blob = holder.encrypt(x[start:stop])
            up += len(blob)
            acc = aggregator.add_weighted(acc, aggregator.load_upload(blob), w)
        aggregate = aggregator.to_blob(acc)
        with timer.phase("fuse"):
            got = holder.decrypt(aggregate)[: stop - start]
        exact = sum(w * x[start:stop] for w, x in zip(WEIGHTS, xs, strict=True))
        err = max(err, float(np.abs(got - exact).max()))
    per_1m = 1e6 / n
    return ThresholdResult(
        "single-key",
        n,
        up / len(WEIGHTS) / n,
        0.0,
        timer.cpu_s["encrypt"] / len(WEIGHTS) * per_1m,
        0.0,
        timer.cpu_s["fuse"] * per_1m,
        err,
    )


def run_threshold_bench(
    n: int, workdir: str, on_config: Callable[[str], None] = lambda c: None
) -> list[ThresholdResult]:
    """Strict, practical and single-key on the same values."""
    out = []
    for name in ("threshold-strict", "threshold-practical"):
        on_config(name)
        out.append(run_threshold(name, n, workdir))
    on_config("single-key")
    out.append(run_single_key(n))
    return out
