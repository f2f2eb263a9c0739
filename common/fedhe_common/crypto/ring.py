"""Exact polynomial arithmetic mod a preset's primes, done by SEAL (for threshold CKKS).

Residue arrays are uint64 ``(k, N)`` (NTT form unless said otherwise). 128-bit
products go through SEAL's ``multiply_plain`` on an NTT ciphertext; numpy only
adds, subtracts and compares (q < 2^61, so sums never overflow). Key-level
arithmetic uses a helper context whose first data level *is* the main context's
key level (parms_id hashes only the ring and the primes).
"""

from __future__ import annotations

import numpy as np
import tenseal.sealapi as sa

from fedhe_common.crypto import sealbytes
from fedhe_common.crypto.context import build_seal_context
from fedhe_common.crypto.presets import Preset


def addmod(a: np.ndarray, b: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(a + b) mod q, q broadcast over the prime axis."""
    s = a + b
    return np.where(s >= q, s - q, s)


def submod(a: np.ndarray, b: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(a - b) mod q."""
    return np.where(a >= b, a - b, a + (q - b))


class RingArithmetic:
    """NTT, products and constants at the data level and the key level of a preset."""

    def __init__(self, preset: Preset) -> None:
        self.preset = preset
        self.n = preset.poly_modulus_degree
        self.ctx = build_seal_context(preset)
        self.evaluator = sa.Evaluator(self.ctx)
        self.encoder = sa.CKKSEncoder(self.ctx)
        self.pid_data = tuple(int(x) for x in self.ctx.first_parms_id())
        self.pid_key = tuple(int(x) for x in self.ctx.key_parms_id())
        self.q_data = self._primes(self.ctx.first_context_data())
        self.q_key = self._primes(self.ctx.key_context_data())
        if self.ctx.using_keyswitching():
            used = {int(q) for q in self.q_key}
            extra = next(
                m for m in sa.CoeffModulus.Create(self.n, [30, 30]) if m.value() not in used
            )
            parms = sa.EncryptionParameters(sa.SCHEME_TYPE.CKKS)
            parms.set_poly_modulus_degree(self.n)
            parms.set_coeff_modulus([sa.Modulus(int(q)) for q in self.q_key] + [extra])
            self.key_ctx = sa.SEALContext(parms, True, sa.SEC_LEVEL_TYPE.NONE)
            assert tuple(int(x) for x in self.key_ctx.first_parms_id()) == self.pid_key
            self.key_evaluator = sa.Evaluator(self.key_ctx)
        else:
            self.key_ctx, self.key_evaluator = self.ctx, self.evaluator

    @staticmethod
    def _primes(data: sa.SEALContext.ContextData) -> np.ndarray:
        return np.array([m.value() for m in data.parms().coeff_modulus()], dtype=np.uint64)

    def _level(
        self, level: str
    ) -> tuple[sa.SEALContext, sa.Evaluator, tuple[int, ...], np.ndarray]:
        if level == "data":
            return self.ctx, self.evaluator, self.pid_data, self.q_data
        return self.key_ctx, self.key_evaluator, self.pid_key, self.q_key

    def primes(self, level: str) -> np.ndarray:
        """The primes of a level as a (k, 1) column for broadcasting."""
        return self._level(level)[3][:, None]

    def _load_ct(self, ctx: sa.SEALContext, blob: bytes) -> sa.Ciphertext:
        ct = sa.Ciphertext()
        sealbytes.load_into(ct, ctx, blob)
        return ct

    def to_ntt(self, residues: np.ndarray, level: str) -> np.ndarray:
        """Coefficient-form residues (m, k, N) -> NTT form, m <= 16 polynomials at once."""
        ctx, ev, pid, _ = self._level(level)
        m = residues.shape[0]
        data = residues if m >= 2 else np.concatenate([residues, residues])
        ct = self._load_ct(ctx, sealbytes.build_ciphertext(pid, data, 1.0, ntt=False))
        ev.transform_to_ntt_inplace(ct)
        return sealbytes.ciphertext_array(sealbytes.save_bytes(ct))[:m].copy()

    def from_ntt(self, residues: np.ndarray, level: str) -> np.ndarray:
        """NTT residues (m, k, N) -> coefficient form (m <= 16 polynomials at once)."""
        ctx, ev, pid, _ = self._level(level)
        m = residues.shape[0]
        data = residues if m >= 2 else np.concatenate([residues, residues])
        ct = self._load_ct(ctx, sealbytes.build_ciphertext(pid, data, 1.0, ntt=True))
        ev.transform_from_ntt_inplace(ct)
        return sealbytes.ciphertext_array(sealbytes.save_bytes(ct))[:m].copy()

    def residues(self, values: np.ndarray, level: str) -> np.ndarray:
        """int64 coefficients (m, N) -> (m, k, N) residues (coefficient form)."""
        q = self._level(level)[3]
        v = np.asarray(values, dtype=np.int64)
        return np.stack([np.mod(v, np.int64(int(qj))).astype(np.uint64) for qj in q], axis=-2)

    def multiply(self, x: np.ndarray, y: np.ndarray, level: str) -> np.ndarray:
        """Dyadic product x * y mod q of two NTT (k, N) arrays."""
        ctx, ev, pid, _ = self._level(level)
        if not x.any() or not y.any():  # SEAL refuses to produce a transparent result
            return np.zeros_like(x)
        ct = self._load_ct(ctx, sealbytes.build_ciphertext(pid, np.stack([x, x]), 1.0))
        pt = sa.Plaintext()
        sealbytes.load_into(pt, ctx, sealbytes.build_plaintext(pid, y, 1.0))
        ev.multiply_plain_inplace(ct, pt)
        return sealbytes.ciphertext_array(sealbytes.save_bytes(ct))[0].copy()

    def constant(self, value: int, level: str) -> np.ndarray:
        """The constant polynomial ``value`` in NTT form (every slot = value mod q_j)."""
        q = self._level(level)[3]
        return np.stack([np.full(self.n, value % int(qj), dtype=np.uint64) for qj in q])
