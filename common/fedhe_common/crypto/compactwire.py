"""Wire formats of the coefficient presets (``single-key-compact``, ``single-key-fast``).

Coefficient-encoded RLWE (docs/crypto.md §7, §8; the ring is :mod:`.compactring`).
A chunk of N values travels as c0 only, in coefficient form, as N little-endian
uint32 words per RNS limb; its ``a`` is expanded from a public seed (the upload
id), so the server adds c0s. In the compact preset clients regenerate
``sum w_i a_i`` themselves (c0-only sums with a contributor table); in the fast
preset the server sums the a's too and each aggregate chunk carries c0 and c1.

Both the server (adds, no key) and clients import this module; it never touches
a secret key. Client encryption and decryption live in :mod:`.compact` and
:mod:`.compactfast`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from fedhe_common.crypto import envelope
from fedhe_common.crypto.compactring import (  # noqa: F401  (re-exported: one engine)
    NOISE_BOUND,
    CompactRing,
    Scheme,
    Workspace,
    addmod,
    mulmod,
    ring_primes,
    scheme,
    shoup,
)
from fedhe_common.crypto.envelope import BlobKind
from fedhe_common.crypto.presets import Preset
from fedhe_common.errors import InvalidCiphertextError

VALUE_BITS = 15  # compact: |round(d * 2^(VALUE_BITS - x))| <= 2^VALUE_BITS for |d| < 2^x
FAST_VALUE_BITS = 40  # fast: |m| <= 2^40 (scheme(preset).value_bits)
EXP_MIN, EXP_MAX = -100, 100
EXP_ANY = -128  # an all-zero chunk: no scale of its own, joins any sum with shift 0
RELEASE_BITS = 3  # released sums: rounded to 2^3 * ceil(||w_eff||_2) units of the common scale
MAX_CONTRIBUTORS = 1 << 16

UPLOAD_HEAD = struct.Struct("<16s8sbxxx")  # upload id, base id, exponent
AGG_HEAD = struct.Struct("<8sbBxxI")  # base id, common exponent, has table, contributors
TABLE_ROW = struct.Struct("<16sI")  # upload id, integer weight
SUM_HEAD = struct.Struct("<bxxxII")  # fast sums: common exponent, contributors, effective weight
ZERO_BASE_ID = bytes(8)


def value_limit(preset: Preset) -> int:
    """Largest effective weight sum ``sum w_i 2^shift_i`` a chunk can hold unwrapped."""
    return scheme(preset).value_limit


def compact_prime(preset: Preset) -> int:
    """The preset's first prime (the compact preset's only one)."""
    return ring_primes(preset)[0]


@dataclass(frozen=True)
class UploadChunk:
    """One parsed upload chunk: seed id, base id, exponent and c0 ((limbs, N) uint32)."""

    upload_id: bytes
    base_id: bytes
    exponent: int
    c0: np.ndarray


def _primes(q: int | tuple[int, ...]) -> tuple[int, ...]:
    return (q,) if isinstance(q, int) else q


def _words(body: bytes, offset: int, primes: tuple[int, ...], n: int, what: str) -> np.ndarray:
    """(limbs, N) uint32 words from ``body`` at ``offset``, each limb checked < its prime."""
    words = np.frombuffer(body, dtype="<u4", count=len(primes) * n, offset=offset)
    words = words.reshape(len(primes), n)
    for row, q in zip(words, primes, strict=True):
        if int(row.max()) >= q:
            raise InvalidCiphertextError(f"{what} has a coefficient >= q")
    return words


def pack_upload(
    fp: bytes, upload_id: bytes, base_id: bytes, exponent: int, c0: np.ndarray
) -> bytes:
    """Envelope + upload header + c0 as uint32 words (limb after limb).

    One limb (shape (N,) or (1, N)) is a compact chunk, two limbs a fast one."""
    kind = BlobKind.CIPHERTEXT_COMPACT if c0.size == c0.shape[-1] else BlobKind.CIPHERTEXT_FAST
    body = UPLOAD_HEAD.pack(upload_id, base_id, exponent) + c0.astype("<u4").tobytes()
    return envelope.wrap(kind, fp, body)


def unpack_upload(blob: bytes, fp: bytes, n: int, q: int | tuple[int, ...]) -> UploadChunk:
    """Check and parse untrusted upload bytes (kind, sizes, exponent range, c0 < q per
    limb); ``q`` is the prime, or every limb's prime."""
    primes = _primes(q)
    kind = BlobKind.CIPHERTEXT_COMPACT if len(primes) == 1 else BlobKind.CIPHERTEXT_FAST
    _, body = envelope.unwrap(blob, frozenset({kind}), fp)
    expect = UPLOAD_HEAD.size + 4 * n * len(primes)
    if len(body) != expect:
        raise InvalidCiphertextError(f"upload chunk is {len(body)} bytes, expected {expect}")
    uid, base_id, exponent = UPLOAD_HEAD.unpack_from(body, 0)
    if exponent != EXP_ANY and not EXP_MIN <= exponent <= EXP_MAX:
        raise InvalidCiphertextError(f"chunk exponent {exponent} out of range")
    if len(primes) > 1 and base_id != ZERO_BASE_ID:
        raise InvalidCiphertextError("a single-key-fast chunk carries no base")
    return UploadChunk(uid, base_id, exponent, _words(body, UPLOAD_HEAD.size, primes, n, "chunk"))


