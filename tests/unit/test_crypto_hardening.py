"""Cryptographic hardening (issue 10): each test runs the attack with the project's functions."""

from __future__ import annotations

import resource
from pathlib import Path

import numpy as np
import pytest
import tenseal.sealapi as sa
import zstandard

from fedhe_client.update_codec import add_dp_noise
from fedhe_common.config.load import parse_yaml
from fedhe_common.config.models import DPSection, JobConfig
from fedhe_common.crypto import envelope, packing, sealbytes
from fedhe_common.crypto.aggregate import CiphertextAggregator
from fedhe_common.crypto.context import CKKSContext
from fedhe_common.crypto.envelope import BlobKind
from fedhe_common.crypto.presets import get_preset
from fedhe_common.crypto.public import PublicKeyEncryptor
from fedhe_common.crypto.release import output_grid
from fedhe_common.crypto.ring import addmod as ring_add
from fedhe_common.crypto.ring import submod
from fedhe_common.crypto.sampling import dp_grid
from fedhe_common.crypto.secret import SecretKeyHolder
from fedhe_common.crypto.smudging import smudging_bits, statistical_distance_log2
from fedhe_common.crypto.threshold import (
    ShareRequest,
    fuse,
    parse_share,
    ring_for,
)
from fedhe_common.crypto.validate import AGGREGATE_KINDS, check_ciphertext_bytes
from fedhe_common.errors import (
    ConfigError,
    ConflictError,
    InvalidArgumentError,
    InvalidCiphertextError,
    PermissionDeniedError,
)
from fedhe_common.mlbridge.accumulate import EncryptedAccumulator
from fedhe_common.mlbridge.chunking import ChunkPlan
from fedhe_common.mlbridge.encrypted_vector import decrypt_chunks
from fedhe_keyauth.dkg import DKGSession
from tests.conftest import holder_for
from tests.unit.test_threshold import _request, _round, _setup, _share


def _secret_ntt(holder: SecretKeyHolder) -> np.ndarray:
    """The holder's secret key as NTT residues at the data level (test oracle only)."""
    sk = sealbytes.plaintext_array(sealbytes.save_bytes(holder._secret_key))
    return sk.reshape(-1, holder.ctx.n)[: holder.ctx.k]


def recover_secret(
    holder: SecretKeyHolder, aggregate: bytes, published_mean: np.ndarray, weight_sum: float
) -> np.ndarray:
    """The Li-Micciancio key recovery, using only public data plus the published model.

    Re-encode ``mean * weight_sum`` at the aggregate's scale: if it reproduces the
    decrypted plaintext ``m' = c0 + c1 * s`` exactly, then ``s = (m' - c0) / c1``
    in every NTT slot. Uses the context only for its public encoder (no key).
    """
    ctx, preset = holder.ctx, holder.preset
    scale = preset.scale * preset.weight_scale
    _, seal = check_ciphertext_bytes(ctx, aggregate, AGGREGATE_KINDS, scale)
    c0, c1 = sealbytes.ciphertext_array(seal)
    values = np.asarray(published_mean, dtype=np.float64) * weight_sum
    slots = values.view(np.complex128) if preset.complex_packing else values
    pt = sa.Plaintext()
    ctx.encoder.encode(slots.tolist(), scale, pt)
    m = sealbytes.plaintext_array(sealbytes.save_bytes(pt)).reshape(ctx.k, ctx.n)
    out = np.empty((ctx.k, ctx.n), dtype=np.uint64)
    for j, q in enumerate(int(p) for p in ctx.data_primes):
        out[j] = [
            (int(mj) - int(a)) * pow(int(b), -1, q) % q
            for mj, a, b in zip(m[j], c0[j], c1[j], strict=True)
        ]
    return out


@pytest.mark.parametrize("name", ["single-key", "single-key-8k", "single-key-strict"])
def test_published_model_does_not_reveal_the_single_key(name: str) -> None:
    holder = holder_for(name)
    preset = holder.preset
    aggregator = CiphertextAggregator(holder.params)
    total = preset.values_per_ciphertext  # one full chunk: the attacker sees every slot
    rng = np.random.default_rng(7)
    weights = [1, 2, 3]
    xs = [rng.uniform(-1, 1, total) for _ in weights]
    acc = EncryptedAccumulator(aggregator, ChunkPlan(total, preset.values_per_ciphertext))
    for x, w in zip(xs, weights, strict=True):
        acc.add_upload(list(holder.encrypt_vector(x)), w)
    aggregate = acc.chunk_blob(0)
    # What a client publishes at the end of FedAvg: the decoded weighted mean.
    published = decrypt_chunks(holder, [aggregate], total, sum(weights)) / sum(weights)
    exact = sum(w * x for w, x in zip(weights, xs, strict=True)) / sum(weights)
    assert np.abs(published - exact).max() <= 1e-6
    guess = recover_secret(holder, aggregate, published, sum(weights))
    matches = int((guess == _secret_ntt(holder)).sum())
    assert matches < 8, f"key recovered in {matches} of {guess.size} NTT slots"


