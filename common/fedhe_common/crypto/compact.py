"""``single-key-compact`` on a client: encrypt model deltas, decrypt c0-only sums.

A chunk's delta ``d`` (values minus the common base, the last global model) is
encoded at the power-of-two scale ``2^(VALUE_BITS - x)`` with ``|d| < 2^x``, so
``|m| <= 2^15``; then ``c0 = m + e - a*s`` (coefficient form) with ``a`` expanded
from the upload's public seed. Decryption is ``c0_sum + (sum w_i a_i) * s``: one
FFT product per chunk plus one seed expansion per contributor. Every upload
attempt draws a fresh 16-byte nonce, so no ``a`` is ever used for two plaintexts,
also after a crash and retrain (docs/crypto.md, "compact preset").
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedhe_common.crypto import compactwire as cw
from fedhe_common.crypto.ring import RingArithmetic
from fedhe_common.crypto.secret import SecretKeyHolder
from fedhe_common.errors import FedHEError, InvalidArgumentError, ValueRangeError

_ID_DOMAIN = b"fedhe-compact-upload-v1\x00"
_BLOCK_CHUNKS = 32
_KEEP_BASES = 3
_CHECK_SLICE = 1 << 20  # values per finiteness check


def cbd_noise(shape: tuple[int, ...]) -> np.ndarray:
    """Centered binomial noise, 21 coin pairs: |e| <= 21, sigma 3.24. The coins are an
    AES-256-CTR keystream under a fresh 32-byte key from the OS CSPRNG (one per call)."""
    stream = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(bytes(16))).encryptor()
    raw = stream.update(bytes(8 * int(np.prod(shape))))
    words = np.frombuffer(raw, dtype=np.uint64).reshape(shape)
    mask = np.uint64((1 << cw.NOISE_BOUND) - 1)
    pos = np.bitwise_count(words & mask).astype(np.int64)
    neg = np.bitwise_count((words >> np.uint64(cw.NOISE_BOUND)) & mask).astype(np.int64)
    return pos - neg


def chunk_exponents(deltas: np.ndarray) -> np.ndarray:
    """Per row, the x with max|d| < 2^x (EXP_ANY for an all-zero row)."""
    peak = np.abs(deltas).max(axis=1)
    _, exp = np.frexp(peak)  # peak = f * 2^exp with f in [0.5, 1): peak < 2^exp
    if (exp > cw.EXP_MAX).any():
        raise ValueRangeError(f"a delta of magnitude >= 2^{cw.EXP_MAX} cannot be encoded")
    exp = np.maximum(exp, cw.EXP_MIN)
    return np.where(peak > 0, exp, cw.EXP_ANY).astype(np.int64)


def ternary_secret(holder: SecretKeyHolder, q: int) -> np.ndarray:
    """The SEAL secret key's coefficients (float64, in {-1, 0, 1}); refuses any other key.

    SEAL keeps s in NTT form: one inverse NTT (by SEAL) of its first limb, prime ``q``,
    gives them."""
    s_ntt = holder.secret_residues()[0]
    s_coeff = RingArithmetic(holder.preset).from_ntt(s_ntt[None, None, :], "data")[0, 0]
    centered = np.where(s_coeff > q // 2, s_coeff.astype(np.int64) - q, s_coeff)
    if np.abs(centered).max() > 1:
        raise FedHEError(f"preset {holder.preset.name!r} needs SEAL's ternary secret key")
    return centered.astype(np.float64)


def fresh_upload_id(fingerprint: bytes, identity: bytes, attempt: int) -> bytes:
    """A fresh seed id: job, client, attempt counter and 16 random bytes."""
    h = hashlib.sha256(_ID_DOMAIN + fingerprint + identity)
    h.update(attempt.to_bytes(8, "little") + os.urandom(16))
    return h.digest()[:16]


def checked(values: np.ndarray) -> np.ndarray:
    """``values`` as a 1-D float64 vector, refused if any value is NaN or infinite (checked
    a slice at a time: no model-sized temporaries)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise InvalidArgumentError(f"expected a 1-D vector, got shape {arr.shape}")
    for start in range(0, arr.size, _CHECK_SLICE):
        if not np.isfinite(arr[start : start + _CHECK_SLICE]).all():
            raise InvalidArgumentError("values contain NaN or infinity")
    return arr


