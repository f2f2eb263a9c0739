"""HETAL's encrypted matrix products DiagABT and DiagATB, on any :class:`Backend`.

Both use the diagonal method with two diagonals per ciphertext product (real and
imaginary part of the complex slots) and close over each other's layouts:
DiagABT's output Z is tiled horizontally (the softmax's input layout, and P - Y's),
DiagATB's output G is tiled vertically (W's own layout), so W - lr G needs no re-layout.
See :mod:`fedhe_common.hetal.layout` for the slot layout and the two row-sum variants,
and :mod:`fedhe_common.hetal.opcount` for the closed-form operation counts.

API note for callers (trainer, owner, services): the signatures below are stable;
``layout`` is always the second argument. Additions since the first version (all opt-in,
nothing renamed):
:func:`diag_abt_compact` (Z for an owner who decrypts it: mode client and validation;
about half the rotations; read with :meth:`Layout.unpack_z_compact`; keys
``"abt_compact"``) and ``diag_atb(..., paired=True)`` (half the column-sum rotations;
keys ``"atb_paired"``). Inner products use ``Backend.mul_sum`` (one relinearisation).
"""

from __future__ import annotations

from collections.abc import Sequence

from fedhe_common.errors import InvalidArgumentError
from fedhe_common.hetal.backend import CT, Backend, rotsum, twice_real
from fedhe_common.hetal.layout import (
    Layout,
    RowSum,
    abt_mask,
    atb_mask,
    atb_pair_mask,
    col0_mask,
    column_mask,
    wrap_mask,
)


def rotate_weights(be: Backend[CT], layout: Layout, wc_blocks: Sequence[CT]) -> list[list[CT]]:
    """Per feature block, per diagonal pair (k, k+1): Wc rotated up by k rows.

    ``wc_blocks`` are the owner's complex-packed weights (:meth:`Layout.pack_wc`), one
    per feature block. Shared by every row block of a step: kappa (cp/2 - 1) rotations.
    """
    if len(wc_blocks) != layout.kappa:
        raise InvalidArgumentError(f"{len(wc_blocks)} weight blocks, expected {layout.kappa}")
    return [[be.rot(wc, k * layout.s1) for k in layout.pairs] for wc in wc_blocks]


def diag_abt(
    be: Backend[CT],
    layout: Layout,
    x_blocks: Sequence[CT],
    rotated: Sequence[Sequence[CT]],
    *,
    duplicate: bool = True,
) -> CT:
    """Z = X W^T for one row block of X, tiled horizontally (column j: class j mod cp).

    ``x_blocks``: the row block's feature blocks; ``rotated``: :func:`rotate_weights`.
    ZERO_HALF: depth 2, the result fills columns 0..s1/2-1 and, with ``duplicate``
    (one more rotation), also s1/2..s1-1 (needed when P - Y is built from Z on the
    server). MASKED: depth 3, every column is filled.
    """
    if len(x_blocks) != layout.kappa or len(rotated) != layout.kappa:
        raise InvalidArgumentError(f"need {layout.kappa} feature blocks of X and of W")
    acc: CT | None = None
    for p, k in enumerate(layout.pairs):
        v = be.mul_sum([(x, rotated[f][p]) for f, x in enumerate(x_blocks)])
        t = rotsum(be, v, layout.rowsum_steps)
        if layout.rowsum == RowSum.MASKED:
            t = be.mul_plain(t, col0_mask(layout))
            t = rotsum(be, t, [-s for s in layout.rowsum_steps])
        term = be.mul_plain(t, abt_mask(layout, k))
        acc = term if acc is None else be.add(acc, term)
    assert acc is not None
    z = twice_real(be, acc)
    if layout.rowsum == RowSum.ZERO_HALF:
        h = layout.s1 // 2
        z = be.rot(z, -h)
        if duplicate:
            z = be.add(z, be.rot(z, -h))
    return z


def diag_abt_compact(
    be: Backend[CT], layout: Layout, x_blocks: Sequence[CT], rotated: Sequence[Sequence[CT]]
) -> CT:
    """Z = X W^T for one row block in a compact layout, for an owner who decrypts Z
    (mode client, validation): depth 2, about half DiagABT's rotations, no conjugation.

    Pair p's row sums land in column ``layout.compact_columns()[p]`` as the complex value
    z[i, i+2p] + i z[i, i+2p+1]; :meth:`Layout.unpack_z_compact` reads them.
    ZERO_HALF: pairs (2g, 2g+1) share one ciphertext (the second moved into the zero
    half), so log2(s1) rotations sum both; MASKED: log2(s1) per pair. Each group is then
    moved to its own column (one rotation) and masked. Needs
    ``required_steps(layout, ("abt_compact", ...))``.
    """
    if len(x_blocks) != layout.kappa or len(rotated) != layout.kappa:
        raise InvalidArgumentError(f"need {layout.kappa} feature blocks of X and of W")
    prods = [
        be.mul_sum([(x, rotated[f][p]) for f, x in enumerate(x_blocks)])
        for p in range(len(layout.pairs))
    ]
    cols = layout.compact_columns()
    if layout.rowsum == RowSum.ZERO_HALF:
        half = layout.s1 // 2
        groups, folds = [], layout.rowsum_steps[:-1][::-1]  # s1/4, ..., 1
        for g in range(layout.compact_groups):
            v = prods[2 * g]
            if 2 * g + 1 < len(prods):
                v = be.add(v, be.rot(prods[2 * g + 1], -half))
            groups.append((rotsum(be, v, folds), (cols[2 * g], *cols[2 * g + 1 : 2 * g + 2])))
    else:
        groups = [(rotsum(be, v, layout.rowsum_steps), (cols[p],)) for p, v in enumerate(prods)]
    acc: CT | None = None
    for g, (t, gcols) in enumerate(groups):
        term = be.mul_plain(be.rot(t, -g), column_mask(layout, gcols))
        acc = term if acc is None else be.add(acc, term)
    assert acc is not None
    return acc


