"""Slot layout of HETAL's blocks, the client-side packing helpers and the kernels' masks.

Every ciphertext holds one s0 x s1 block of a matrix, row-major (slot r*s1 + j).

* X (samples x d, bias column included) is cut into row blocks of s0 samples and
  feature blocks of ``width`` columns (:meth:`Layout.pack_x`).
* W (classes x d), classes padded to ``cp`` (a power of two), is tiled vertically: row r
  of every block holds W[r mod cp]. The owner sends Wc = W~ + i W~(one row up), the
  complex pair packing of two diagonals (:meth:`Layout.pack_wc`).
* Z = X W^T and A = P - Y are tiled horizontally: column j holds class j mod cp.
  The owner sends A^ = A + i A(one class left) (:meth:`Layout.pack_ahat`).

Two row-sum variants (:class:`RowSum`), chosen automatically:

* ``ZERO_HALF`` (default when cp <= s1/2, e.g. 64 x 128 blocks): features occupy
  columns 0..s1/2-1 and the right half is zero, so after log2(s1) rotate-and-adds the
  exact row sum of row i sits in the right half of row i-1: no column mask, no
  broadcast, DiagABT and DiagATB have depth 2. Costs twice the feature blocks of HETAL.
* ``MASKED`` (HETAL's structure; needed when cp > s1/2, e.g. HETAL's 2048 x 16 unit):
  features fill the row; DiagABT masks column 0 and broadcasts (log2 s1 more
  rotations), DiagATB fixes the row wrap of its class rotations with a mask; depth 3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache

import numpy as np

from fedhe_common.errors import InvalidArgumentError


class RowSum(StrEnum):
    """How DiagABT sums a row (see the module docstring)."""

    ZERO_HALF = "zero_half"
    MASKED = "masked"


def _pow2(x: int) -> bool:
    return x >= 1 and not x & (x - 1)


def pad_classes(classes: int) -> int:
    """Classes padded to a power of two (at least 2: one complex diagonal pair)."""
    return max(2, 1 << max(0, classes - 1).bit_length())


@dataclass(frozen=True)
class Layout:
    """Block geometry for ``classes`` classes and ``d`` features (bias included)."""

    classes: int
    d: int
    slots: int = 8192
    s0: int = 64
    rowsum: RowSum | None = field(default=None)

    def __post_init__(self) -> None:
        if self.classes < 1 or self.d < 1:
            raise InvalidArgumentError(
                f"need classes >= 1 and d >= 1, got {self.classes}, {self.d}"
            )
        if not _pow2(self.slots) or not _pow2(self.s0) or self.s0 >= self.slots:
            raise InvalidArgumentError(
                f"slots ({self.slots}) and s0 ({self.s0}) must be powers of two with s0 < slots"
            )
        cp = pad_classes(self.classes)
        if self.rowsum is None:
            object.__setattr__(
                self, "rowsum", RowSum.ZERO_HALF if cp <= self.s1 // 2 else RowSum.MASKED
            )
        if cp > self.s0:
            raise InvalidArgumentError(f"{cp} padded classes do not fit in {self.s0} block rows")
        if cp > self.width:
            raise InvalidArgumentError(
                f"{cp} padded classes do not fit in {self.width} columns ({self.rowsum})"
            )

    @classmethod
    def for_batch(cls, batch: int, classes: int, d: int, slots: int = 8192) -> Layout:
        """HETAL's rule s0 = min(max(batch, cp), slots / cp), kept ZERO_HALF when possible."""
        cp = pad_classes(classes)
        s0 = min(max(1 << max(0, batch - 1).bit_length(), cp), slots // (2 * cp))
        if s0 >= cp:
            return cls(classes, d, slots, s0)
        return cls(classes, d, slots, min(slots // cp, max(cp, s0)), RowSum.MASKED)

    # -- geometry ------------------------------------------------------------------------
    @property
    def s1(self) -> int:
        """Block columns."""
        return self.slots // self.s0

    @property
    def cp(self) -> int:
        """Padded classes."""
        return pad_classes(self.classes)

    @property
    def width(self) -> int:
        """Feature columns per block (s1/2 in ZERO_HALF, s1 in MASKED)."""
        return self.s1 // 2 if self.rowsum == RowSum.ZERO_HALF else self.s1

    @property
    def kappa(self) -> int:
        """Feature blocks: ceil(d / width)."""
        return -(-self.d // self.width)

    @property
    def pairs(self) -> tuple[int, ...]:
        """First diagonal of each complex pair (k, k+1): 0, 2, ..., cp - 2."""
        return tuple(range(0, self.cp, 2))

    @property
    def depth(self) -> int:
        """Levels DiagABT (and DiagATB) consume: 2 (ZERO_HALF) or 3 (MASKED)."""
        return 2 if self.rowsum == RowSum.ZERO_HALF else 3

    def narrowed(self, start: int, stop: int) -> Layout:
        """The same geometry for feature blocks start..stop-1 only (for split work)."""
        if not 0 <= start < stop <= self.kappa:
            raise InvalidArgumentError(f"feature blocks {start}..{stop} outside 0..{self.kappa}")
        return Layout(self.classes, (stop - start) * self.width, self.slots, self.s0, self.rowsum)

    def row_blocks(self, n: int) -> int:
        """Blocks needed for n samples."""
        return -(-n // self.s0)

    # -- rotation steps ------------------------------------------------------------------
    @property
    def rowsum_steps(self) -> tuple[int, ...]:
        """1, 2, ..., s1/2."""
        return tuple(1 << t for t in range(int(math.log2(self.s1))))

    @property
    def colsum_steps(self) -> tuple[int, ...]:
        """s1, 2 s1, ..., s1 s0/2."""
        return tuple(self.s1 << t for t in range(int(math.log2(self.s0))))

    def abt_steps(self) -> tuple[int, ...]:
        """Every rotation :func:`~fedhe_common.hetal.kernels.rotate_weights` and DiagABT use."""
        steps = {k * self.s1 for k in self.pairs[1:]} | set(self.rowsum_steps)
        if self.rowsum == RowSum.ZERO_HALF:
            steps.add(-(self.s1 // 2))
        else:
            steps |= {-s for s in self.rowsum_steps}
        return tuple(sorted(steps))

    @property
    def compact_groups(self) -> int:
        """Ciphertexts the compact DiagABT row-sums per row block (pairs share one in ZERO_HALF)."""
        p = len(self.pairs)
        return max(1, p // 2) if self.rowsum == RowSum.ZERO_HALF else p

    def abt_compact_steps(self) -> tuple[int, ...]:
        """Every rotation :func:`~fedhe_common.hetal.kernels.diag_abt_compact` uses."""
        steps = {k * self.s1 for k in self.pairs[1:]} | {-g for g in range(1, self.compact_groups)}
        if self.rowsum == RowSum.ZERO_HALF:
            steps |= set(self.rowsum_steps[:-1]) | (
                {-(self.s1 // 2)} if len(self.pairs) > 1 else set()
            )
        else:
            steps |= set(self.rowsum_steps)
        return tuple(sorted(steps))

    def compact_columns(self) -> list[int]:
        """Column of pair p's row sums in the compact Z (value: z[i, i+2p] + i z[i, i+2p+1])."""
        if self.rowsum == RowSum.ZERO_HALF:
            return [p // 2 + (p % 2) * (self.s1 // 2) for p in range(len(self.pairs))]
        return list(range(len(self.pairs)))

    def atb_steps(self) -> tuple[int, ...]:
        """Every rotation DiagATB uses."""
        steps = set(self.pairs[1:]) | set(self.colsum_steps)
        if self.rowsum == RowSum.MASKED:
            steps |= {k - self.s1 for k in self.pairs[1:]}
        return tuple(sorted(steps))

    # -- packing (client side; plain numpy) ------------------------------------------------
    def _grid(self, dtype: type = np.float64) -> np.ndarray:
        return np.zeros((self.s0, self.s1), dtype=dtype)

    def _check_rows(self, m: np.ndarray, cols: int, what: str) -> np.ndarray:
        m = np.asarray(m, dtype=np.float64)
        if m.ndim != 2 or m.shape[0] > self.s0 or m.shape[1] != cols:
            raise InvalidArgumentError(f"{what} of shape {m.shape}: need <= {self.s0} x {cols}")
        if not np.isfinite(m).all():
            raise InvalidArgumentError(f"{what} has non-finite values")
        return m

    def pack_x(self, rows: np.ndarray) -> list[np.ndarray]:
        """One row block of X (<= s0 x d) -> one real slot vector per feature block."""
        x = self._check_rows(rows, self.d, "X block")
        out = []
        for f in range(self.kappa):
            g = self._grid()
            part = x[:, f * self.width : (f + 1) * self.width]
            g[: x.shape[0], : part.shape[1]] = part
            out.append(g.ravel())
        return out

    def pack_w(self, w: np.ndarray) -> list[np.ndarray]:
        """W (classes x d) tiled vertically, one real vector per feature block."""
        w = np.asarray(w, dtype=np.float64)
        if w.shape != (self.classes, self.d) or not np.isfinite(w).all():
            raise InvalidArgumentError(
                f"W of shape {w.shape}: need finite {self.classes} x {self.d}"
            )
        wp = np.zeros((self.cp, self.kappa * self.width))
        wp[: self.classes, : self.d] = w
        tiled = np.tile(wp, (self.s0 // self.cp, 1))
        out = []
        for f in range(self.kappa):
            g = self._grid()
            g[:, : self.width] = tiled[:, f * self.width : (f + 1) * self.width]
            out.append(g.ravel())
        return out

    def pack_wc(self, w: np.ndarray) -> list[np.ndarray]:
        """Complex pair packing: row r = W[r mod cp] + i W[(r+1) mod cp]."""
        out = []
        for v in self.pack_w(w):
            g = v.reshape(self.s0, self.s1)
            out.append((g + 1j * np.roll(g, -1, axis=0)).ravel())
        return out

    def pack_ahat(self, a: np.ndarray) -> np.ndarray:
        """A (<= s0 x classes) -> row i, column j: A[i, j mod cp] + i A[i, (j+1) mod cp]."""
        a = self._check_rows(a, self.classes, "A block")
        ap = np.zeros((a.shape[0], self.cp))
        ap[:, : self.classes] = a
        cols = np.arange(self.s1)
        g = self._grid(np.complex128)
        g[: a.shape[0]] = ap[:, cols % self.cp] + 1j * ap[:, (cols + 1) % self.cp]
        return g.ravel()

    def unpack_w(self, vecs: list[np.ndarray]) -> np.ndarray:
        """W (classes x d) from its tiled blocks (real parts of rows 0..classes-1)."""
        if len(vecs) != self.kappa:
            raise InvalidArgumentError(f"{len(vecs)} weight blocks, expected {self.kappa}")
        parts = [np.real(v).reshape(self.s0, self.s1)[: self.classes, : self.width] for v in vecs]
        return np.hstack(parts)[:, : self.d]

    def unpack_z(self, vec: np.ndarray, rows: int) -> np.ndarray:
        """Z (rows x classes) from a horizontally tiled block."""
        if not 0 <= rows <= self.s0:
            raise InvalidArgumentError(f"rows {rows} outside 0..{self.s0}")
        return np.real(vec).reshape(self.s0, self.s1)[:rows, : self.classes].copy()

    def unpack_z_compact(self, vec: np.ndarray, rows: int) -> np.ndarray:
        """Z (rows x classes) from :func:`~fedhe_common.hetal.kernels.diag_abt_compact`'s
        output (complex slots; the owner reads real and imaginary parts)."""
        if not 0 <= rows <= self.s0:
            raise InvalidArgumentError(f"rows {rows} outside 0..{self.s0}")
        g = np.asarray(vec, dtype=np.complex128).reshape(self.s0, self.s1)
        z = np.zeros((rows, self.cp))
        i = np.arange(rows)
        for p, col in enumerate(self.compact_columns()):
            k = 2 * p
            z[i, (i + k) % self.cp] = g[:rows, col].real
            z[i, (i + k + 1) % self.cp] = g[:rows, col].imag
        return z[:, : self.classes]

    def tile_z(self, z: np.ndarray) -> np.ndarray:
        """Reference: Z (<= s0 x classes) tiled horizontally over all s1 columns."""
        zp = np.zeros((self.s0, self.cp))
        zp[: z.shape[0], : self.classes] = z
        return np.tile(zp, (1, self.s1 // self.cp)).ravel()


# -- masks (plaintext constants the server encodes) ------------------------------------------
@lru_cache(maxsize=256)
def abt_mask(layout: Layout, k: int) -> np.ndarray:
    """Complex diagonal mask of pair (k, k+1), times 1/2 for the final 2 Re.

    ZERO_HALF: placed where the row sum lands (right half of row i-1 for row i).
    MASKED: over the whole broadcast row i.
    """
    s0, s1, cp = layout.s0, layout.s1, layout.cp
    rows = np.arange(s0)[:, None]
    if layout.rowsum == RowSum.ZERO_HALF:
        h = s1 // 2
        i = (rows + 1) % s0
        j = np.arange(h)[None, :]
        half = 0.5 * (j % cp == (i + k) % cp) - 0.5j * (j % cp == (i + k + 1) % cp)
        m = np.zeros((s0, s1), dtype=np.complex128)
        m[:, h:] = half
        return m.ravel()
    j = np.arange(s1)[None, :]
    full = 0.5 * (j % cp == (rows + k) % cp) - 0.5j * (j % cp == (rows + k + 1) % cp)
    return np.asarray(full, dtype=np.complex128).ravel()


@lru_cache(maxsize=8)
def col0_mask(layout: Layout) -> np.ndarray:
    """1 in column 0 of every row (MASKED DiagABT)."""
    m = np.zeros((layout.s0, layout.s1))
    m[:, 0] = 1.0
    return m.ravel()


@lru_cache(maxsize=256)
def atb_mask(layout: Layout, k: int) -> np.ndarray:
    """Placement mask of pair (k, k+1): column j's sums go to the rows of classes (j+k),
    (j+k+1) mod cp; times 1/2 for the final 2 Re."""
    rows = np.arange(layout.s0)[:, None] % layout.cp
    j = np.arange(layout.s1)[None, :]
    cp = layout.cp
    m = 0.5 * (rows == (j + k) % cp) - 0.5j * (rows == (j + k + 1) % cp)
    m = np.asarray(m, dtype=np.complex128)
    m[:, layout.width :] = 0.0
    return m.ravel()


@lru_cache(maxsize=256)
def atb_pair_mask(layout: Layout, kp: int, kq: int) -> np.ndarray:
    """ZERO_HALF: pair kp's placement mask on the left half, kq's on the right half."""
    h = layout.s1 // 2
    m = atb_mask(layout, kp).reshape(layout.s0, layout.s1).copy()
    m[:, h:] = atb_mask(layout, kq).reshape(layout.s0, layout.s1)[:, :h]
    return m.ravel()


@lru_cache(maxsize=64)
def column_mask(layout: Layout, cols: tuple[int, ...]) -> np.ndarray:
    """1 in the given columns of every row."""
    m = np.zeros((layout.s0, layout.s1))
    m[:, list(cols)] = 1.0
    return m.ravel()


@lru_cache(maxsize=64)
def wrap_mask(layout: Layout, k: int) -> np.ndarray:
    """1 where a rotation by k stays inside its row (columns < s1 - k)."""
    m = np.zeros((layout.s0, layout.s1))
    m[:, : layout.s1 - k] = 1.0
    return m.ravel()
