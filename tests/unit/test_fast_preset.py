"""``single-key-fast``: exact two-limb coefficient RLWE (products, CRT, sums, wire, modes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedhe_client.keymodes import Fast as ClientFast
from fedhe_client.update_codec import StreamingDecoder
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.models import JobConfig
from fedhe_common.crypto import compactwire as cw
from fedhe_common.crypto.compactfast import FastCipher
from fedhe_common.crypto.envelope import HEADER_BYTES
from fedhe_common.errors import (
    ContextMismatchError,
    InvalidArgumentError,
    InvalidCiphertextError,
    ValueRangeError,
)
from fedhe_common.mlbridge.chunking import ChunkPlan
from fedhe_common.mlbridge.compact_accumulate import CompactAccumulator, SeedRegistry
from fedhe_server.keymodes import Fast as ServerFast
from fedhe_server.keymodes import aggregation_mode
from tests.conftest import holder_for

N = 4096
NAME = "single-key-fast"


def _ciphers(count: int) -> list[FastCipher]:
    return [FastCipher(holder_for(NAME), f"job-1/client-{i}") for i in range(count)]


def _accumulator(
    total: int, path: Path | None = None, seeds: SeedRegistry | None = None
) -> CompactAccumulator:
    holder = holder_for(NAME)
    return CompactAccumulator(holder.preset, holder.fingerprint, ChunkPlan(total, N), path, seeds)


def _aggregate(
    ciphers: list[FastCipher], xs: list[np.ndarray], weights: list[int], path: Path | None = None
) -> list[bytes]:
    acc = _accumulator(xs[0].size, path)
    for c, x, w in zip(ciphers, xs, weights, strict=True):
        acc.add_upload(list(c.encrypt_vector(x)), w)
    return [acc.chunk_blob(k) for k in range(acc.plan.count)]


def _grid_bound(x: np.ndarray) -> float:
    """Largest error of a released mean for values below 2^x: half the grid 2^(5+x-40) on
    the mean plus the summed noise (|e| <= 21 units per weight) and encoding rounding."""
    exponent = int(np.frexp(np.abs(x).max())[1])
    return 2.0 ** (exponent - 35) * (0.5 + 22 / 32)


def test_float_products_and_crt_are_exact() -> None:
    ring = cw.CompactRing(holder_for(NAME).preset)
    q1, q2 = ring.primes
    assert len(ring.primes) == 2 and q1 != q2 and q1 * q2 < 2**64
    rng = np.random.default_rng(7)
    a = rng.integers(0, min(ring.primes), (2, 2, N), dtype=np.uint64).astype(np.uint32)
    s = rng.integers(-1, 2, N)
    spec = ring.spectrum(s.astype(np.float64))
    exact = ring.product_exact(a, spec)
    assert np.array_equal(ring.product_rint(a, spec), exact)
    z = ring.fold(a)
    assert np.array_equal(ring.folded_product_rint(z, spec), exact)
    row = a[0, 0].astype(object)
    full = np.convolve(row, s.astype(object))
    assert [int(v) for v in exact[0, 0]] == list(full[:N] - np.append(full[N:], 0))
    # CRT: centered values up to 2^60 back from their residues
    x = [int(v) for v in rng.integers(-(2**60), 2**60, 64)] + [0, 1, -1, 2**52, -(2**52)]
    r1 = np.array([v % q1 for v in x], dtype=np.float64)
    t2 = np.array([v % q2 + q2 * 5 for v in x], dtype=np.float64)  # any representative
    got = ring.crt(r1, t2)
    assert all(abs(int(g) - v) <= abs(v) * 2.0**-52 for g, v in zip(got, x, strict=True))
    assert all(int(g) == v for g, v in zip(got[-5:], x[-5:], strict=True))


def test_weighted_sums_exact_with_differing_ranges_and_zero_chunks() -> None:
    ciphers = _ciphers(3)
    rng = np.random.default_rng(2)
    xs = [rng.uniform(-10, 10, 3 * N + 11), rng.uniform(-1e-3, 1e-3, 3 * N + 11)]
    xs.append(rng.uniform(-16, 16, 3 * N + 11))
    xs[2][N : 2 * N] = 0.0  # an all-zero chunk joins any range
    xs[1][2 * N :] = 0.0
    weights = [5, 7, 11]
    blobs = _aggregate(ciphers, xs, weights)
    sums = [c.decrypt_chunks(blobs, xs[0].size, sum(weights)) for c in ciphers]
    assert all(np.array_equal(sums[0], s) for s in sums[1:])  # every client: same bits
    exact = np.average(np.stack(xs), axis=0, weights=weights)
    assert np.abs(sums[0] / sum(weights) - exact).max() <= _grid_bound(exact)  # ~1e-10
    assert np.abs(sums[0] / sum(weights) - exact).max() <= 1e-9
    # absolute values (no deltas): a second round needs no base
    again = ciphers[0].decrypt_chunks(_aggregate(ciphers, xs, weights), xs[0].size, 23)
    assert np.abs(again / 23 - exact).max() <= 1e-9


def test_each_chunk_decrypts_on_its_own() -> None:
    (c,) = _ciphers(1)
    x = np.random.default_rng(0).uniform(-3, 3, 2 * N + 77)
    blobs = _aggregate([c], [x], [3])
    whole = c.decrypt_chunks(blobs, x.size, 3)
    parts = np.concatenate([c.decrypt_chunk(b, 3) for b in blobs])[: x.size]
    assert np.array_equal(whole, parts)
    assert np.abs(parts[N : 2 * N] / 3 - x[N : 2 * N]).max() <= 1e-10
    assert not np.array_equal(parts / 3, x)  # released on a grid, not an exact decryption


def test_chunk_range_workers_equal_one_serial_sum(tmp_path: Path) -> None:
    """Two adders over chunk ranges of one plan give the serial sum's bytes."""
    ciphers = _ciphers(2)
    xs = [np.random.default_rng(8 + i).uniform(-1, 1, 3 * N) for i in range(2)]
    uploads = [list(c.encrypt_vector(x)) for c, x in zip(ciphers, xs, strict=True)]
    serial = _accumulator(3 * N, tmp_path / "serial.acc")
    first, second = _accumulator(3 * N), _accumulator(3 * N, tmp_path / "w2.acc")
    for blobs, w in zip(uploads, [2, 5], strict=True):
        serial.add_upload(blobs, w)
        for k in range(3):
            (first if k < 2 else second).add(k, blobs[k], w)
    ranges = [first.chunk_blob(0), first.chunk_blob(1), second.chunk_blob(2)]
    assert ranges == [serial.chunk_blob(k) for k in range(3)]