def _rotate_ahat(be: Backend[CT], layout: Layout, ahat: CT) -> list[CT]:
    """A^ rotated left by k columns within each row, for every pair."""
    out = []
    for k in layout.pairs:
        if k == 0:
            out.append(ahat)
        elif layout.rowsum == RowSum.ZERO_HALF:
            out.append(be.rot(ahat, k))  # X is zero where the rotation leaves the row
        else:
            inside, wrapped = be.rot(ahat, k), be.rot(ahat, k - layout.s1)
            fixed = be.mul_plain(be.sub(inside, wrapped), wrap_mask(layout, k))
            out.append(be.add(wrapped, fixed))
    return out


def diag_atb(
    be: Backend[CT],
    layout: Layout,
    ahat: Sequence[CT],
    x_blocks: Sequence[Sequence[CT]],
    coef: float = 1.0,
    *,
    paired: bool = False,
) -> list[CT]:
    """G = coef A^T X summed over row blocks, tiled vertically (W's layout), per feature block.

    ``ahat[r]``: the owner's A^ = A + i A(one class left) for row block r
    (:meth:`Layout.pack_ahat`, A = P - Y); ``x_blocks[r][f]``: X's row block r, feature
    block f. ``coef`` (e.g. -lr (1 - eta) / batch) is folded into the placement mask.
    Depth 2 (ZERO_HALF) or 3 (MASKED).

    ``paired`` (ZERO_HALF only; needs ``required_steps(layout, ("atb_paired",))``): two
    diagonal pairs share one column sum (the second moved into X's zero half), which
    halves the kappa P log2(s0) column-sum rotations. The result's columns
    s1/2..s1-1 then hold garbage instead of zeros; W's layout only reads 0..s1/2-1
    (:meth:`Layout.unpack_w`), and DiagABT ignores them (X is zero there).
    """
    if len(ahat) != len(x_blocks) or not ahat:
        raise InvalidArgumentError(f"{len(ahat)} A^ blocks for {len(x_blocks)} X row blocks")
    if any(len(row) != layout.kappa for row in x_blocks):
        raise InvalidArgumentError(f"every X row block needs {layout.kappa} feature blocks")
    rotated = [_rotate_ahat(be, layout, a) for a in ahat]
    if paired and layout.rowsum == RowSum.ZERO_HALF and len(layout.pairs) > 1:
        return _atb_paired(be, layout, rotated, x_blocks, coef)
    out = []
    for f in range(layout.kappa):
        acc: CT | None = None
        for p, k in enumerate(layout.pairs):
            v = be.mul_sum([(rot[p], xs[f]) for rot, xs in zip(rotated, x_blocks, strict=True)])
            c = rotsum(be, v, layout.colsum_steps)
            term = be.mul_plain(c, coef * atb_mask(layout, k))
            acc = term if acc is None else be.add(acc, term)
        assert acc is not None
        out.append(twice_real(be, acc))
    return out


def _atb_paired(
    be: Backend[CT],
    layout: Layout,
    rotated: Sequence[Sequence[CT]],
    x_blocks: Sequence[Sequence[CT]],
    coef: float,
) -> list[CT]:
    half = layout.s1 // 2
    out = []
    for f in range(layout.kappa):
        acc: CT | None = None
        for g in range(len(layout.pairs) // 2):
            vp, vq = (
                be.mul_sum([(rot[p], xs[f]) for rot, xs in zip(rotated, x_blocks, strict=True)])
                for p in (2 * g, 2 * g + 1)
            )
            c = rotsum(be, be.add(vp, be.rot(vq, -half)), layout.colsum_steps)
            kp, kq = layout.pairs[2 * g], layout.pairs[2 * g + 1]
            term = be.mul_plain(c, coef * atb_pair_mask(layout, kp, kq))
            acc = term if acc is None else be.add(acc, term)
        assert acc is not None
        out.append(twice_real(be, be.add(acc, be.rot(acc, half))))
    return out


def required_steps(layout: Layout, kernels: Sequence[str] = ("abt", "atb")) -> list[int]:
    """Exactly the rotation steps the named kernels use (conjugation is always needed).

    Pass the result to :func:`~fedhe_common.hetal.seal_backend.galois_elements`.
    """
    steps: set[int] = set()
    for name in kernels:
        if name == "abt":
            steps |= set(layout.abt_steps())
        elif name == "atb":
            steps |= set(layout.atb_steps())
        elif name == "atb_paired":
            steps |= set(layout.atb_steps())
            if layout.rowsum == RowSum.ZERO_HALF and len(layout.pairs) > 1:
                steps |= {layout.s1 // 2, -(layout.s1 // 2)}
        elif name == "abt_compact":
            steps |= set(layout.abt_compact_steps())
        else:
            raise InvalidArgumentError(
                f"unknown kernel {name!r} (abt, abt_compact, atb, atb_paired)"
            )
    return sorted(steps)
