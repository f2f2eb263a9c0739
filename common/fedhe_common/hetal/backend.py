"""The evaluation interface every HETAL kernel runs on (SEAL, or the exact numpy twin).

A backend evaluates on opaque ciphertexts of ``slots`` complex slots. Each operation
that costs a rescale (``mul``, ``mul_plain``) drops one level; additions align the
operands to the lower level first. Kernels only use the methods below, so the same
kernel code runs on :class:`~fedhe_common.hetal.seal_backend.SealBackend` (real CKKS)
and :class:`~fedhe_common.hetal.numpy_backend.NumpyBackend` (exact slot simulation,
used as the numpy twin and to count operations at shapes too large for SEAL here).

No backend here holds or creates a secret key.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Protocol, TypeVar

import numpy as np

from fedhe_common.errors import InvalidArgumentError

CT = TypeVar("CT")


class Op(StrEnum):
    """Counted operations (HETAL's Table 7 counts CMult, Mult and Rot)."""

    ROT = "rot"
    CONJ = "conj"
    MULT = "mult"
    CMULT = "cmult"


def new_counts() -> dict[str, int]:
    """A zeroed operation counter."""
    return {op.value: 0 for op in Op}


class LevelError(InvalidArgumentError):
    """A multiplication would need a level the ciphertext no longer has."""


class Backend(Protocol[CT]):
    """Homomorphic evaluation on ciphertexts of ``slots`` complex slots.

    ``depth`` is the level of a fresh ciphertext. ``counts`` accumulates how many of
    each :class:`Op` ran (rotations by a multiple of ``slots`` are free, not counted).

    Added after the first version: ``depth``, :meth:`factor`, :meth:`rescale_ratio`
    (for the softmax), :meth:`mul_sum` (the kernels' inner products). Nothing renamed.
    """

    slots: int
    depth: int
    counts: dict[str, int]

    def encrypt(self, vec: np.ndarray) -> CT:
        """Fresh (public-key) encryption of a real or complex slot vector."""
        ...

    def mul(self, a: CT, b: CT) -> CT:
        """Ciphertext x ciphertext, relinearised and rescaled (one level)."""
        ...

    def mul_sum(self, pairs: Sequence[tuple[CT, CT]]) -> CT:
        """sum_i a_i x b_i with ONE relinearisation and rescale (counts len(pairs) Mult)."""
        ...

    def mul_plain(self, ct: CT, vec: np.ndarray | complex, target_factor: float = 1.0) -> CT:
        """Ciphertext x plaintext slot vector (or scalar), rescaled (one level)."""
        ...

    def add(self, a: CT, b: CT) -> CT:
        """Slot-wise sum (operands aligned to the lower level)."""
        ...

    def sub(self, a: CT, b: CT) -> CT:
        """Slot-wise difference (operands aligned to the lower level)."""
        ...

    def add_plain(self, ct: CT, vec: np.ndarray | complex) -> CT:
        """Add a plaintext slot vector (or scalar); no level used."""
        ...

    def rot(self, ct: CT, step: int) -> CT:
        """Rotate left by ``step`` slots: slot i receives slot i + step."""
        ...

    def conj(self, ct: CT) -> CT:
        """Complex conjugate of every slot."""
        ...

    def level(self, ct: CT) -> int:
        """Multiplicative levels left (0: no more rescales)."""
        ...

    def factor(self, ct: CT) -> float:
        """Exact correction factor: true value = factor x decoded value (1.0 when exact)."""
        ...

    def rescale_ratio(self, level: int) -> float:
        """q_level / nominal scale: what a product at ``level`` multiplies the factor by."""
        ...

    def serialize(self, ct: CT) -> bytes:
        """Bytes for the wire."""
        ...

    def deserialize(self, blob: bytes) -> CT:
        """Parse untrusted bytes into a ciphertext valid for this backend, or raise."""
        ...


def add_all(be: Backend[CT], cts: Sequence[CT]) -> CT:
    """Sum of a non-empty sequence of ciphertexts."""
    if not cts:
        raise InvalidArgumentError("add_all needs at least one ciphertext")
    acc = cts[0]
    for c in cts[1:]:
        acc = be.add(acc, c)
    return acc


def rotsum(be: Backend[CT], ct: CT, steps: Sequence[int]) -> CT:
    """Rotate-and-add: ``ct <- ct + rot(ct, s)`` for each step in order."""
    for s in steps:
        ct = be.add(ct, be.rot(ct, s))
    return ct


def twice_real(be: Backend[CT], ct: CT) -> CT:
    """2 Re(ct) = ct + conj(ct) (one conjugation, no level)."""
    return be.add(ct, be.conj(ct))
