"""Structure-aware mutation test: >= 10,000 malformed ciphertexts, one typed error each.

Every case must either raise InvalidCiphertextError (or a subclass) or load as a
ciphertext that passes the post-load checks (bit flips in coefficients are
valid garbage by design: integrity comes from the transport's sha256).
"""

from __future__ import annotations

import struct
from collections import Counter

import numpy as np
import pytest
import zstandard

from fedhe_common.crypto import envelope, sealbytes
from fedhe_common.crypto.aggregate import CiphertextAggregator
from fedhe_common.crypto.envelope import BlobKind
from fedhe_common.crypto.public import PublicKeyEncryptor
from fedhe_common.errors import InvalidCiphertextError
from tests.conftest import holder_for

E = envelope.HEADER_BYTES  # SEAL bytes start here
META = E + 16  # ciphertext metadata (parms_id ...)


def _set(blob: bytes, offset: int, fmt: str, value: object) -> bytes:
    out = bytearray(blob)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def _flip(blob: bytes, bit: int) -> bytes:
    out = bytearray(blob)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _zstd_bomb(fingerprint: bytes, kind: BlobKind, size: int = 64 << 20) -> bytes:
    body = zstandard.ZstdCompressor(level=19).compress(b"\0" * size)
    seal = sealbytes.SEAL_HEADER.pack(sealbytes.SEAL_MAGIC, 16, 4, 3, 2, 0, 16 + len(body)) + body
    return envelope.wrap(kind, fingerprint, seal)


def _cases(
    rng: np.random.Generator,
    seeded: bytes,
    full: bytes,
    agg: CiphertextAggregator,
    foreign: list[bytes],
    pk_blob: bytes,
    sk_blob: bytes,
    n: int,
):
    fp = agg.fingerprint
    # Fixed cases first: each known-dangerous input once.
    for value in (2.0**31, float("nan"), float("inf"), -(2.0**32), 1e-300, 0.0):
        yield "scale", _set(seeded, META + 57, "<d", value)
    size3 = _set(full, META + 33, "<Q", 3)
    yield "size3", size3
    yield "not-ntt", _set(seeded, META + 32, "<B", 0)
    yield (
        "pk-as-ct",
        envelope.wrap(
            BlobKind.CIPHERTEXT,
            fp,
            envelope.unwrap(pk_blob, frozenset({BlobKind.PUBLIC_KEY}), fp)[1],
        ),
    )
    yield "pk-tag", pk_blob
    yield "sk-tag", sk_blob
    yield "zstd-bomb", _zstd_bomb(fp, BlobKind.CIPHERTEXT_SEEDED)
    raw = seeded[E + 16 :]
    packed = zstandard.ZstdCompressor().compress(raw)
    yield (
        "zstd-real",
        envelope.wrap(
            BlobKind.CIPHERTEXT_SEEDED,
            fp,
            sealbytes.SEAL_HEADER.pack(sealbytes.SEAL_MAGIC, 16, 4, 3, 2, 0, 16 + len(packed))
            + packed,
        ),
    )
    for blob in foreign:
        yield "foreign-context", blob
        yield "foreign-forged-fingerprint", envelope.wrap(BlobKind.CIPHERTEXT, fp, blob[E:])
    yield "empty", b""
    mutators = (
        "truncate",
        "extend",
        "flip-envelope",
        "flip-seal-header",
        "flip-meta",
        "flip-dynarray",
        "flip-seed",
        "flip-coeff",
        "random",
        "kind-swap",
        "count",
    )
    for i in range(n):
        base = seeded if i % 3 else full
        m = mutators[i % len(mutators)]
        if m == "truncate":
            yield m, base[: int(rng.integers(0, len(base)))]
        elif m == "extend":
            yield m, base + rng.bytes(int(rng.integers(1, 64)))
        elif m == "flip-envelope":
            yield m, _flip(base, int(rng.integers(0, 8 * E)))
        elif m == "flip-seal-header":
            yield m, _flip(base, int(rng.integers(8 * E, 8 * META)))
        elif m == "flip-meta":
            yield m, _flip(base, int(rng.integers(8 * META, 8 * (E + 113))))
        elif m == "flip-dynarray":
            yield m, _flip(base, int(rng.integers(8 * (E + 89), 8 * (E + 113))))
        elif m == "flip-seed":
            yield m, _flip(seeded, int(rng.integers(8 * (len(seeded) - 81), 8 * len(seeded))))
        elif m == "flip-coeff":
            yield m, _flip(base, int(rng.integers(8 * (E + 113), 8 * (len(base) - 81))))
        elif m == "random":
            yield m, rng.bytes(int(rng.integers(0, 70000)))
        elif m == "kind-swap":
            yield m, _set(base, 5, "<B", (base[5] + int(rng.integers(1, 256))) % 256)
        else:
            yield m, _set(base, E + 105, "<Q", int(rng.integers(0, 2**40)))