def _on_grid(values: np.ndarray, grid: float) -> bool:
    k = values / grid
    return bool(np.all(np.abs(k - np.round(k)) < 1e-6))


def test_every_decryption_output_is_on_the_release_grid(tmp_path: Path) -> None:
    holder = holder_for("single-key")
    preset = holder.preset
    x = np.random.default_rng(3).uniform(-16, 16, preset.values_per_ciphertext)
    got = holder.decrypt(holder.encrypt(x), aggregate=False)
    assert _on_grid(got, output_grid(preset, 1)) and np.abs(got - x).max() <= 1e-6
    aggregator = CiphertextAggregator(holder.params)
    ct = aggregator.add_weighted(None, aggregator.load_upload(holder.encrypt(x)), 600)
    got = holder.decrypt(aggregator.to_blob(ct), weight_sum=600)
    assert _on_grid(got, output_grid(preset, 600)) and np.abs(got / 600 - x).max() <= 1e-6
    # Threshold fusion follows the same rule.
    ring, members, params, pk_blob, ledgers = _setup("threshold-practical", 3, None, tmp_path)
    aggregate, _, _, expected = _round(params, pk_blob)
    ctx = CKKSContext(params)
    shares = [
        _share(p, ledgers[p.alpha], ctx, aggregate, _request(None)) for p in members
    ]
    fused = fuse(ctx, ring, aggregate, shares, weight_sum=6)
    assert _on_grid(fused, output_grid(ctx.preset, 6))
    assert np.abs(fused - expected).max() < 1e-5


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "x"])
def test_bad_weight_sum_is_refused(bad: object) -> None:
    holder = holder_for("single-key")
    blob = holder.encrypt(np.ones(4))
    with pytest.raises(InvalidArgumentError, match="weight_sum"):
        holder.decrypt(blob, weight_sum=bad)  # type: ignore[arg-type]


_THRESHOLD_JOB = (
    "job: {name: a, rounds: 1}\n"
    "participants: {min_clients: %d}\n"
    "keys: {mode: threshold, parties: 4, threshold: %d}\n"
)


@pytest.mark.parametrize(
    ("min_clients", "threshold", "message"),
    [(3, 1, "keys.threshold must be at least 2"), (2, 3, "min_clients must be at least 3")],
)
def test_configs_that_switch_threshold_protection_off_are_refused(
    min_clients: int, threshold: int, message: str
) -> None:
    parse_yaml(_THRESHOLD_JOB % (3, 2), JobConfig)  # the smallest protective setting
    with pytest.raises(ConfigError, match=message):
        parse_yaml(_THRESHOLD_JOB % (min_clients, threshold), JobConfig)


def test_threshold_core_and_key_authority_refuse_t1_and_single_uploads(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="threshold must be between 2"):
        DKGSession.create(tmp_path / "dkg", "threshold-practical", 3, 1)
    assert not (tmp_path / "dkg").exists()
    _, members, params, pk_blob, ledgers = _setup("threshold-practical", 3, None, tmp_path)
    with pytest.raises(InvalidArgumentError, match="threshold must be between 2"):
        members[0].deal(1, [1, 2, 3])
    # A party configured with min_clients 1 still never decrypts a one-upload "aggregate".
    _, uploads, _, _ = _round(params, pk_blob)
    agg = CiphertextAggregator(params)
    single = agg.to_blob(agg.add_weighted(None, agg.load_upload(uploads[0]), 1))
    request = ShareRequest("job", 1, 0, contributors=1, min_clients=1, active=None)
    with pytest.raises(PermissionDeniedError, match="fewer than 3"):
        _share(members[0], ledgers[1], CKKSContext(params), single, request)
    assert ledgers[1].count() == 0


