"""The numpy RLWE engine of the coefficient presets: ring, RNS limbs, seeded ``a``.

``single-key-compact`` runs on one ~32-bit prime, ``single-key-fast`` on two
(q = q1 * q2 ~ 2^64 in RNS form, docs/crypto.md §7-§8). Everything here is
key-less: the server (adds) and clients (encrypt, decrypt) both import it.
"""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedhe_common.crypto.presets import Preset

NOISE_BOUND = 21  # centered binomial, 21 coin pairs: |e| <= 21, sigma = 3.24
_A_DOMAIN = b"fedhe-compact-a-v1\x00"
_LAZY_WEIGHT = 1 << 16  # a_i * w < 2^48: 2^15 such terms plus a reduced rest fit in 64 bits
_LAZY_ROWS = 1 << 15
_SPARE_WORDS = 64  # per chunk window of the a stream: room for rejected words


@dataclass(frozen=True)
class Scheme:
    """What a coefficient preset fixes beyond the ring: limbs, value bits, who sums a."""

    n: int
    primes: tuple[int, ...]
    value_bits: int  # |m| <= 2^value_bits for a chunk at its own range
    release_bits: int  # released sums: rounded to weight_sum * 2^release_bits units
    server_sums_a: bool  # the aggregate carries c1 = sum w a (decrypts chunk by chunk)

    @property
    def q(self) -> int:
        """The whole modulus (product of the limbs)."""
        return math.prod(self.primes)

    @property
    def value_limit(self) -> int:
        """Largest effective weight sum ``sum w_i 2^shift_i`` a chunk holds unwrapped."""
        return (self.q - 1) // 2 // ((1 << self.value_bits) + NOISE_BOUND)


def scheme(preset: Preset) -> Scheme:
    """The engine parameters of a coefficient preset."""
    fast = preset.encryption == "seeded-fast"
    primes = ring_primes(preset)
    if not fast and len(primes) != 1:
        raise ValueError("the compact scheme runs on one prime")
    if fast and len(primes) != 2:
        raise ValueError("the fast scheme runs on two primes (CRT to 64 bits)")
    # fast: 2^5 units per weight (>= 3.3 bits above the noise, 2^(x-36) on the mean);
    # compact: 2^3 (its 15 value bits leave no more room).
    return Scheme(preset.poly_modulus_degree, primes, 40 if fast else 15, 5 if fast else 3, fast)


