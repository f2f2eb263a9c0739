"""``single-key-compact``: round trip, weighted means of deltas, seeds, range, bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedhe_client.keymodes import Compact as ClientCompact
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.crypto import compactwire as cw
from fedhe_common.crypto.aggregate import CiphertextAggregator
from fedhe_common.crypto.compact import CompactCipher
from fedhe_common.crypto.context import PublicParams
from fedhe_common.crypto.envelope import HEADER_BYTES
from fedhe_common.errors import (
    FedHEError,
    InvalidArgumentError,
    InvalidCiphertextError,
    ManifestMismatchError,
    ValueRangeError,
)
from fedhe_common.mlbridge.chunking import ChunkPlan
from fedhe_common.mlbridge.compact_accumulate import CompactAccumulator, SeedRegistry
from fedhe_server.keymodes import Compact as ServerCompact
from tests.conftest import holder_for

N = 4096
NAME = "single-key-compact"


def _ciphers(count: int) -> list[CompactCipher]:
    holder = holder_for(NAME)
    return [CompactCipher(holder, f"job-1/client-{i}") for i in range(count)]


def _accumulator(total: int, path: Path | None = None, seeds: SeedRegistry | None = None):  # type: ignore[no-untyped-def]
    holder = holder_for(NAME)
    return CompactAccumulator(holder.preset, holder.fingerprint, ChunkPlan(total, N), path, seeds)


def _aggregate(ciphers, xs, weights, path=None):  # type: ignore[no-untyped-def]
    acc = _accumulator(xs[0].size, path)
    for c, x, w in zip(ciphers, xs, weights, strict=True):
        acc.add_upload(list(c.encrypt_vector(x)), w)
    return [acc.chunk_blob(k) for k in range(acc.plan.count)]


def _rel_err(mean: np.ndarray, exact: np.ndarray, span: np.ndarray) -> float:
    return float(np.abs(mean - exact).max() / (span.max() - span.min()))


def test_fft_products_match_exact_negacyclic_convolution() -> None:
    ring = cw.CompactRing(holder_for(NAME).preset)
    rng = np.random.default_rng(7)
    a = rng.integers(0, ring.q, (2, N), dtype=np.uint64)
    s = rng.integers(-1, 2, N)
    full = [np.convolve(row.astype(object), s.astype(object)) for row in a]
    exact = np.array([[int(v) % ring.q for v in f[:N] - np.append(f[N:], 0)] for f in full])
    spec = ring.spectrum(s.astype(np.float64))
    assert np.array_equal(ring.reduce(ring.product_exact(a, spec)), exact)
    approx = ring.product_approx(a, spec)
    assert np.abs(approx - np.rint(approx)).max() < 1e-2
    assert np.array_equal(ring.reduce(np.rint(approx)), exact)


def test_round_trip_one_client() -> None:
    (c,) = _ciphers(1)
    x = np.random.default_rng(0).uniform(-3, 3, 2 * N + 77)
    got = c.decrypt_chunks(_aggregate([c], [x], [1]), x.size, 1)
    assert _rel_err(got, x, x) <= 1e-3
    assert not np.array_equal(got, x)  # coarse release grid, not an exact decryption


@pytest.mark.parametrize("on_disk", [False, True])
def test_weighted_mean_of_deltas_over_rounds(tmp_path: Path, on_disk: bool) -> None:
    ciphers = _ciphers(3)
    weights = [5, 7, 11]
    rng = np.random.default_rng(1)
    model = rng.normal(0, 0.5, 3 * N - 100)
    for rnd in range(3):  # round 1 against zeros, then deltas against the last mean
        deltas = [rng.normal(0, 0.01 * (i + 1), model.size) for i in range(3)]
        xs = [model + d for d in deltas]
        path = tmp_path / f"r{rnd}.acc" if on_disk else None
        blobs = _aggregate(ciphers, xs, weights, path)
        sums = [c.decrypt_chunks(blobs, model.size, sum(weights)) for c in ciphers]
        assert all(np.array_equal(sums[0], s) for s in sums[1:])  # every client: same bits
        mean = sums[0] / sum(weights)
        exact = np.average(np.stack(xs), axis=0, weights=weights)
        update = exact - model
        assert _rel_err(mean, exact, update if rnd else exact) <= 1e-3
        model = mean
    assert ciphers[0].base_for(model.size)[0] != cw.ZERO_BASE_ID


def test_clients_with_different_ranges_and_zero_chunks() -> None:
    ciphers = _ciphers(3)
    rng = np.random.default_rng(2)
    xs = [rng.uniform(-1, 1, 3 * N), rng.uniform(-0.01, 0.01, 3 * N), rng.uniform(-4, 4, 3 * N)]
    xs[2][N : 2 * N] = 0.0  # an all-zero chunk joins any scale
    xs[1][2 * N :] = 0.0
    blobs = _aggregate(ciphers, xs, [1, 1, 1])
    mean = ciphers[0].decrypt_chunks(blobs, 3 * N, 3) / 3
    exact = np.mean(np.stack(xs), axis=0)
    for k in range(3):
        part = slice(k * N, (k + 1) * N)
        assert _rel_err(mean[part], exact[part], exact[part]) <= 1e-3


def test_fresh_seed_per_attempt_and_server_refuses_a_reused_one(tmp_path: Path) -> None:
    (c,) = _ciphers(1)
    x = np.linspace(-1, 1, N)
    first, retry = list(c.encrypt_vector(x)), list(c.encrypt_vector(x))  # crash + retrain
    uid = cw.unpack_upload(first[0], c.fingerprint, N, c.q).upload_id
    uid2 = cw.unpack_upload(retry[0], c.fingerprint, N, c.q).upload_id
    assert uid != uid2 and first[0] != retry[0]
    seeds = SeedRegistry()
    acc = _accumulator(N, tmp_path / "r1.acc", seeds)
    acc.add(0, first[0], 1)
    with pytest.raises(InvalidCiphertextError, match="already contributed"):
        acc.add(0, first[0], 1)
    acc.add(0, retry[0], 1)  # the retried upload's new nonce is accepted
    rebuilt = _accumulator(N, tmp_path / "r1.acc", seeds)  # same round after a restart
    rebuilt.add(0, first[0], 1)
    with pytest.raises(InvalidCiphertextError, match="another round"):
        _accumulator(N, tmp_path / "r2.acc", seeds).add(0, first[0], 1)


def test_value_range_error_before_any_wrap() -> None:
    ciphers = _ciphers(2)
    x = np.random.default_rng(3).uniform(-1, 1, N)
    limit = cw.value_limit(holder_for(NAME).preset)
    acc = _accumulator(N)
    acc.add_upload(list(ciphers[0].encrypt_vector(x)), limit - 10)
    before = acc.chunk_blob(0)
    with pytest.raises(ValueRangeError, match="would wrap"):
        acc.add_upload(list(ciphers[1].encrypt_vector(x)), 11)
    assert acc.chunk_blob(0) == before  # refused without touching the sum
    # Different ranges cost headroom: 2^10 times finer deltas fold in at 2^10 x weight.
    small = _accumulator(N)
    small.add_upload(list(ciphers[0].encrypt_vector(x)), limit >> 10)
    with pytest.raises(ValueRangeError):
        small.add_upload(list(ciphers[1].encrypt_vector(x * 2.0**-11)), 1)


def test_wire_bytes_per_value() -> None:
    ciphers = _ciphers(3)
    total = 64 * N
    xs = [np.random.default_rng(i).uniform(-1, 1, total) for i in range(3)]
    up = sum(map(len, ciphers[0].encrypt_vector(xs[0]))) / total
    down = sum(map(len, _aggregate(ciphers, xs, [1, 2, 3]))) / total
    assert up <= 4.1 and down <= 4.2
    assert up == (HEADER_BYTES + cw.UPLOAD_HEAD.size + 4 * N) / N


def test_bad_bytes_are_refused() -> None:
    (c,) = _ciphers(1)
    blob = next(c.encrypt_vector(np.ones(N)))
    acc = _accumulator(N)
    with pytest.raises(InvalidCiphertextError):
        acc.add(0, blob[:-4], 1)
    words = bytearray(blob)
    words[-4:] = b"\xff\xff\xff\xff"  # a coefficient >= q
    with pytest.raises(InvalidCiphertextError, match=">= q"):
        acc.add(0, bytes(words), 1)
    with pytest.raises(InvalidArgumentError):
        acc.add(0, blob, 0.5)
    acc.add(0, blob, 1)
    other = _ciphers(1)[0]
    other.remember(np.ones(N))
    with pytest.raises(ManifestMismatchError, match="another global model"):
        acc.add(0, next(other.encrypt_vector(np.ones(N))), 1)
    with pytest.raises(FedHEError, match="does not hold"):
        _ciphers(1)[0].decrypt_chunks(_aggregate([other], [np.ones(N)], [1]), N, 1)


def test_key_modes_carry_the_stream() -> None:
    holder = holder_for(NAME)
    server = ServerCompact(CiphertextAggregator(PublicParams.from_json(holder.params.to_json())))
    client = ClientCompact(CompactCipher(holder, "job-1/a"))
    assert server.values_per_chunk == N and client.fingerprint == server.fingerprint
    x = np.random.default_rng(4).uniform(-2, 2, 2 * N + 5)
    plan = ChunkPlan(x.size, N)
    acc = server.accumulator(plan)
    assert acc is not None
    blobs = list(client.encrypt_vector(x))
    for blob in blobs:
        server.check_ciphertext(blob)
    acc.add_upload(blobs, 3)
    chunks = [
        pb.Chunk(stream=pb.STREAM_KIND_CIPHERTEXT, index=k, payload=acc.chunk_blob(k))
        for k in range(plan.count)
    ]
    got = client.decrypt_stream(pb.AggregateHeader(weight_sum=3), chunks, plan) / 3
    assert _rel_err(got, x, x) <= 1e-3
    with pytest.raises(InvalidCiphertextError):
        server.check_ciphertext(holder_for("single-key").encrypt(x[:10]))


def test_sums_made_by_chunk_range_workers_decrypt() -> None:
    """Workers summing chunk ranges each put the same table at their range's start."""
    ciphers = _ciphers(2)
    x = [np.random.default_rng(8 + i).uniform(-1, 1, 3 * N) for i in range(2)]
    uploads = [list(c.encrypt_vector(v)) for c, v in zip(ciphers, x, strict=True)]
    first, second = _accumulator(2 * N), _accumulator(N)
    for blobs, w in zip(uploads, [2, 5], strict=True):
        first.add_upload(blobs[:2], w)
        second.add_upload(blobs[2:], w)
    out = [first.chunk_blob(0), first.chunk_blob(1), second.chunk_blob(0)]
    mean = ciphers[0].decrypt_chunks(out, 3 * N, 7, keep_base=False) / 7
    exact = np.average(np.stack(x), axis=0, weights=[2, 5])
    assert _rel_err(mean, exact, exact) <= 1e-3
    lone = _accumulator(N)
    lone.add_upload(uploads[0][2:], 2)
    with pytest.raises(FedHEError, match="contributor"):
        ciphers[0].decrypt_chunks([*out[:2], lone.chunk_blob(0)], 3 * N, 7)