def test_restart_rebuilds_the_same_sums_from_the_record_file(tmp_path: Path) -> None:
    ciphers = _ciphers(3)
    xs = [np.random.default_rng(20 + i).uniform(-2, 2, 2 * N) for i in range(3)]
    uploads = [list(c.encrypt_vector(x)) for c, x in zip(ciphers, xs, strict=True)]
    path = tmp_path / "round1.acc"
    seeds = SeedRegistry()
    acc = _accumulator(2 * N, path, seeds)
    for blobs, w in zip(uploads[:2], [1, 2], strict=True):
        acc.add_upload(blobs, w)
    acc.add(0, uploads[2][0], 3)  # a half-added third upload: the crash
    committed = [acc.chunk_blob(0)]
    # The server restarts: a fresh record file, the committed uploads added again.
    rebuilt = _accumulator(2 * N, path, seeds)
    for blobs, w in zip(uploads[:2], [1, 2], strict=True):
        rebuilt.add_upload(blobs, w)
    assert path.stat().st_size == 2 * rebuilt._record
    assert rebuilt.chunk_blob(0) != committed[0]  # the half-added upload is gone
    rebuilt.add_upload(uploads[2], 3)
    mean = ciphers[0].decrypt_chunks([rebuilt.chunk_blob(k) for k in range(2)], 2 * N, 6) / 6
    assert np.abs(mean - np.average(np.stack(xs), axis=0, weights=[1, 2, 3])).max() <= 1e-9


def test_value_range_error_before_any_wrap() -> None:
    ciphers = _ciphers(2)
    x = np.random.default_rng(3).uniform(-1, 1, N)
    limit = cw.value_limit(holder_for(NAME).preset)
    assert 2**22 < limit < 2**23
    acc = _accumulator(N)
    acc.add_upload(list(ciphers[0].encrypt_vector(x)), limit - 10)
    before = acc.chunk_blob(0)
    with pytest.raises(ValueRangeError, match="would wrap"):
        acc.add_upload(list(ciphers[1].encrypt_vector(x)), 11)
    assert acc.chunk_blob(0) == before  # refused without touching the sum
    small = _accumulator(N)  # a range 2^12 finer folds the first sum in at 2^12 x weight
    small.add_upload(list(ciphers[0].encrypt_vector(x)), limit >> 12)
    with pytest.raises(ValueRangeError):
        small.add_upload(list(ciphers[1].encrypt_vector(x * 2.0**-13)), 1)
    # the largest sum the limit admits still decrypts (no wrap near q/2)
    top = _accumulator(N)
    top.add_upload(list(ciphers[0].encrypt_vector(np.full(N, 15.99))), limit)
    got = ciphers[0].decrypt_chunks([top.chunk_blob(0)], N, limit) / limit
    assert np.abs(got - 15.99).max() <= 1e-9