class Workspace:
    """Scratch arrays reused by name and shape, per thread.

    Fresh multi-megabyte numpy temporaries fault in new pages on every call (glibc
    hands such blocks back to the kernel); reusing them cut the fast preset's
    decryption CPU by about half (measured)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, name: str, shape: tuple[int, ...], dtype: type = np.float64) -> np.ndarray:
        """An uninitialised array of ``shape`` kept for the next call of this thread."""
        bufs: dict[tuple[str, tuple[int, ...], str], np.ndarray]
        bufs = self._local.__dict__.setdefault("bufs", {})
        key = (name, shape, np.dtype(dtype).str)
        buf = bufs.get(key)
        if buf is None:
            buf = bufs[key] = np.empty(shape, dtype)
        return buf


_PRIMES: dict[tuple[int, tuple[int, ...]], tuple[int, ...]] = {}


def ring_primes(preset: Preset) -> tuple[int, ...]:
    """The preset's primes as SEAL's ``CoeffModulus.Create`` picks them (all of them)."""
    key = (preset.poly_modulus_degree, preset.coeff_modulus_bits)
    if key not in _PRIMES:
        import tenseal.sealapi as sa

        mods = sa.CoeffModulus.Create(key[0], list(key[1]))
        _PRIMES[key] = tuple(int(m.value()) for m in mods)
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
    exact (rounding error ~1e-9); whole, it is off by < 1e-3 (measured 1.6e-4), so
    ``rint`` of it is exact too (decryption uses it). Arrays of several limbs
    broadcast: every product works on any leading shape.
    """

    def __init__(self, preset: Preset) -> None:
        self.scheme = scheme(preset)
        self.n = self.scheme.n
        self.primes = self.scheme.primes
        self.q = self.primes[0]  # the compact preset's one prime
        self.q64 = np.uint64(self.q)
        # per-limb moduli shaped to broadcast over (limbs, rows, N)
        self.q_col = np.array(self.primes, dtype=np.float64)[:, None, None]
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
        """a * s (unreduced, float64 holding an exact integer below 2^45) for a (..., N)
        < 2^32 and ``small`` = :meth:`spectrum` of a ternary s."""
        lo = (a & 0xFFFF).astype(np.float64)
        hi = (a >> 16).astype(np.float64)
        both = np.rint(self._from_spectrum(self.spectrum(np.stack([lo, hi])) * small))
        return both[1] * 65536.0 + both[0]

    def product_approx(self, a: np.ndarray, small: np.ndarray) -> np.ndarray:
        """a * s (unreduced float64), each coefficient within 1e-3 of the exact integer."""
        return self._from_spectrum(self.spectrum(a.astype(np.float64)) * small)

    def reduce(
        self, t: np.ndarray, q: float | np.ndarray | None = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Exact integers in float64 (|t| < 2^52) -> t mod q in [0, q), as float64 (into
        ``out`` when given; ``out`` must not be ``t``)."""
        m = self.q if q is None else q
        f = np.divide(t, m, out=out)
        np.floor(f, out=f)
        f *= m
        return np.subtract(t, f, out=f)

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

    def fold(self, a: np.ndarray) -> np.ndarray:
        """Polynomials (..., N) as complex (..., N/2): low half real, high half imaginary."""
        half = self.n // 2
        z = np.empty((*a.shape[:-1], half), dtype=np.complex128)
        z.real, z.imag = a[..., :half], a[..., half:]
        return z

    def product_rint(self, a: np.ndarray, small: np.ndarray) -> np.ndarray:
        """rint(a * s) for a (..., N) < 2^32 (see :meth:`folded_product_rint`; falls
        back to :meth:`product_exact`)."""
        try:
            return self.folded_product_rint(self.fold(a), small)
        except ArithmeticError:
            return self.product_exact(a, small)

    def folded_product_rint(
        self, z: np.ndarray, small: np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        """rint(a * s) for a folded a (:meth:`fold`, coefficients < 2^32), as (..., N)
        float64: one float FFT pair per polynomial (whole a), checked.

        The float product is within 1e-3 of the integer (measured ~2.4e-4 for 32-bit
        a, N = 4096), so rint makes it exact; should a coefficient land more than 1/8
        away from an integer, it raises ArithmeticError (callers then use the exact
        16-bit split product). ``z`` is overwritten."""
        half = self.n // 2
        z *= self._twist
        z = sfft.ifft(z, axis=-1, overwrite_x=True, workers=1)
        z *= small
        z = sfft.fft(z, axis=-1, overwrite_x=True, workers=1)
        z *= self._untwist
        if out is None:
            out = np.empty((*z.shape[:-1], self.n))
        out[..., :half], out[..., half:] = z.real, z.imag
        np.rint(out, out=out)
        z.real -= out[..., :half]  # what rint moved, kept in z (no temporaries)
        z.imag -= out[..., half:]
        moved = z.view(np.float64)
        if max(moved.max(), -moved.min()) > 0.125:  # never seen
            raise ArithmeticError("float product too far from an integer")
        return out

    def crt(
        self, r1: np.ndarray, t2: np.ndarray, work: tuple[np.ndarray, np.ndarray] | None = None
    ) -> np.ndarray:
        """x mod q = q1 q2 from x = r1 mod q1 (in [0, q1)) and x = t2 mod q2 (any exact
        integer below 2^52), all in float64: the centered representative, exact while
        |x| < 2^52 and rounded to 53 bits beyond (Garner; the product d * q1^-1 mod q2
        in two exact 16-bit halves, no 64-bit integer arithmetic). Overwrites ``t2``
        and returns it; ``work`` (two arrays of t2's shape) avoids temporaries."""
        q1, q2 = self.primes
        inv = pow(q1, -1, q2)
        w1, w2 = (np.empty_like(t2), np.empty_like(t2)) if work is None else work
        t2 -= r1
        d = self.reduce(t2, q2, out=w1)
        np.multiply(d, float(inv >> 16), out=t2)
        hi = self.reduce(t2, q2, out=w2)
        hi *= 65536.0
        np.multiply(d, float(inv & 0xFFFF), out=t2)
        hi += t2
        t = self.reduce(hi, q2, out=t2)
        np.greater(t, q2 // 2, out=w1)  # x = r1 + q1 t with t centered: |x| < q/2
        w1 *= q2
        t -= w1
        t *= float(q1)
        t += r1
        return t

    def expand_rows(self, upload_id: bytes, first: int, count: int, limb: int = 0) -> np.ndarray:
        """The public ``a`` (limb ``limb``) of chunks ``first .. first+count-1`` of an
        upload, (count, N) uint32 uniform mod q_limb: chunk k reads window k (N + 64
        words) of one AES-256-CTR keystream under SHA-256(domain || limb tag || upload id)
        and keeps its first N words below q (a window with more than 64 rejections,
        ~never, falls back to a per-chunk key). Limb 0 has no tag (compact's stream)."""
        q = self.primes[limb]
        window = self.n + _SPARE_WORDS
        key = hashlib.sha256(_A_DOMAIN + _limb_tag(limb) + upload_id).digest()
        counter = (first * window * 4 // 16).to_bytes(16, "big")
        stream = Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()
        words = np.frombuffer(stream.update(bytes(4 * window * count)), dtype="<u4")
        words = words.reshape(count, window)
        rows = words[:, : self.n]
        bad = np.flatnonzero((rows >= q).any(axis=1))  # ~13% of windows
        if bad.size:
            rows = rows.copy()
            for r in bad.tolist():
                ok = words[r][words[r] < q]
                if ok.size < self.n:
                    ok = self._fallback(upload_id, first + r, limb)
                rows[r] = ok[: self.n]
        return rows

    def expand_limbs(self, upload_id: bytes, first: int, count: int) -> np.ndarray:
        """Every limb's ``a``: (limbs, count, N) uint32."""
        return np.stack(
            [self.expand_rows(upload_id, first, count, j) for j in range(len(self.primes))]
        )

    def _fallback(self, upload_id: bytes, index: int, limb: int = 0) -> np.ndarray:
        q = self.primes[limb]
        seed = _A_DOMAIN + b"fallback" + _limb_tag(limb) + upload_id + index.to_bytes(8, "little")
        stream = Cipher(algorithms.AES(hashlib.sha256(seed).digest()), modes.CTR(bytes(16)))
        enc = stream.encryptor()
        ok = np.zeros(0, dtype=np.uint32)
        while ok.size < self.n:
            words = np.frombuffer(enc.update(bytes(4 * self.n)), dtype="<u4")
            ok = np.concatenate([ok, words[words < q]])
        return ok[: self.n]

    def weighted_a(self, rows: list[tuple[bytes, list[int]]], first: int) -> np.ndarray:
        """sum_i w_ik * a_ik mod q (limb 0) over chunks ``first ..``; ``rows`` = (upload
        id, the contributor's integer weight per chunk).

        Weights below 2^16 (every sum the server may publish: :attr:`Scheme.value_limit`)
        are multiplied and added without reduction (a w < 2^48), reduced once per 2^15
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


def _limb_tag(limb: int) -> bytes:
    return b"" if limb == 0 else b"limb" + bytes([limb])
