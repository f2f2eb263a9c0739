"""``fedhe bench threshold``: threshold CKKS costs per 1M values, next to single-key.

3 clients (weights 1, 2, 3) encrypt with the collective public key of 3 parties
(N-of-N); the server adds; each party makes its decryption share (with smudging);
one client fuses. Process CPU time, scaled to 1M values.

``verify_*`` is what a party checks before it releases a share (issue 10, findings 2
and 3): it downloads every contributing upload's chunk (c0 and c1) with its signed
statement, checks the Ed25519 signatures, the chunk sha256, the c1 plausibility test,
recomputes the weighted sum and compares it with the aggregate (plus the format
checks of the aggregate). ``verify_bytes_per_value_per_party`` is that download per
value (uploads, statements and signatures); the aggregate itself is not counted.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedhe_cli.bench.cputime import PhaseTimer
from fedhe_common.crypto import identity
from fedhe_common.crypto.aggregate import CiphertextAggregator
from fedhe_common.crypto.context import CKKSContext
from fedhe_common.crypto.presets import get_preset
from fedhe_common.crypto.provenance import (
    SignedContribution,
    sign_upload,
    upload_statement,
    verify_aggregate,
)
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
    verify_cpu_s_per_party_per_1m: float = 0.0
    verify_bytes_per_value_per_party: float = 0.0


def _values(n: int, seed: int) -> list[np.ndarray]:
    return [np.random.default_rng([seed, i]).uniform(-10, 10, n) for i in range(len(WEIGHTS))]


@dataclass
class _Totals:
    upload_bytes: int = 0
    share_bytes: int = 0
    verify_bytes: int = 0
    max_err: float = 0.0


def _rounds(
    n: int,
    seed: int,
    values_per_ct: int,
    encrypt: Callable[[np.ndarray], bytes],
    aggregator: CiphertextAggregator,
    decrypt: Callable[[int, bytes, list[bytes]], tuple[np.ndarray, int]],
    timer: PhaseTimer,
) -> _Totals:
    """Encrypt, aggregate and decrypt every chunk (``decrypt`` gets the aggregate and the
    chunk's uploads; it returns (values, share bytes))."""
    plan = ChunkPlan(n, values_per_ct)
    xs = _values(n, seed)
    totals = _Totals()
    for k in range(plan.count):
        start, stop = plan.bounds(k)
        acc = None
        uploads = []
        for w, x in zip(WEIGHTS, xs, strict=True):
            with timer.phase("encrypt"):
                blob = encrypt(x[start:stop])
            totals.upload_bytes += len(blob)
            uploads.append(blob)
            acc = aggregator.add_weighted(acc, aggregator.load_upload(blob), w)
        got, share_bytes = decrypt(k, aggregator.to_blob(acc), uploads)
        totals.share_bytes += share_bytes
        exact = sum(w * x[start:stop] for w, x in zip(WEIGHTS, xs, strict=True))
        totals.max_err = max(totals.max_err, float(np.abs(got[: stop - start] - exact).max()))
    return totals


def run_threshold(preset_name: str, n: int, workdir: str, seed: int = 0) -> ThresholdResult:
    """N-of-N threshold round for one preset."""
    ring = ring_for(get_preset(preset_name))
    a = crs_for(os.urandom(32), ring)
    parties = [ThresholdParty(ring, alpha) for alpha in range(1, PARTIES + 1)]
    params, pk = collective_public_key(ring, [p.public_key_share(a) for p in parties], a)
    ctx = CKKSContext(params)
    ledgers = [
        ShareLedger(os.path.join(workdir, f"{preset_name}-{p.alpha}.sqlite")) for p in parties
    ]
    timer = PhaseTimer()
    clients = [f"client-{i}" for i in range(len(WEIGHTS))]
    keys = {c: identity.new_private_key() for c in clients}
    public = {c: identity.public_key(k) for c, k in keys.items()}
    verify_bytes = [0]

    def sign(k: int, uploads: list[bytes]) -> list[SignedContribution]:
        out = []
        for client, w, blob in zip(clients, WEIGHTS, uploads, strict=True):
            hashes = [bytes(32)] * k + [hashlib.sha256(blob).digest()]  # chunk k's hash
            st = upload_statement("bench", 1, client, w, ctx.fingerprint, hashes, bytes(32))
            out.append(SignedContribution(client, st, sign_upload(keys[client], st), blob))
        return out

    def decrypt(k: int, aggregate: bytes, uploads: list[bytes]) -> tuple[np.ndarray, int]:
        signed = sign(k, uploads)
        shares = []
        for party, ledger in zip(parties, ledgers, strict=True):
            request = ShareRequest("bench", 1, k, len(WEIGHTS), len(WEIGHTS), None, sum(WEIGHTS))
            # chunks every round; a statement and its signature once per upload
            verify_bytes[0] += sum(
                len(c.blob) + (len(c.statement) + 64 if k == 0 else 0) for c in signed
            )
            with timer.phase("verify"):
                verified = verify_aggregate(
                    params, aggregate, "bench", 1, k, signed, public, len(WEIGHTS)
                )
            with timer.phase("share"):
                shares.append(decryption_share(party, ledger, ctx, aggregate, request, verified))
        with timer.phase("fuse"):
            return fuse(ctx, ring, aggregate, shares, sum(WEIGHTS)), sum(map(len, shares))

    totals = _rounds(
        n,
        seed,
        ctx.preset.values_per_ciphertext,
        PublicKeyEncryptor(params, pk).encrypt,
        CiphertextAggregator(params),
        decrypt,
        timer,
    )
    totals.verify_bytes = verify_bytes[0]
    return _result(preset_name, n, totals, timer, PARTIES)


def run_single_key(n: int, seed: int = 0) -> ThresholdResult:
    """The single-key preset on the same values: no shares; fusion = decryption."""
    holder = SecretKeyHolder.generate(get_preset("single-key"))
    timer = PhaseTimer()

    def decrypt(k: int, aggregate: bytes, uploads: list[bytes]) -> tuple[np.ndarray, int]:
        with timer.phase("fuse"):
            return holder.decrypt(aggregate, weight_sum=sum(WEIGHTS)), 0

    totals = _rounds(
        n,
        seed,
        holder.preset.values_per_ciphertext,
        holder.encrypt,
        CiphertextAggregator(holder.params),
        decrypt,
        timer,
    )
    return _result("single-key", n, totals, timer, 1)


def _result(
    config: str, n: int, totals: _Totals, timer: PhaseTimer, parties: int
) -> ThresholdResult:
    per_1m = 1e6 / n
    return ThresholdResult(
        config=config,
        n_values=n,
        upload_bytes_per_value=totals.upload_bytes / len(WEIGHTS) / n,
        share_bytes_per_value=totals.share_bytes / parties / n,
        encrypt_cpu_s_per_1m=timer.cpu_s["encrypt"] / len(WEIGHTS) * per_1m,
        share_cpu_s_per_party_per_1m=timer.cpu_s["share"] / parties * per_1m,
        fusion_cpu_s_per_1m=timer.cpu_s["fuse"] * per_1m,
        max_abs_err=totals.max_err,
        verify_cpu_s_per_party_per_1m=timer.cpu_s.get("verify", 0.0) / parties * per_1m,
        verify_bytes_per_value_per_party=totals.verify_bytes / parties / n,
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