@pytest.mark.timeout(600)
def test_ten_thousand_mutations_raise_one_typed_error() -> None:
    holder = holder_for("single-key")
    agg = CiphertextAggregator(holder.params)
    x = np.random.default_rng(0).uniform(-10, 10, 4096)
    seeded = holder.encrypt(x)
    full = agg.to_blob(agg.add_weighted(None, agg.load_upload(seeded), 2))
    foreign = [
        holder_for(name).encrypt(x[:100])
        for name in ("single-key-real-weights", "threshold-practical", "paper-default")
    ]
    rng = np.random.default_rng(12345)
    outcomes: Counter[str] = Counter()
    total = 0
    for name, blob in _cases(
        rng,
        seeded,
        full,
        agg,
        foreign,
        holder.export_public_key(),
        holder.export_secret_key(),
        10_000,
    ):
        total += 1
        try:
            ct = agg.load_upload(blob)
        except InvalidCiphertextError:
            outcomes["rejected"] += 1
            continue
        # Accepted: it must be a well-formed ciphertext of this context.
        assert ct.size() == 2 and ct.is_ntt_form() and ct.scale == holder.preset.scale, name
        assert name in {"flip-coeff", "flip-seed"}, name
        outcomes[f"accepted:{name}"] += 1
    assert total >= 10_000
    # The dangerous fixed cases and nearly all random mutations are rejected.
    assert outcomes["rejected"] > 0.6 * total


@pytest.mark.parametrize("preset_name_", ["threshold-practical"])
def test_zstd_bomb_is_bounded_for_a_compressed_preset(preset_name_: str) -> None:
    holder = holder_for(preset_name_)
    agg = CiphertextAggregator(holder.params)
    with pytest.raises(InvalidCiphertextError):
        agg.load_upload(_zstd_bomb(agg.fingerprint, BlobKind.CIPHERTEXT, 1 << 30))


def test_zstd_ciphertext_with_trailing_bytes_is_refused() -> None:
    """A genuine zstd upload with bytes after its frame (inside the declared size) is refused."""
    holder = holder_for("threshold-practical")
    agg = CiphertextAggregator(holder.params)
    public = PublicKeyEncryptor(holder.params, holder.export_public_key())
    blob = next(iter(public.encrypt_vector(np.linspace(-1, 1, 100))))
    kind, seal = envelope.unwrap(blob, frozenset(BlobKind), agg.fingerprint)
    assert sealbytes.read_header(seal)[4] == sealbytes.COMPR_ZSTD
    agg.load_upload(blob)  # the genuine blob loads
    padded = seal + b"JUNK"
    magic, hsize, major, minor, compr, reserved, _ = sealbytes.read_header(seal)
    header = sealbytes.SEAL_HEADER.pack(magic, hsize, major, minor, compr, reserved, len(padded))
    forged = envelope.wrap(kind, agg.fingerprint, header + padded[16:])
    with pytest.raises(InvalidCiphertextError, match="trailing"):
        agg.check_upload(forged)
    with pytest.raises(InvalidCiphertextError, match="trailing"):
        agg.load_upload(forged)