def row_blocks(
    arr: np.ndarray, n: int, bound: float = np.inf
) -> Iterator[tuple[int, np.ndarray]]:
    """``arr`` clipped to +-bound as (first chunk index, rows (<= 32, n), zero-padded)
    blocks; one zero row for an empty vector."""
    block = n * _BLOCK_CHUNKS
    for start in range(0, max(arr.size, 1), block):
        part = arr[start : start + block]
        rows = np.zeros((-(-part.size // n) or 1, n))
        np.clip(part, -bound, bound, out=rows.reshape(-1)[: part.size])
        yield start // n, rows


class CompactCipher:
    """Encrypts deltas and decrypts sums for one client of one job."""

    def __init__(self, holder: SecretKeyHolder, identity: str, store: Path | None = None) -> None:
        if holder.preset.encryption != "seeded-compact":
            raise InvalidArgumentError(f"preset {holder.preset.name!r} is not a compact preset")
        self.preset = holder.preset
        self.fingerprint = holder.fingerprint
        self.ring = cw.CompactRing(self.preset)
        self.n, self.q = self.ring.n, self.ring.q
        self._s = self.ring.spectrum(ternary_secret(holder, self.q))
        self._identity = identity.encode()
        self._attempts = 0
        self._bases: dict[bytes, np.ndarray] = {}
        self._latest: bytes | None = None
        # The last bases on disk too, so a restarted client can still decrypt the sum
        # that was made against the mean it had before the restart.
        self._store = store

    # -- bases ---------------------------------------------------------------------------
    def base_for(self, size: int) -> tuple[bytes, np.ndarray]:
        """The common base for a vector of ``size`` values: the last sum's mean, or zeros."""
        if self._latest is not None and self._bases[self._latest].size == size:
            return self._latest, self._bases[self._latest]
        return cw.ZERO_BASE_ID, np.zeros(size)

    def remember(self, mean: np.ndarray) -> bytes:
        """Take a decrypted global mean as the base of the next upload; return its id."""
        base = np.ascontiguousarray(mean, dtype=np.float64)
        base_id = hashlib.sha256(base.tobytes()).digest()[:8]
        self._bases = {k: v for k, v in self._bases.items() if k == self._latest}
        self._bases[base_id] = base
        self._latest = base_id
        if self._store is not None:
            self._save(base_id, base)
        return base_id

    def _save(self, base_id: bytes, base: np.ndarray) -> None:
        assert self._store is not None
        self._store.mkdir(parents=True, exist_ok=True)
        tmp = self._store / f".base-{base_id.hex()}.tmp"
        with tmp.open("wb") as fh:
            np.save(fh, base, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self._store / f"base-{base_id.hex()}.npy")
        files = sorted(self._store.glob("base-*.npy"), key=lambda p: p.stat().st_mtime_ns)
        for old in files[:-_KEEP_BASES]:
            old.unlink(missing_ok=True)

    def _load(self, base_id: bytes) -> np.ndarray | None:
        if self._store is None:
            return None
        path = self._store / f"base-{base_id.hex()}.npy"
        try:
            base = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        ok = base.dtype == np.float64 and base.ndim == 1
        if not ok or hashlib.sha256(base.tobytes()).digest()[:8] != base_id:
            return None
        return base

    def _base(self, base_id: bytes, size: int) -> np.ndarray:
        if base_id == cw.ZERO_BASE_ID:
            return np.zeros(size)
        base = self._bases.get(base_id)
        if base is None:
            base = self._load(base_id)
        if base is None or base.size != size:
            raise FedHEError(
                "the aggregate is relative to a global model this client does not hold "
                "(it missed a round or restarted mid-job)"
            )
        return base

    # -- encryption ----------------------------------------------------------------------
    def new_upload_id(self) -> bytes:
        """A fresh seed id: job, client, attempt counter and 16 random bytes."""
        self._attempts += 1
        return fresh_upload_id(self.fingerprint, self._identity, self._attempts)

    def encrypt_vector(self, values: np.ndarray) -> Iterator[bytes]:
        """One upload attempt: a fresh seed id, then one blob per N values of deltas."""
        bound = self.preset.clip_bound
        arr = np.clip(checked(values), -bound, bound)
        base_id, base = self.base_for(arr.size)
        return self._blobs(arr - base, base_id, self.new_upload_id())

    def _blobs(self, deltas: np.ndarray, base_id: bytes, uid: bytes) -> Iterator[bytes]:
        for first, rows in row_blocks(deltas, self.n):
            yield from self._encrypt_rows(rows, first, base_id, uid)

    def _encrypt_rows(
        self, rows: np.ndarray, first: int, base_id: bytes, uid: bytes
    ) -> Iterator[bytes]:
        exps = chunk_exponents(rows)
        scales = np.ldexp(1.0, np.where(exps == cw.EXP_ANY, 0, cw.VALUE_BITS - exps))
        m = np.rint(rows * scales[:, None]).astype(np.int64) + cbd_noise(rows.shape)
        a = self.ring.expand_rows(uid, first, rows.shape[0])
        c0 = self.ring.reduce(m - self.ring.product_exact(a, self._s))
        for i in range(rows.shape[0]):
            yield cw.pack_upload(self.fingerprint, uid, base_id, int(exps[i]), c0[i])

    # -- decryption ----------------------------------------------------------------------
    def decrypt_chunks(
        self, blobs: list[bytes], total: int, weight_sum: int, keep_base: bool = True
    ) -> np.ndarray:
        """All chunks of a sum -> ``total`` weighted sums ``sum w_i x_i`` (base added back).

        The result is rounded to 2^RELEASE_BITS * ceil(||w_eff||_2) units of each chunk's
        scale (w_eff,i = w_i * 2^shift_i),
        so no exact decryption leaves this object (as :mod:`.release` for CKKS). The
        mean ``result / weight_sum`` becomes the base of this client's next upload
        (unless ``keep_base`` is false: benchmarks of unrelated vectors).
        """
        parts = [cw.unpack_aggregate(b, self.fingerprint, self.n, self.q) for b in blobs]
        tables = [p.table for p in parts if p.table is not None]
        if not tables or parts[0].table is None or any(t != tables[0] for t in tables):
            # chunk 0 always names the contributors; a server that sums chunk ranges in
            # separate workers may repeat the table at the start of each range
            raise FedHEError("a compact aggregate needs one contributor table, from chunk 0 on")
        table = tables[0]
        if any(p.shifts.size != len(table) or p.base_id != parts[0].base_id for p in parts):
            raise FedHEError("compact aggregate chunks disagree on contributors or base")
        if -(-total // self.n) != len(parts):
            raise FedHEError(f"compact aggregate has {len(parts)} chunks for {total} values")
        a_sum = np.empty((len(parts), self.n), dtype=np.uint64)
        for k0 in range(0, len(parts), _BLOCK_CHUNKS):
            block = parts[k0 : k0 + _BLOCK_CHUNKS]
            rows = [
                (uid, [w << int(p.shifts[i]) for p in block]) for i, (uid, w) in enumerate(table)
            ]
            a_sum[k0 : k0 + len(block)] = self.ring.weighted_a(rows, k0)
        c0 = np.stack([p.c0 for p in parts]).astype(np.float64)
        coeffs = self.ring.centered(c0 + self.ring.product_approx(a_sum, self._s))
        exps = np.array([0 if p.exponent == cw.EXP_ANY else p.exponent for p in parts])
        # Release grid per chunk: 2^3 * ceil(||w_eff||_2) units of the common scale, w_eff,i =
        # w_i * 2^shift_i: 2.47 sigma of the summed noise (3.24 ||w_eff||_2) for any weights
        # and ranges; exact integers, so every client rounds alike.
        weights = [w for _, w in table]
        spread = [
            _ceil_sqrt(sum((w << int(s)) ** 2 for w, s in zip(weights, p.shifts, strict=True)))
            for p in parts
        ]
        unit = np.array(spread, dtype=np.float64)[:, None] * np.ldexp(1.0, cw.RELEASE_BITS)
        sums = np.rint(coeffs / unit) * unit * np.ldexp(1.0, exps - cw.VALUE_BITS)[:, None]
        out = sums.reshape(-1)[:total] + weight_sum * self._base(parts[0].base_id, total)
        if keep_base:
            self.remember(out / weight_sum)
        return out


def _ceil_sqrt(v: int) -> int:
    """ceil(sqrt(v)) of a non-negative integer, exactly."""
    r = math.isqrt(v)
    return r + (r * r < v)
