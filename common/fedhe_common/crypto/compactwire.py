"""The ``single-key-compact`` scheme's key-less half: ring, seeds and wire formats.

Coefficient-encoded RLWE over one ~32-bit prime (docs/crypto.md §7). A chunk of
N values travels as c0 only, in coefficient form, as N little-endian uint32
words; its ``a`` is expanded from a public seed (AES-256-CTR keyed by a hash of
the upload id and the chunk index), so the server adds c0s and clients
regenerate ``sum w_i a_i`` themselves.

Both the server (adds, no key) and clients import this module; it never touches
a secret key. Client encryption and decryption live in :mod:`.compact`.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedhe_common.crypto import envelope
from fedhe_common.crypto.envelope import BlobKind
from fedhe_common.crypto.presets import Preset
from fedhe_common.errors import InvalidCiphertextError

VALUE_BITS = 15  # |round(d * 2^(VALUE_BITS - x))| <= 2^VALUE_BITS for |d| < 2^x
NOISE_BOUND = 21  # centered binomial, 21 coin pairs: |e| <= 21, sigma = 3.24
EXP_MIN, EXP_MAX = -100, 100
EXP_ANY = -128  # an all-zero chunk: no scale of its own, joins any sum with shift 0
RELEASE_BITS = 3  # released sums: rounded to weight_sum * 2^3 units of the common scale
MAX_CONTRIBUTORS = 1 << 16
_A_DOMAIN = b"fedhe-compact-a-v1\x00"
_LAZY_WEIGHT = 1 << 16  # a_i * w < 2^48: 2^15 such terms plus a reduced rest fit in 64 bits
_LAZY_ROWS = 1 << 15
_SPARE_WORDS = 64  # per chunk window of the a stream: room for rejected words

UPLOAD_HEAD = struct.Struct("<16s8sbxxx")  # upload id, base id, exponent
AGG_HEAD = struct.Struct("<8sbBxxI")  # base id, common exponent, has table, contributors
TABLE_ROW = struct.Struct("<16sI")  # upload id, integer weight
ZERO_BASE_ID = bytes(8)


def value_limit(preset: Preset) -> int:
    """Largest effective weight sum ``sum w_i 2^shift_i`` a chunk can hold unwrapped."""
    q = compact_prime(preset)
    return (q - 1) // 2 // ((1 << VALUE_BITS) + NOISE_BOUND)


def compact_prime(preset: Preset) -> int:
    """The preset's one prime (what SEAL's CoeffModulus.Create picks for its bit size)."""
    return _prime_cache(preset.poly_modulus_degree, preset.coeff_modulus_bits)


_PRIMES: dict[tuple[int, tuple[int, ...]], int] = {}


def _prime_cache(n: int, bits: tuple[int, ...]) -> int:
    key = (n, bits)
    if key not in _PRIMES:
        import tenseal.sealapi as sa

        _PRIMES[key] = int(sa.CoeffModulus.Create(n, list(bits))[0].value())
    return _PRIMES[key]


def shoup(b: np.ndarray | int, q: int) -> np.ndarray:
    """Shoup companion floor(b * 2^32 / q) of a multiplier b < q < 2^32."""
    return (np.asarray(b, dtype=np.uint64) << np.uint64(32)) // np.uint64(q)


def mulmod(a: np.ndarray, b: np.ndarray | int, b_shoup: np.ndarray, q: int) -> np.ndarray:
    """a * b mod q (a, b < q < 2^32) with Shoup's trick: no 64-bit division."""
    q64 = np.uint64(q)
    hi = (a * b_shoup) >> np.uint64(32)
    r = a * np.asarray(b, dtype=np.uint64) - hi * q64  # exact mod 2^64; true value in [0, 2q)
    return np.where(r >= q64, r - q64, r)