def test_public_a_is_one_seekable_stream_per_upload() -> None:
    ring = cw.CompactRing(holder_for(NAME).preset)
    whole = ring.expand_rows(b"u" * 16, 0, 40)
    assert np.array_equal(ring.expand_rows(b"u" * 16, 13, 27), whole[13:])
    assert (whole < ring.q).all() and whole.dtype == np.uint32
    assert not np.array_equal(ring.expand_rows(b"v" * 16, 0, 1)[0], whole[0])
    spare = ring._fallback(b"u" * 16, 3)  # a window with > 64 rejected words (~never)
    assert spare.shape == (N,) and (spare < ring.q).all()


def test_a_restarted_client_decrypts_with_the_base_it_kept_on_disk(tmp_path: Path) -> None:
    holder = holder_for(NAME)
    first = CompactCipher(holder, "job-1/a", tmp_path / "store")
    other = CompactCipher(holder, "job-1/b", tmp_path / "other")
    x = np.random.default_rng(9).uniform(-1, 1, N)
    round1 = _aggregate([first, other], [x, x], [1, 1])
    mean1 = first.decrypt_chunks(round1, N, 2) / 2
    other.decrypt_chunks(round1, N, 2)
    round2 = _aggregate([first, other], [x + 0.01, x - 0.01], [1, 1])  # deltas vs mean1
    again = CompactCipher(holder, "job-1/a", tmp_path / "store")  # the process restarted
    mean2 = again.decrypt_chunks(round2, N, 2) / 2
    assert np.abs(mean2 - x).max() <= 1e-3 * np.abs(mean1).max()
    with pytest.raises(FedHEError, match="does not hold"):  # nothing kept: a clear error
        CompactCipher(holder, "job-1/a", tmp_path / "empty").decrypt_chunks(round2, N, 2)
    assert len(list((tmp_path / "store").glob("base-*.npy"))) <= 3
