"""The straightforward encrypted product HETAL compares against: Jin et al.'s column packing.

X (a x b) is sent column by column (one ciphertext per column and per ``slots`` rows,
sample i in slot i); every weight W[j, k] is one ciphertext replicated in all slots.

* ABT: Z[:, j] = sum_k X[:, k] * W[j, k]          -> c ciphertexts (columns of Z)
* ATB: G[j, k] = sum_i A[i, j] X[i, k]            -> c x b replicated ciphertexts
  (slot-wise product, then log2(slots) rotate-and-adds; W's own layout)

Depth 1 each; inner products use one relinearisation per output (``mul_sum``), the
same optimisation the Diag kernels get. Counts: :mod:`fedhe_common.hetal.opcount`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedhe_common.errors import InvalidArgumentError
from fedhe_common.hetal.backend import CT, Backend, rotsum


def pack_columns(m: np.ndarray, slots: int) -> list[list[np.ndarray]]:
    """Columns of m (a x b): [row chunk][column] -> slot vector (rows in slots 0..)."""
    m = np.asarray(m, dtype=np.float64)
    if m.ndim != 2 or not np.isfinite(m).all():
        raise InvalidArgumentError("need a finite 2-D matrix")
    out = []
    for r in range(0, m.shape[0], slots):
        chunk = m[r : r + slots]
        cols = []
        for k in range(m.shape[1]):
            v = np.zeros(slots)
            v[: len(chunk)] = chunk[:, k]
            cols.append(v)
        out.append(cols)
    return out


def pack_replicated(w: np.ndarray, slots: int) -> list[list[np.ndarray]]:
    """Every entry of w (c x b) replicated over all slots: [j][k]."""
    w = np.asarray(w, dtype=np.float64)
    return [[np.full(slots, w[j, k]) for k in range(w.shape[1])] for j in range(w.shape[0])]


def jin_abt(be: Backend[CT], x_cols: Sequence[CT], w_rep: Sequence[Sequence[CT]]) -> list[CT]:
    """Z's columns (one row chunk): Z[:, j] = sum_k x_cols[k] * w_rep[j][k]."""
    if any(len(row) != len(x_cols) for row in w_rep):
        raise InvalidArgumentError("every weight row needs one ciphertext per X column")
    return [be.mul_sum(list(zip(x_cols, row, strict=True))) for row in w_rep]


def jin_atb(
    be: Backend[CT], a_cols: Sequence[Sequence[CT]], x_cols: Sequence[Sequence[CT]]
) -> list[list[CT]]:
    """G[j][k] = sum over slots (and row chunks) of A[:, j] X[:, k], replicated in every slot.

    ``a_cols[r][j]`` / ``x_cols[r][k]``: row chunk r's columns.
    """
    if len(a_cols) != len(x_cols) or not a_cols:
        raise InvalidArgumentError("A and X need the same (non-zero) number of row chunks")
    steps = [1 << t for t in range(int(math.log2(be.slots)))]
    c, b = len(a_cols[0]), len(x_cols[0])
    out = []
    for j in range(c):
        row = []
        for k in range(b):
            prod = be.mul_sum([(ac[j], xc[k]) for ac, xc in zip(a_cols, x_cols, strict=True)])
            row.append(rotsum(be, prod, steps))
        out.append(row)
    return out