def test_malformed_chunks_are_refused_and_change_nothing() -> None:
    (c,) = _ciphers(1)
    x = np.random.default_rng(4).uniform(-1, 1, N)
    blob = next(c.encrypt_vector(x))
    acc = _accumulator(N)
    acc.add(0, next(c.encrypt_vector(x)), 1)
    before = acc.chunk_blob(0)
    head = HEADER_BYTES + cw.UPLOAD_HEAD.size
    limb1 = bytearray(blob)
    limb1[head + 4 * N : head + 4 * N + 4] = (2**32 - 1).to_bytes(4, "little")  # >= q2
    exponent = bytearray(blob)
    exponent[HEADER_BYTES + 24] = 0x7F  # 127: outside the exponent range
    based = bytearray(blob)
    based[HEADER_BYTES + 16] = 1  # a base id: the fast preset sends absolute values
    compact = holder_for("single-key-compact")
    for bad, error in [
        (blob[:-4], InvalidCiphertextError),
        (bytes(limb1), InvalidCiphertextError),
        (bytes(exponent), InvalidCiphertextError),
        (bytes(based), InvalidCiphertextError),
        (blob[:5] + bytes([6]) + blob[6:], InvalidCiphertextError),  # compact kind
        (blob[:8] + compact.fingerprint + blob[40:], ContextMismatchError),
    ]:
        with pytest.raises(error):
            acc.add(0, bad, 1)
        assert acc.chunk_blob(0) == before
    with pytest.raises(InvalidArgumentError):
        acc.add(0, blob, 0.5)
    with pytest.raises(InvalidArgumentError):
        c.decrypt_chunks([before], N, 0)
    bad_sum = bytearray(before)
    bad_sum[-4:] = (2**32 - 1).to_bytes(4, "little")
    with pytest.raises(InvalidCiphertextError, match=">= q"):
        c.decrypt_chunks([bytes(bad_sum)], N, 1)
    with pytest.raises(InvalidCiphertextError):
        c.decrypt_chunks([before[:-8]], N, 1)


def test_fresh_seed_per_attempt_and_reuse_refused(tmp_path: Path) -> None:
    (c,) = _ciphers(1)
    ring = c.ring
    x = np.linspace(-1, 1, N)
    first, retry = list(c.encrypt_vector(x)), list(c.encrypt_vector(x))  # crash + retrain
    uid = cw.unpack_upload(first[0], c.fingerprint, N, c.primes).upload_id
    assert uid != cw.unpack_upload(retry[0], c.fingerprint, N, c.primes).upload_id
    a = ring.expand_limbs(uid, 0, 2)
    assert a.shape == (2, 2, N) and not np.array_equal(a[0], a[1])  # limbs: separate streams
    assert all((a[j] < q).all() for j, q in enumerate(ring.primes))
    seeds = SeedRegistry()
    acc = _accumulator(N, tmp_path / "r1.acc", seeds)
    acc.add(0, first[0], 1)
    with pytest.raises(InvalidCiphertextError, match="already contributed"):
        acc.add(0, first[0], 1)
    acc.add(0, retry[0], 1)
    with pytest.raises(InvalidCiphertextError, match="another round"):
        _accumulator(N, tmp_path / "r2.acc", seeds).add(0, first[0], 1)


def test_wire_bytes_per_value() -> None:
    ciphers = _ciphers(3)
    total = 32 * N
    xs = [np.random.default_rng(i).uniform(-1, 1, total) for i in range(3)]
    up = sum(map(len, ciphers[0].encrypt_vector(xs[0]))) / total
    down = sum(map(len, _aggregate(ciphers, xs, [1, 2, 3]))) / total
    assert up == (HEADER_BYTES + cw.UPLOAD_HEAD.size + 8 * N) / N  # 8.017
    assert down == (HEADER_BYTES + cw.SUM_HEAD.size + 16 * N) / N  # 16.012