@dataclass(frozen=True)
class AggregateChunk:
    """One chunk of a published compact sum."""

    base_id: bytes
    exponent: int
    table: list[tuple[bytes, int]] | None  # (upload id, weight), chunk 0 only
    shifts: np.ndarray  # per contributor, table order
    c0: np.ndarray


def pack_aggregate(
    fp: bytes,
    base_id: bytes,
    exponent: int,
    table: list[tuple[bytes, int]] | None,
    shifts: list[int],
    c0: np.ndarray,
) -> bytes:
    """Envelope + aggregate header (+ contributor table) + shifts + c0 words."""
    parts = [AGG_HEAD.pack(base_id, exponent, 1 if table else 0, len(shifts))]
    if table:
        parts += [TABLE_ROW.pack(uid, w) for uid, w in table]
    parts += [bytes(shifts), c0.astype("<u4").tobytes()]
    return envelope.wrap(BlobKind.CIPHERTEXT_COMPACT_SUM, fp, b"".join(parts))


def unpack_aggregate(blob: bytes, fp: bytes, n: int, q: int) -> AggregateChunk:
    """Check and parse downloaded aggregate bytes."""
    _, body = envelope.unwrap(blob, frozenset({BlobKind.CIPHERTEXT_COMPACT_SUM}), fp)
    if len(body) < AGG_HEAD.size:
        raise InvalidCiphertextError("compact aggregate chunk too short")
    base_id, exponent, has_table, count = AGG_HEAD.unpack_from(body, 0)
    if not 0 < count <= MAX_CONTRIBUTORS or has_table not in (0, 1):
        raise InvalidCiphertextError(f"compact aggregate declares {count} contributors")
    expect = AGG_HEAD.size + has_table * TABLE_ROW.size * count + count + 4 * n
    if len(body) != expect:
        raise InvalidCiphertextError(f"compact aggregate is {len(body)} bytes, expected {expect}")
    pos = AGG_HEAD.size
    table = None
    if has_table:
        table = [TABLE_ROW.unpack_from(body, pos + i * TABLE_ROW.size) for i in range(count)]
        pos += TABLE_ROW.size * count
    shifts = np.frombuffer(body, dtype=np.uint8, count=count, offset=pos)
    c0 = _words(body, pos + count, (q,), n, "compact aggregate")[0].astype(np.uint64)
    return AggregateChunk(base_id, exponent, table, shifts, c0)


def pack_sum(
    fp: bytes, exponent: int, contributors: int, effective: int, c0: np.ndarray, c1: np.ndarray
) -> bytes:
    """Envelope + (exponent, contributors, effective weight ``sum w_i 2^shift_i``) + c0
    words + c1 words (limb after limb)."""
    body = SUM_HEAD.pack(exponent, contributors, effective) + c0.astype("<u4").tobytes()
    return envelope.wrap(BlobKind.CIPHERTEXT_FAST_SUM, fp, body + c1.astype("<u4").tobytes())


def unpack_sums(
    blobs: list[bytes], fp: bytes, n: int, primes: tuple[int, ...], words: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Check and parse downloaded fast-sum chunks (envelope, size, exponent, contributor
    count, effective weight, every word < its limb's prime), all rows at once, into
    ``words`` (rows, 2 * limbs, N) uint32 (c0 limbs, then c1 limbs); return the
    exponents and the effective weights."""
    limbs = len(primes)
    if words.shape != (len(blobs), 2 * limbs, n) or words.dtype != np.uint32:
        raise ValueError("words must be (rows, 2 * limbs, N) uint32")
    exps = np.empty(len(blobs), dtype=np.int64)
    effective = np.empty(len(blobs), dtype=np.int64)
    for i, blob in enumerate(blobs):
        _, body = envelope.unwrap(blob, frozenset({BlobKind.CIPHERTEXT_FAST_SUM}), fp)
        expect = SUM_HEAD.size + 4 * words[i].size
        if len(body) != expect:
            raise InvalidCiphertextError(f"aggregate chunk is {len(body)} bytes, expected {expect}")
        exponent, count, effective[i] = SUM_HEAD.unpack_from(body, 0)
        if exponent != EXP_ANY and not EXP_MIN <= exponent <= EXP_MAX:
            raise InvalidCiphertextError(f"aggregate exponent {exponent} out of range")
        if not 0 < count <= MAX_CONTRIBUTORS:
            raise InvalidCiphertextError(f"aggregate declares {count} contributors")
        if effective[i] < 1:
            raise InvalidCiphertextError("aggregate declares an effective weight of 0")
        exps[i] = exponent
        words[i].reshape(-1)[:] = np.frombuffer(body, dtype="<u4", offset=SUM_HEAD.size)
    for j, q in enumerate(primes):
        if words.size and max(int(words[:, j].max()), int(words[:, limbs + j].max())) >= q:
            raise InvalidCiphertextError("aggregate has a coefficient >= q")
    return exps, effective
