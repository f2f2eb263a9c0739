"""Exact slot simulation of a CKKS backend: the numpy twin of every HETAL kernel.

Rotations are ``np.roll``, conjugation ``np.conj``, products complex products; a level
counter drops by one per rescaling operation exactly as SEAL's chain index does, and the
same operations are counted. Use it to check kernels and to count operations at shapes
(32768 slots, d = 769) too large to run on SEAL here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedhe_common.errors import InvalidArgumentError
from fedhe_common.hetal.backend import LevelError, Op, new_counts

_MAGIC = b"HTLN"


@dataclass(frozen=True)
class NumCT:
    """A simulated ciphertext: its slot values and levels left."""

    v: np.ndarray
    lvl: int


class NumpyBackend:
    """Exact slot arithmetic with CKKS's level rule and operation counts."""

    def __init__(self, slots: int = 8192, depth: int = 2) -> None:
        if slots < 2 or slots & (slots - 1):
            raise InvalidArgumentError(f"slots must be a power of two >= 2, got {slots}")
        if depth < 0:
            raise InvalidArgumentError(f"depth must be >= 0, got {depth}")
        self.slots = slots
        self.depth = depth
        self.counts = new_counts()
        self.steps_used: set[int] = set()  # rotation steps seen (for required_steps checks)

    def _vec(self, vec: np.ndarray | complex) -> np.ndarray:
        if np.isscalar(vec):
            return np.full(self.slots, complex(vec))  # type: ignore[arg-type]
        v = np.asarray(vec, dtype=np.complex128)
        if v.shape != (self.slots,):
            raise InvalidArgumentError(f"slot vector of shape {v.shape}, expected ({self.slots},)")
        return v

    def encrypt(self, vec: np.ndarray) -> NumCT:
        """A fresh ciphertext at the top level."""
        return NumCT(self._vec(vec).copy(), self.depth)

    def decrypt(self, ct: NumCT) -> np.ndarray:
        """The slot values (complex); the simulation has no secret."""
        return ct.v.copy()

    def _drop(self, lvl: int) -> int:
        if lvl <= 0:
            raise LevelError("no level left for a rescale")
        return lvl - 1

    def mul(self, a: NumCT, b: NumCT) -> NumCT:
        """Ciphertext product (one level)."""
        self.counts[Op.MULT] += 1
        return NumCT(a.v * b.v, self._drop(min(a.lvl, b.lvl)))

    def mul_sum(self, pairs: Sequence[tuple[NumCT, NumCT]]) -> NumCT:
        """Sum of products (one level; len(pairs) Mult counted)."""
        if not pairs:
            raise InvalidArgumentError("mul_sum needs at least one pair")
        self.counts[Op.MULT] += len(pairs)
        lvl = min(min(a.lvl, b.lvl) for a, b in pairs)
        return NumCT(
            sum((a.v * b.v for a, b in pairs), np.zeros(self.slots, complex)), self._drop(lvl)
        )

    def mul_plain(self, ct: NumCT, vec: np.ndarray | complex, target_factor: float = 1.0) -> NumCT:
        """Plaintext product (one level); ``target_factor`` is exact here, so it is ignored."""
        self.counts[Op.CMULT] += 1
        return NumCT(ct.v * self._vec(vec), self._drop(ct.lvl))

    def add(self, a: NumCT, b: NumCT) -> NumCT:
        """Sum at the lower level."""
        return NumCT(a.v + b.v, min(a.lvl, b.lvl))

    def sub(self, a: NumCT, b: NumCT) -> NumCT:
        """Difference at the lower level."""
        return NumCT(a.v - b.v, min(a.lvl, b.lvl))

    def add_plain(self, ct: NumCT, vec: np.ndarray | complex) -> NumCT:
        """Plaintext sum (no level)."""
        return NumCT(ct.v + self._vec(vec), ct.lvl)

    def rot(self, ct: NumCT, step: int) -> NumCT:
        """Slot i receives slot i + step (free when step is a multiple of slots)."""
        if step % self.slots == 0:
            return ct
        self.counts[Op.ROT] += 1
        self.steps_used.add(step)
        return NumCT(np.roll(ct.v, -step), ct.lvl)

    def conj(self, ct: NumCT) -> NumCT:
        """Complex conjugate."""
        self.counts[Op.CONJ] += 1
        return NumCT(np.conj(ct.v), ct.lvl)

    def level(self, ct: NumCT) -> int:
        """Levels left."""
        return ct.lvl

    def factor(self, ct: NumCT) -> float:
        """Always 1.0: the simulation is exact."""
        return 1.0

    def rescale_ratio(self, level: int) -> float:
        """Always 1.0."""
        return 1.0

    def serialize(self, ct: NumCT) -> bytes:
        """Magic, level (u32) and the complex128 slots."""
        return _MAGIC + int(ct.lvl).to_bytes(4, "little") + ct.v.astype("<c16").tobytes()

    def deserialize(self, blob: bytes) -> NumCT:
        """Inverse of :meth:`serialize`; refuses other lengths, levels and non-finite slots."""
        if len(blob) != 8 + 16 * self.slots or blob[:4] != _MAGIC:
            raise InvalidArgumentError("not a simulated ciphertext for this slot count")
        lvl = int.from_bytes(blob[4:8], "little")
        if lvl > self.depth:
            raise InvalidArgumentError(f"level {lvl} above the chain's depth {self.depth}")
        v = np.frombuffer(blob, dtype="<c16", offset=8).astype(np.complex128)
        if not np.isfinite(v).all():
            raise InvalidArgumentError("non-finite slot value")
        return NumCT(v, lvl)
