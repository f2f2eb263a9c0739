"""Closed-form operation counts: HETAL's formulas (hetal.md §1.3) and this package's kernels.

Notation: a x b times (c x b)^T, unit shape s0 x s1, m = ceil(a / s0) row blocks,
P = c / 2 diagonal pairs. HETAL's kb = ceil(b / s1); ours uses the layout's ``kappa``
(ceil(b / (s1/2)) in ZERO_HALF, ceil(b / s1) in MASKED). HETAL does not count
conjugations; ours are reported separately (``conj``).

Where ours differs from HETAL in the MASKED variant (same structure), and why:

* DiagABT Rot: HETAL - kb. The owner uploads W already complex-packed
  (W + i W shifted one row), so the server needs no packing rotation per feature block.
* DiagABT CMult: c per row block (HETAL's table has m = 1 everywhere; equal there).
* DiagATB Rot: HETAL - 2, CMult: HETAL - 1. The owner uploads A^ = A + i A(one class
  left) already packed; HETAL builds it on the server (2 rotations + 1 wrap mask).

ZERO_HALF (our default when cp <= s1/2) halves the row-sum rotations (no broadcast, no
column-0 mask, depth 2 instead of 3) at the price of twice the feature blocks. Its zero
half also lets two diagonal pairs share one row sum (``ours_diag_abt_compact``, for an
owner who decrypts Z) or one column sum (``ours_diag_atb(paired=True)``).

Mult counts every ciphertext product as HETAL does; our kernels close each inner
product (over feature blocks in ABT, row blocks in ATB) with one relinearisation
(``Backend.mul_sum``), so key switches are P m (ABT) and P kappa (ATB), see
:func:`relinearisations`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedhe_common.errors import InvalidArgumentError
from fedhe_common.hetal.layout import Layout, RowSum


@dataclass(frozen=True)
class OpCount:
    """CMult (plaintext products), Mult (ciphertext products), Rot, and conjugations."""

    cmult: int
    mult: int
    rot: int
    conj: int = 0

    def as_dict(self) -> dict[str, int]:
        """Keys as the backends' ``counts``."""
        return {"cmult": self.cmult, "mult": self.mult, "rot": self.rot, "conj": self.conj}


