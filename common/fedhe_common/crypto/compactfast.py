"""``single-key-fast`` on a client: exact coefficient RLWE over two 32-bit RNS limbs.

A chunk's values ``v`` (absolute, no deltas) are encoded at ``2^(40 - x)`` with
``|v| < 2^x``, so ``|m| <= 2^40``; then, per limb j, ``c0_j = m + e - a_j*s mod q_j``
with ``a_j`` expanded from the upload's public seed (one noise e for both limbs: an
RLWE sample mod q = q1*q2 in CRT form). The server sums c0 and c1 = sum w a, so
each aggregate chunk decrypts on its own: ``c0 + c1*s`` per limb (one float FFT
product, exact after ``rint``), CRT to a centered 64-bit integer, released on
a grid of E * 2^5 units, E the chunk's effective weight (docs/crypto.md §8).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from fedhe_common.crypto import compactwire as cw
from fedhe_common.crypto.compact import (
    cbd_noise,
    checked,
    chunk_exponents,
    fresh_upload_id,
    row_blocks,
    ternary_secret,
)
from fedhe_common.crypto.secret import SecretKeyHolder
from fedhe_common.errors import FedHEError, InvalidArgumentError, InvalidCiphertextError

_BLOCK_CHUNKS = 32


class FastCipher:
    """Encrypts values and decrypts sums, chunk by chunk, for one client of one job."""

    def __init__(self, holder: SecretKeyHolder, identity: str) -> None:
        if holder.preset.encryption != "seeded-fast":
            raise InvalidArgumentError(f"preset {holder.preset.name!r} is not single-key-fast")
        self.preset = holder.preset
        self.fingerprint = holder.fingerprint
        self.ring = cw.CompactRing(self.preset)
        self.n, self.primes = self.ring.n, self.ring.primes
        self.value_bits = self.ring.scheme.value_bits
        self._s = self.ring.spectrum(ternary_secret(holder, self.primes[0]))
        self._identity = identity.encode()
        self._attempts = 0
        self._ws = cw.Workspace()  # decryption's scratch arrays, reused

    def new_upload_id(self) -> bytes:
        """A fresh seed id (one per upload attempt: no a is used for two plaintexts)."""
        self._attempts += 1
        return fresh_upload_id(self.fingerprint, self._identity, self._attempts)

    # -- encryption ----------------------------------------------------------------------
    def encrypt_vector(self, values: np.ndarray) -> Iterator[bytes]:
        """One upload attempt: a fresh seed id, then one blob per N values (clipped)."""
        return self._blobs(checked(values), self.new_upload_id())

    def _blobs(self, arr: np.ndarray, uid: bytes) -> Iterator[bytes]:
        for first, rows in row_blocks(arr, self.n, self.preset.clip_bound):
            yield from self._encrypt_rows(rows, first, uid)

    def _encrypt_rows(self, rows: np.ndarray, first: int, uid: bytes) -> Iterator[bytes]:
        exps = chunk_exponents(rows)
        scales = np.ldexp(1.0, np.where(exps == cw.EXP_ANY, 0, self.value_bits - exps))
        m = np.rint(rows * scales[:, None]) + cbd_noise(rows.shape)
        a = self.ring.expand_limbs(uid, first, rows.shape[0])  # (limbs, rows, N)
        c0 = self.ring.product_rint(a, self._s)  # an off-by-one here would only add noise
        np.subtract(m, c0, out=c0)
        words = self.ring.reduce(c0, self.ring.q_col).transpose(1, 0, 2).astype(np.uint32)
        for i in range(rows.shape[0]):
            yield cw.pack_upload(self.fingerprint, uid, cw.ZERO_BASE_ID, int(exps[i]), words[i])

    # -- decryption ----------------------------------------------------------------------
    def decrypt_chunk(self, blob: bytes, weight_sum: int) -> np.ndarray:
        """One aggregate chunk -> N weighted sums ``sum w_i x_i`` (released, rounded)."""
        return self._decrypt_rows([blob], _checked_weight(weight_sum))[0]

    def decrypt_chunks(self, blobs: list[bytes], total: int, weight_sum: int) -> np.ndarray:
        """Aggregate chunks -> ``total`` weighted sums, 32 chunks per numpy call.

        Each value is rounded to E * 2^5 units of its chunk's scale, E the chunk's
        effective weight ``sum w_i 2^shift_i`` (the release rule, docs/crypto.md §2 and
        §8), coarser than the summed noise for any weights and ranges."""
        if -(-total // self.n) != len(blobs):
            raise FedHEError(f"aggregate has {len(blobs)} chunks for {total} values")
        weight = _checked_weight(weight_sum)
        out = np.empty((len(blobs), self.n))
        for k0 in range(0, len(blobs), _BLOCK_CHUNKS):
            block = blobs[k0 : k0 + _BLOCK_CHUNKS]
            out[k0 : k0 + len(block)] = self._decrypt_rows(block, weight)
        return out.reshape(-1)[:total]

    def _decrypt_rows(self, blobs: list[bytes], weight_sum: int) -> np.ndarray:
        ws, limbs, n = self._ws, len(self.primes), self.n
        shape = (limbs, len(blobs), n)
        words = ws.get("words", (len(blobs), 2 * limbs, n), np.uint32)
        exps, effective = cw.unpack_sums(blobs, self.fingerprint, n, self.primes, words)
        if (effective < weight_sum).any():  # E = sum w_i 2^shift_i >= sum w_i
            raise InvalidCiphertextError("aggregate's effective weight is below its weight sum")
        c1 = words[:, limbs:].transpose(1, 0, 2)  # (limbs, rows, N)
        z = ws.get("z", (*shape[:2], n // 2), np.complex128)
        z.real, z.imag = c1[..., : n // 2], c1[..., n // 2 :]
        t = ws.get("t", shape)
        try:
            self.ring.folded_product_rint(z, self._s, out=t)
        except ArithmeticError:  # never seen: the exact split product
            t[...] = self.ring.product_exact(c1, self._s)
        t += words[:, :limbs].transpose(1, 0, 2)  # + c0
        work = ws.get("w1", shape[1:]), ws.get("w2", shape[1:])
        r1 = self.ring.reduce(t[0], float(self.primes[0]), out=ws.get("r1", shape[1:]))
        x = self.ring.crt(r1, t[1], work)  # (rows, N), centered; a view of t
        # Release grid per chunk: E * 2^5 units of its scale, E = sum w_i 2^shift_i >=
        # ||w_eff||_2, so >= 9.8 sigma of the summed noise (3.24 ||w_eff||_2) whatever the
        # weights and the clients' ranges (float rounding of a 64-bit x errs by 2^-53 of it).
        unit = np.ldexp(effective.astype(np.float64), self.ring.scheme.release_bits)[:, None]
        x /= unit
        np.rint(x, out=x)
        exps = np.where(exps == cw.EXP_ANY, 0, exps)
        return x * (unit * np.ldexp(1.0, exps - self.value_bits)[:, None])


def _checked_weight(weight_sum: int) -> int:
    if int(weight_sum) != weight_sum or not 1 <= weight_sum < 2**32:
        raise InvalidArgumentError(f"weight sum must be a positive integer, got {weight_sum}")
    return int(weight_sum)