def test_key_modes_route_and_decrypt_chunkwise() -> None:
    holder = holder_for(NAME)
    encryption = {"mode": "ckks", "preset": NAME}
    job = JobConfig.model_validate(
        {"version": 1, "job": {"name": "j", "rounds": 1}, "encryption": encryption}
    )
    server = aggregation_mode(job, holder.params.to_json(), holder.fingerprint)
    assert isinstance(server, ServerFast) and server.values_per_chunk == N
    client = ClientFast(FastCipher(holder, "job-1/a"))
    assert client.decrypts_chunkwise and client.fingerprint == server.fingerprint
    x = np.random.default_rng(5).uniform(-2, 2, 2 * N + 5)
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
    got = client.decrypt_stream(pb.AggregateHeader(weight_sum=3), chunks, plan)
    each = np.concatenate([client.decrypt_chunks([ch.payload], 3) for ch in chunks])
    batch = client.decrypt_chunks([ch.payload for ch in chunks], 3)
    assert np.array_equal(got, each[: x.size]) and np.array_equal(each, batch)
    assert np.abs(got / 3 - x).max() <= 1e-9
    with pytest.raises(InvalidCiphertextError):
        server.check_ciphertext(holder_for("single-key").encrypt(x[:10]))


def test_streaming_decoder_batches_out_of_order_chunks() -> None:
    """The agent's decoder holds at most ``decrypt_batch`` ciphertexts and decrypts them
    together; chunks arriving in any order land where they belong."""
    client = ClientFast(_ciphers(1)[0])
    x = np.random.default_rng(8).uniform(-3, 3, 40 * N + 17)  # two batches and a remainder
    blobs = _aggregate([client.cipher], [x], [2])
    plan = ChunkPlan(x.size, N)
    decoder = StreamingDecoder(client, None, N)
    decoder.header(
        pb.AggregateHeader(num_values=x.size, weight_sum=2, ciphertext_chunks=plan.count)
    )
    order = np.random.default_rng(9).permutation(plan.count)
    for k in order.tolist():
        decoder.chunk(pb.Chunk(stream=pb.STREAM_KIND_CIPHERTEXT, index=k, payload=blobs[k]))
        assert len(decoder.pending) < client.decrypt_batch
    got = decoder.result()
    assert np.abs(got / 2 - x).max() <= 1e-9


def test_release_grid_follows_the_effective_weight() -> None:
    """Chunks whose clients' ranges differ carry E = sum w_i 2^shift_i > sum w_i, and the
    grid is E * 2^5 units; a sum declaring E below the round's weight sum is refused."""
    a, b = _ciphers(2)
    rng = np.random.default_rng(11)
    xs = [rng.uniform(-1, 1, N), rng.uniform(-16, 16, N)]  # ranges 2^0 and 2^4: shift 4
    blobs = _aggregate([a, b], xs, [2, 3])
    head = cw.SUM_HEAD.unpack_from(blobs[0], HEADER_BYTES)
    assert head[1:] == (2, 2 + 3 * 16)  # contributors, E (client b's weight shifted by 4)
    got = a.decrypt_chunks(blobs, N, 5) / 5
    grid = 50 * 2**5 * 2.0**-40  # on the sum, at the finer client's scale 2^(0 - 40)
    assert np.abs(got - (2 * xs[0] + 3 * xs[1]) / 5).max() <= 2 * grid / 5
    with pytest.raises(InvalidCiphertextError, match="effective weight"):
        a.decrypt_chunks(blobs, N, 51)


def test_values_are_clipped_per_block_and_non_finite_ones_refused() -> None:
    """Clipping to the preset's bound happens block by block (no model-sized copy);
    NaN or infinity anywhere, also past the first check slice, is refused at once."""
    (c,) = _ciphers(1)
    x = np.random.default_rng(12).uniform(-1, 1, 40 * N)
    x[[3, 33 * N + 5]] = [100.0, -100.0]  # beyond clip_bound 16, in two different blocks
    got = c.decrypt_chunks(_aggregate([c], [x], [1]), x.size, 1)
    assert got[3] == pytest.approx(16.0) and got[33 * N + 5] == pytest.approx(-16.0)
    assert np.abs(np.delete(got - x, [3, 33 * N + 5])).max() <= 1e-9
    bad = np.zeros(3 << 20)
    bad[-1] = np.nan
    with pytest.raises(InvalidArgumentError, match="NaN"):
        c.encrypt_vector(bad)