def addmod(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    """(a + b) mod q for a, b < q."""
    q64 = np.uint64(q)
    s = a + b
    return np.where(s >= q64, s - q64, s)


class CompactRing:
    """Products in Z_q[X]/(X^N+1) by FFT, Shoup products and seed expansion (numpy only).

    A negacyclic product of an integer polynomial (coefficients < 2^32) by a small
    one (the ternary secret) runs through float64 FFTs of length N/2 (the "folded"
    transform: one complex FFT evaluates a real polynomial at half the 2N-th roots of
    unity, the other half are conjugates). Split into 16-bit halves the product is
    exact (rounding error ~1e-9); whole, it is off by < 1e-3 (measured 1.6e-4), which
    only decryption uses (its output is rounded to 16 units).
    """

    def __init__(self, preset: Preset) -> None:
        self.n = preset.poly_modulus_degree
        self.q = compact_prime(preset)
        self.q64 = np.uint64(self.q)
        half = self.n // 2
        self._twist = np.exp(1j * np.pi * np.arange(half) / self.n)
        self._untwist = np.conj(self._twist)

    def spectrum(self, poly: np.ndarray) -> np.ndarray:
        """Evaluations of real polynomials (..., N) at N/2 roots of X^N + 1."""
        half = self.n // 2
        folded = (poly[..., :half] + 1j * poly[..., half:]) * self._twist
        return np.fft.ifft(folded, axis=-1) * half

    def _from_spectrum(self, spec: np.ndarray) -> np.ndarray:
        folded = np.fft.fft(spec, axis=-1) * (self._untwist / (self.n // 2))
        return np.concatenate([folded.real, folded.imag], axis=-1)

    def product_exact(self, a: np.ndarray, small: np.ndarray) -> np.ndarray:
        """a * s (unreduced, float64 holding an exact integer below 2^45) for a (m, N)
        < 2^32 and ``small`` = :meth:`spectrum` of a ternary s."""
        lo = (a & 0xFFFF).astype(np.float64)
        hi = (a >> 16).astype(np.float64)
        both = np.rint(self._from_spectrum(self.spectrum(np.stack([lo, hi])) * small))
        return both[1] * 65536.0 + both[0]

    def product_approx(self, a: np.ndarray, small: np.ndarray) -> np.ndarray:
        """a * s (unreduced float64), each coefficient within 1e-3 of the exact integer."""
        return self._from_spectrum(self.spectrum(a.astype(np.float64)) * small)

    def reduce(self, t: np.ndarray) -> np.ndarray:
        """Exact integers in float64 (|t| < 2^52) -> t mod q in [0, q), as float64."""
        return t - self.q * np.floor(t / self.q)

    def centered(self, t: np.ndarray) -> np.ndarray:
        """Near-integers in float64 -> representatives in [-q/2, q/2)."""
        return t - self.q * np.floor(t / self.q + 0.5)

    def shoup(self, b: np.ndarray | int) -> np.ndarray:
        """Shoup companion of a multiplier (see :func:`shoup`)."""
        return shoup(b, self.q)

    def mul(self, a: np.ndarray, b: np.ndarray | int, b_shoup: np.ndarray) -> np.ndarray:
        """a * b mod q (see :func:`mulmod`)."""
        return mulmod(a, b, b_shoup, self.q)

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(a + b) mod q."""
        return addmod(a, b, self.q)

    def expand_rows(self, upload_id: bytes, first: int, count: int) -> np.ndarray:
        """The public ``a`` of chunks ``first .. first+count-1`` of an upload, (count, N)
        uint32 uniform mod q: chunk k reads window k (N + 64 words) of one AES-256-CTR
        keystream under SHA-256(domain || upload id) and keeps its first N words below q
        (a window with more than 64 rejections, ~never, falls back to a per-chunk key)."""
        window = self.n + _SPARE_WORDS
        key = hashlib.sha256(_A_DOMAIN + upload_id).digest()
        counter = (first * window * 4 // 16).to_bytes(16, "big")
        stream = Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()
        words = np.frombuffer(stream.update(bytes(4 * window * count)), dtype="<u4")
        words = words.reshape(count, window)
        rows = words[:, : self.n]
        bad = np.flatnonzero((rows >= self.q).any(axis=1))  # ~13% of windows
        if bad.size:
            rows = rows.copy()
            for r in bad.tolist():
                ok = words[r][words[r] < self.q]
                if ok.size < self.n:
                    ok = self._fallback(upload_id, first + r)
                rows[r] = ok[: self.n]
        return rows

    def _fallback(self, upload_id: bytes, index: int) -> np.ndarray:
        key = hashlib.sha256(_A_DOMAIN + b"fallback" + upload_id + index.to_bytes(8, "little"))
        stream = Cipher(algorithms.AES(key.digest()), modes.CTR(bytes(16))).encryptor()
        ok = np.zeros(0, dtype=np.uint32)
        while ok.size < self.n:
            words = np.frombuffer(stream.update(bytes(4 * self.n)), dtype="<u4")
            ok = np.concatenate([ok, words[words < self.q]])
        return ok[: self.n]

    def weighted_a(self, rows: list[tuple[bytes, list[int]]], first: int) -> np.ndarray:
        """sum_i w_ik * a_ik mod q over chunks ``first ..``; ``rows`` = (upload id, the
        contributor's integer weight per chunk).

        Weights below 2^16 (every sum the server may publish: :func:`value_limit`) are
        multiplied and added without reduction (a w < 2^48), reduced once per 2^15
        contributors; larger ones take the modular path.
        """
        count = len(rows[0][1]) if rows else 0
        acc = np.zeros((count, self.n), dtype=np.uint64)
        pending = 0
        for uid, weights in rows:
            a = self.expand_rows(uid, first, count)
            if all(0 <= w < _LAZY_WEIGHT for w in weights):
                acc += a * np.array(weights, dtype=np.uint64)[:, None]
                pending += 1
            else:
                wq = np.array([w % self.q for w in weights], dtype=np.uint64)[:, None]
                acc = acc % self.q64 + self.mul(a.astype(np.uint64), wq, self.shoup(wq))
                pending = 1
            if pending >= _LAZY_ROWS:
                acc %= self.q64
                pending = 0
        return acc % self.q64


@dataclass(frozen=True)
class UploadChunk:
    """One parsed upload chunk: seed id, base id, exponent and c0 (coefficients)."""

    upload_id: bytes
    base_id: bytes
    exponent: int
    c0: np.ndarray


def pack_upload(
    fp: bytes, upload_id: bytes, base_id: bytes, exponent: int, c0: np.ndarray
) -> bytes:
    """Envelope + upload header + c0 as uint32 words."""
    body = UPLOAD_HEAD.pack(upload_id, base_id, exponent) + c0.astype("<u4").tobytes()
    return envelope.wrap(BlobKind.CIPHERTEXT_COMPACT, fp, body)


def unpack_upload(blob: bytes, fp: bytes, n: int, q: int) -> UploadChunk:
    """Check and parse untrusted upload bytes (sizes, exponent range, c0 < q)."""
    _, body = envelope.unwrap(blob, frozenset({BlobKind.CIPHERTEXT_COMPACT}), fp)
    if len(body) != UPLOAD_HEAD.size + 4 * n:
        raise InvalidCiphertextError(
            f"compact upload chunk is {len(body)} bytes, expected {UPLOAD_HEAD.size + 4 * n}"
        )
    uid, base_id, exponent = UPLOAD_HEAD.unpack_from(body, 0)
    if exponent != EXP_ANY and not EXP_MIN <= exponent <= EXP_MAX:
        raise InvalidCiphertextError(f"compact chunk exponent {exponent} out of range")
    c0 = np.frombuffer(body, dtype="<u4", offset=UPLOAD_HEAD.size).astype(np.uint64)
    if (c0 >= q).any():
        raise InvalidCiphertextError("compact chunk has a coefficient >= q")
    return UploadChunk(uid, base_id, exponent, c0)


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
    c0 = np.frombuffer(body, dtype="<u4", offset=pos + count).astype(np.uint64)
    if (c0 >= q).any():
        raise InvalidCiphertextError("compact aggregate has a coefficient >= q")
    return AggregateChunk(base_id, exponent, table, shifts, c0)