def _ceil(x: int, y: int) -> int:
    return -(-x // y)


def _log2(x: int) -> int:
    return int(math.log2(x))


# -- HETAL (Table 6 of src/benchmark/hetal_matmul_table_fixed.pdf) ---------------------------
def hetal_diag_abt(a: int, b: int, c: int, s0: int, s1: int) -> OpCount:
    """CMult = c, Mult = (c/2) m kb, Rot = (c/2)(kb + 2 m log2 s1)."""
    m, kb, p = _ceil(a, s0), _ceil(b, s1), c // 2
    return OpCount(c, p * m * kb, p * (kb + 2 * m * _log2(s1)))


def hetal_diag_atb(
    a: int, b: int, c: int, s0: int, s1: int, level_a_lower: bool = False
) -> OpCount:
    """Both of HETAL's variants (``level_a_lower``: level(A) < level(B), "PRotUp")."""
    m, kb, p = _ceil(a, s0), _ceil(b, s1), c // 2
    mult = p * m * kb
    if not level_a_lower:
        cmult = 1 + p * (m + kb) - m
        rot = 2 + p * (2 * m + kb * _log2(s0)) - 2 * m
    else:
        cmult = 1 + p * (m * kb + kb) - m * kb
        rot = 2 + p * (m + m * kb + kb * _log2(s0)) - m - m * kb
    return OpCount(cmult, mult, rot)


def jin_abt(a: int, b: int, c: int, slots: int) -> OpCount:
    """Jin et al. column packing: Mult = b c ceil(a / slots), no rotation."""
    return OpCount(0, b * c * _ceil(a, slots), 0)


def jin_atb(a: int, b: int, c: int, slots: int) -> OpCount:
    """Jin et al.: Mult = b c ceil(a / slots), Rot = b c log2(slots) (replicated sums)."""
    return OpCount(0, b * c * _ceil(a, slots), b * c * _log2(slots))


# -- ours ----------------------------------------------------------------------------------
def ours_diag_abt(layout: Layout, a: int, *, duplicate: bool = True) -> OpCount:
    """rotate_weights once + diag_abt on each of the m row blocks of an a-row X."""
    m, k, p = layout.row_blocks(a), layout.kappa, len(layout.pairs)
    ls1 = _log2(layout.s1)
    weights = k * (p - 1)
    if layout.rowsum == RowSum.ZERO_HALF:
        per = OpCount(p, p * k, p * ls1 + (2 if duplicate else 1), 1)
    else:
        per = OpCount(2 * p, p * k, 2 * p * ls1, 1)
    return OpCount(m * per.cmult, m * per.mult, weights + m * per.rot, m * per.conj)


def ours_diag_abt_compact(layout: Layout, a: int) -> OpCount:
    """rotate_weights once + diag_abt_compact on each of the m row blocks."""
    m, k, p = layout.row_blocks(a), layout.kappa, len(layout.pairs)
    g, ls1 = layout.compact_groups, _log2(layout.s1)
    if layout.rowsum == RowSum.ZERO_HALF:
        rot = g * (ls1 - 1) + (g if p > 1 else 0) + g - 1
    else:
        rot = p * ls1 + p - 1
    return OpCount(m * g, m * p * k, k * (p - 1) + m * rot, 0)


def ours_diag_atb(layout: Layout, a: int, *, paired: bool = False) -> OpCount:
    """diag_atb over the m row blocks of an a-row A and X."""
    m, k, p = layout.row_blocks(a), layout.kappa, len(layout.pairs)
    colsum = k * p * _log2(layout.s0)
    if paired and layout.rowsum == RowSum.ZERO_HALF and p > 1:
        g = p // 2
        rot = m * (p - 1) + k * (g + g * _log2(layout.s0) + 1)
        return OpCount(k * g, p * m * k, rot, k)
    if layout.rowsum == RowSum.ZERO_HALF:
        return OpCount(k * p, p * m * k, m * (p - 1) + colsum, k)
    return OpCount(m * (p - 1) + k * p, p * m * k, 2 * m * (p - 1) + colsum, k)


# Relative CPU cost at the top of a chain (SEAL, N = 2^14, measured here, rotation = 1):
# a relinearisation + rescale ~1.3, one more product inside a ``mul_sum`` ~0.1, a
# plaintext product + rescale ~0.35; one more 33-bit prime costs ~1.5x at depth 2..3.
COST_WEIGHTS = {"relin": 1.3, "mult": 0.1, "rot": 1.0, "cmult": 0.35, "conj": 1.0}


def chain_factor(depth: int) -> float:
    """Cost of an operation on a depth-``depth`` chain relative to depth 2 (measured)."""
    return float(((depth + 2) / 4) ** 1.5)


def relinearisations(layout: Layout, a: int) -> int:
    """``mul_sum`` calls (one key switch each) of DiagABT + DiagATB over a rows."""
    p = len(layout.pairs)
    return p * layout.row_blocks(a) + p * layout.kappa


KERNELS = ("step", "abt", "atb")


def step_cost(layout: Layout, a: int, kernel: str = "step") -> float:
    """Modelled CPU over a rows on the minimal chain of DiagABT + DiagATB (paired)
    (``kernel="step"``), or of one of them (``"abt"``, ``"atb"``)."""
    if kernel not in KERNELS:
        raise InvalidArgumentError(f"unknown kernel {kernel!r} ({', '.join(KERNELS)})")
    p = len(layout.pairs)
    total = 0.0
    if kernel in ("step", "abt"):
        c = ours_diag_abt(layout, a)
        total += COST_WEIGHTS["relin"] * p * layout.row_blocks(a)
        total += sum(COST_WEIGHTS[k] * v for k, v in c.as_dict().items())
    if kernel in ("step", "atb"):
        c = ours_diag_atb(layout, a, paired=True)
        total += COST_WEIGHTS["relin"] * p * layout.kappa
        total += sum(COST_WEIGHTS[k] * v for k, v in c.as_dict().items())
    return total * chain_factor(layout.depth)


def best_layout(
    a: int, classes: int, d: int, slots: int = 8192, max_depth: int = 3, kernel: str = "step"
) -> Layout:
    """The block height s0 (power of two) that minimises :func:`step_cost` for a rows.

    HETAL takes s0 = min(max(a, cp), slots / cp); a tall block makes d's feature blocks
    narrow and the column sums many (kappa P log2 s0), a flat one makes the row sums
    many (m P log2 s1): the optimum is in between (e.g. 64 x 128 for d = 769, c = 4).
    Ties keep the lower depth (ZERO_HALF); ``max_depth`` = 2 keeps ZERO_HALF only.
    Training needs one layout for both kernels (``kernel="step"``: Z's and G's layouts
    close over each other); a lone product may pick its own (``"abt"``, ``"atb"``).
    """
    best: tuple[float, int, Layout] | None = None
    s0 = 2
    while s0 < slots:
        for variant in (RowSum.ZERO_HALF, RowSum.MASKED):
            try:
                lay = Layout(classes, d, slots, s0, variant)
            except InvalidArgumentError:
                continue
            if lay.depth > max_depth:
                continue
            key = (step_cost(lay, a, kernel), lay.depth, lay)
            if best is None or key[:2] < best[:2]:
                best = key
        s0 *= 2
    if best is None:
        raise InvalidArgumentError(f"no block shape fits {classes} classes in {slots} slots")
    return best[2]