def _zstd_seal(members_source: object, size: int | None = None) -> bytes:
    """A SEAL blob (compr_mode zstd) whose stream inflates from ``members_source`` chunks."""
    cobj = zstandard.ZstdCompressor(level=1).compressobj(size=size if size is not None else -1)
    body = b"".join(cobj.compress(c) for c in members_source) + cobj.flush()  # type: ignore[attr-defined]
    head = sealbytes.SEAL_HEADER.pack(sealbytes.SEAL_MAGIC, 16, 4, 3, 2, 0, 16 + len(body))
    return head + body


def test_parties_inflate_zstd_aggregates_with_a_bound(tmp_path: Path) -> None:
    _, members, params, pk_blob, ledgers = _setup("threshold-practical", 3, None, tmp_path)
    ctx = CKKSContext(params)
    aggregate, _, _, _ = _round(params, pk_blob)
    _, seal = envelope.unwrap(aggregate, AGGREGATE_KINDS, ctx.fingerprint)
    raw = sealbytes.to_uncompressed(seal)
    zero = bytes(1 << 20)
    bombs = {  # 512 MiB of zeros in a few KiB, with and without a declared content size
        "sized": _zstd_seal([zero] * 512, size=512 << 20),
        "unsized": _zstd_seal([zero] * 512),
    }
    # Same member checks as uncompressed blobs: a residue >= q inside a valid zstd stream.
    bad = bytearray(raw)
    bad[sealbytes.CT_DATA_OFFSET : sealbytes.CT_DATA_OFFSET + 8] = b"\xff" * 8
    bombs["unreduced"] = _zstd_seal([bytes(bad[16:])])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for name, bomb in bombs.items():
        blob = envelope.wrap(BlobKind.CIPHERTEXT, ctx.fingerprint, bomb)
        with pytest.raises(InvalidCiphertextError):
            _share(members[0], ledgers[1], ctx, blob, _request(None))
        with pytest.raises(InvalidCiphertextError):
            fuse(ctx, ring_for(ctx.preset), blob, [])
        assert ledgers[1].count() == 0, name
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 64, f"peak memory grew by {grown_mib:.0f} MiB"
    # The genuine zstd aggregate still decrypts.
    assert _share(members[0], ledgers[1], ctx, aggregate, _request(None))


def _centered_max(ring, ntt: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    """max |coefficient| of an NTT polynomial, by CRT over the data primes (test oracle)."""
    coeffs = ring.from_ntt(ntt[None], "data")[0]
    primes = [int(q) for q in ring.q_data]
    modulus = 1
    for q in primes:
        modulus *= q
    best = 0
    for column in coeffs.T.tolist():
        value = 0
        for r, q in zip(column, primes, strict=True):
            m = modulus // q
            value += r * m * pow(m, -1, q)
        value %= modulus
        best = max(best, min(value, modulus - value))
    return float(best)


@pytest.mark.parametrize("weight", [500, 4000])
def test_smudging_drowns_the_noise_of_sample_count_weights(weight: int, tmp_path: Path) -> None:
    """Measure e of a weighted aggregate and E of real shares: SD bound <= 2^-40 (strict)."""
    ring, members, params, pk_blob, ledgers = _setup("threshold-strict", 3, None, tmp_path)
    ctx = CKKSContext(params)
    enc = PublicKeyEncryptor(params, pk_blob)
    agg = CiphertextAggregator(params)
    rng = np.random.default_rng(5)
    xs = [rng.uniform(-10, 10, ctx.preset.values_per_ciphertext) for _ in range(3)]
    acc = None
    for x in xs:
        acc = agg.add_weighted(acc, agg.load_upload(enc.encrypt(x)), weight)
    aggregate = agg.to_blob(acc)
    c0, c1 = sealbytes.ciphertext_array(
        envelope.unwrap(aggregate, AGGREGATE_KINDS, ctx.fingerprint)[1]
    )
    q = ring.primes("data")
    secret = sum(p.secret[: ctx.k] for p in members)  # test oracle: the collective key
    secret = np.mod(secret, q)
    noisy = ring_add(c0, ring.multiply(c1, secret, "data"), q)
    exact = np.zeros_like(noisy)
    for x in xs:
        pt = sealbytes.plaintext_array(
            sealbytes.save_bytes(packing.encode(ctx.encoder, ctx.preset, x))
        )
        term = ring.multiply(pt.reshape(ctx.k, ctx.n), ring.constant(weight, "data"), "data")
        exact = ring_add(exact, term, q)
    noise_max = _centered_max(ring, submod(noisy, exact, q))
    request = ShareRequest("job", 1, 0, 3, 3, None, weight_sum=3 * weight)
    share = _share(members[0], ledgers[1], ctx, aggregate, request)
    _, d = parse_share(ctx, ring, share, aggregate)
    smudge_max = _centered_max(
        ring, submod(d, ring.multiply(c1, members[0].secret[: ctx.k], "data"), q)
    )
    sd_log2 = statistical_distance_log2(ctx.preset, noise_max, int(np.log2(smudge_max)))
    assert sd_log2 <= -40, f"e {noise_max:.3g}, E {smudge_max:.3g}: SD 2^{sd_log2:.1f}"


def test_ledger_refuses_a_re_encoded_ciphertext_under_another_active_set(tmp_path: Path) -> None:
    _, members, params, pk_blob, ledgers = _setup("threshold-practical", 5, 3, tmp_path)
    ctx = CKKSContext(params)
    aggregate, _, _, _ = _round(params, pk_blob)  # zstd bytes
    _, seal = envelope.unwrap(aggregate, AGGREGATE_KINDS, ctx.fingerprint)
    raw = bytearray(sealbytes.to_uncompressed(seal))
    plain = envelope.wrap(BlobKind.CIPHERTEXT, ctx.fingerprint, bytes(raw))
    raw[4] = 2  # header minor version 4.2: still accepted, other bytes
    older = envelope.wrap(BlobKind.CIPHERTEXT, ctx.fingerprint, bytes(raw))
    party = members[0]
    _share(party, ledgers[1], ctx, aggregate, _request((1, 2, 3)))
    for variant, active in ((plain, (1, 4, 5)), (older, (1, 2, 4))):
        assert variant != aggregate
        with pytest.raises(ConflictError):
            _share(party, ledgers[1], ctx, variant, _request(active))
    assert ledgers[1].count() == 1


@pytest.mark.parametrize(("mechanism", "std"), [("laplace", 2**0.5 * 0.3), ("gaussian", 0.3)])
def test_dp_noise_is_discrete_csprng_noise_on_a_grid(
    mechanism: str, std: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_numpy_rng(*_: object) -> None:
        raise AssertionError("DP noise must not come from numpy's generator")

    monkeypatch.setattr(np.random, "default_rng", no_numpy_rng)
    dp = DPSection(mechanism=mechanism, scale=0.3)
    # Mironov's attack reads the input from the low bits of x + float noise: two
    # inputs on one grid point must give outputs that are all multiples of the grid.
    grid = dp_grid(dp.scale)
    x = np.where(np.arange(200_000) % 2 == 0, 0.1, 0.1 + grid / 7)
    noisy = add_dp_noise(x, dp)
    units = noisy / grid
    assert np.array_equal(units, np.round(units))
    noise = noisy - x
    assert abs(noise.mean()) < 0.01 and abs(noise.std() - std) < 0.02 * std


def test_smudging_size_follows_the_weights_within_the_headroom() -> None:
    strict, practical = get_preset("threshold-strict"), get_preset("threshold-practical")
    assert smudging_bits(strict, 1) == strict.smudging_bits  # unit weights: as before
    assert smudging_bits(practical, 1) == practical.smudging_bits
    assert smudging_bits(strict, 1500) == 74 and smudging_bits(practical, 1500) == 41
    assert smudging_bits(practical, practical.max_weight_sum(), 64) <= 76
    for bad in (0, float("nan"), 2.0**60):
        with pytest.raises(InvalidArgumentError):
            smudging_bits(strict, bad, 64)


@pytest.mark.parametrize("active", [(1, 1, 2), (1, 2), (1, 2, 9), (0, 1, 2), (2, 3, 4), (1,)])
def test_party_refuses_a_malformed_active_set(active: tuple[int, ...], tmp_path: Path) -> None:
    _, members, params, pk_blob, ledgers = _setup("threshold-practical", 5, 3, tmp_path)
    aggregate, _, _, _ = _round(params, pk_blob)
    request = ShareRequest("job", 1, 0, 3, 3, active, 6, parties=5, threshold=3)
    with pytest.raises(InvalidArgumentError, match="active set"):
        _share(members[0], ledgers[1], CKKSContext(params), aggregate, request)
    assert ledgers[1].count() == 0
    good = ShareRequest("job", 1, 0, 3, 3, (1, 2, 3), 6, parties=5, threshold=3)
    assert _share(members[0], ledgers[1], CKKSContext(params), aggregate, good)
