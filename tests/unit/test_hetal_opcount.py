"""Operation counts of the HETAL kernels against HETAL's Table 6/7 formulas and our own."""

from __future__ import annotations

import numpy as np
import pytest

from fedhe_common.hetal import baseline, opcount
from fedhe_common.hetal.kernels import diag_abt, diag_abt_compact, diag_atb, rotate_weights
from fedhe_common.hetal.layout import Layout, RowSum
from fedhe_common.hetal.numpy_backend import NumpyBackend

SLOTS = 32768  # HEaaN FGb: N = 2^16
# (a, b, c) -> Table 7 (corrected): DiagABT, DiagATB (level A >= B), DiagATB (A < B) as
# (CMult, Mult, Rot); Jin ABT / ATB (CMult, Mult, Rot)
TABLE7 = {
    (128, 128, 4): ((4, 2, 34), (4, 2, 18), (4, 2, 18), (0, 512, 0), (0, 512, 7680)),
    (256, 256, 8): ((8, 8, 64), (12, 8, 72), (15, 8, 75), (0, 2048, 0), (0, 2048, 30720)),
    (512, 769, 4): ((4, 26, 50), (28, 26, 238), (40, 26, 250), (0, 3076, 0), (0, 3076, 46140)),
    (1024, 769, 8): (
        (8, 100, 140),
        (104, 100, 1008),
        (176, 100, 1080),
        (0, 6152, 0),
        (0, 6152, 92280),
    ),
    (2048, 769, 16): (
        (16, 392, 456),
        (400, 392, 4328),
        (736, 392, 4664),
        (0, 12304, 0),
        (0, 12304, 184560),
    ),
}


def _tuple(c: opcount.OpCount) -> tuple[int, int, int]:
    return (c.cmult, c.mult, c.rot)


@pytest.mark.parametrize("shape", list(TABLE7))
def test_hetal_formulas_reproduce_table7(shape: tuple[int, int, int]) -> None:
    a, b, c = shape
    s0, s1 = a, SLOTS // a
    abt, atb, atb_up, jabt, jatb = TABLE7[shape]
    assert _tuple(opcount.hetal_diag_abt(a, b, c, s0, s1)) == abt
    assert _tuple(opcount.hetal_diag_atb(a, b, c, s0, s1)) == atb
    assert _tuple(opcount.hetal_diag_atb(a, b, c, s0, s1, level_a_lower=True)) == atb_up
    assert _tuple(opcount.jin_abt(a, b, c, SLOTS)) == jabt
    assert _tuple(opcount.jin_atb(a, b, c, SLOTS)) == jatb


def _count(layout: Layout, a: int) -> tuple[dict[str, int], dict[str, int]]:
    """Run both kernels on the numpy twin; return (ABT counts, ATB counts)."""
    rng = np.random.default_rng(0)
    be = NumpyBackend(layout.slots, layout.depth)
    x = rng.standard_normal((a, layout.d))
    w = rng.standard_normal((layout.classes, layout.d))
    s0 = layout.s0
    xb = [[be.encrypt(v) for v in layout.pack_x(x[r : r + s0])] for r in range(0, a, s0)]
    rot = rotate_weights(be, layout, [be.encrypt(v) for v in layout.pack_wc(w)])
    for row in xb:
        diag_abt(be, layout, row, rot)
    abt = dict(be.counts)
    be.counts = dict.fromkeys(be.counts, 0)
    ah = [be.encrypt(layout.pack_ahat(np.ones((s0, layout.classes)))) for _ in xb]
    diag_atb(be, layout, ah, xb, 1.0)
    return abt, dict(be.counts)


@pytest.mark.parametrize("shape", list(TABLE7))
def test_masked_kernels_match_hetal_up_to_owner_side_packing(shape: tuple[int, int, int]) -> None:
    """HETAL's own unit shape (a, 32768/a) and structure: counts equal HETAL's formulas
    minus the packing the owner does for us (opcount's module docstring)."""
    a, b, c = shape
    lay = Layout(c, b, SLOTS, a, RowSum.MASKED)
    abt, atb = _count(lay, a)
    h_abt = opcount.hetal_diag_abt(a, b, c, a, SLOTS // a)
    h_atb = opcount.hetal_diag_atb(a, b, c, a, SLOTS // a)
    kb = -(-b // (SLOTS // a))
    assert (abt["cmult"], abt["mult"], abt["rot"]) == (h_abt.cmult, h_abt.mult, h_abt.rot - kb)
    assert (atb["cmult"], atb["mult"], atb["rot"]) == (h_atb.cmult - 1, h_atb.mult, h_atb.rot - 2)
    assert abt == opcount.ours_diag_abt(lay, a).as_dict()
    assert atb == opcount.ours_diag_atb(lay, a).as_dict()


@pytest.mark.parametrize("shape", [s for s in TABLE7 if s[2] <= SLOTS // s[0] // 2])
def test_zero_half_kernels_match_own_formula(shape: tuple[int, int, int]) -> None:
    a, b, c = shape
    lay = Layout(c, b, SLOTS, a)
    assert lay.rowsum == RowSum.ZERO_HALF
    abt, atb = _count(lay, a)
    assert abt == opcount.ours_diag_abt(lay, a).as_dict()
    assert atb == opcount.ours_diag_atb(lay, a).as_dict()
    # half-width feature blocks; log2(s1) row-sum rotations per pair instead of HETAL's 2 log2(s1)
    assert lay.kappa == -(-b // (lay.s1 // 2)) and abt["mult"] == len(lay.pairs) * lay.kappa
    row_sums = abt["rot"] - lay.kappa * (len(lay.pairs) - 1) - 2
    assert row_sums == len(lay.pairs) * int(np.log2(lay.s1))


@pytest.mark.parametrize("a", [64, 200])  # 200 > s0: several row blocks
def test_ours_with_several_row_blocks(a: int) -> None:
    lays = (Layout(10, 200), Layout(16, 40, s0=512), Layout(4, 70, slots=2048, s0=32))
    for lay in (*lays, Layout(2, 30, slots=1024, s0=32)):
        abt, atb = _count(lay, a)
        assert abt == opcount.ours_diag_abt(lay, a).as_dict()
        assert atb == opcount.ours_diag_atb(lay, a).as_dict()
        be = NumpyBackend(lay.slots, lay.depth)
        x = np.ones((a, lay.d))
        rot = rotate_weights(
            be, lay, [be.encrypt(v) for v in lay.pack_wc(np.ones((lay.classes, lay.d)))]
        )
        for r in range(0, a, lay.s0):
            diag_abt_compact(be, lay, [be.encrypt(v) for v in lay.pack_x(x[r : r + lay.s0])], rot)
        compact = opcount.ours_diag_abt_compact(lay, a).as_dict()
        assert be.counts == compact
        assert compact["rot"] < abt["rot"]  # about half the row-sum rotations
        be.counts = dict.fromkeys(be.counts, 0)
        xb = [[be.encrypt(v) for v in lay.pack_x(x[r : r + lay.s0])] for r in range(0, a, lay.s0)]
        ah = [be.encrypt(lay.pack_ahat(np.ones((lay.s0, lay.classes)))) for _ in xb]
        diag_atb(be, lay, ah, xb, 1.0, paired=True)
        paired = opcount.ours_diag_atb(lay, a, paired=True).as_dict()
        assert be.counts == paired
        if lay.rowsum == RowSum.ZERO_HALF and len(lay.pairs) > 2:
            assert paired["rot"] < atb["rot"]


@pytest.mark.parametrize(("shape", "slots"), [((128, 128, 4), SLOTS), ((256, 256, 8), 128)])
def test_jin_baseline_counts_and_values(shape: tuple[int, int, int], slots: int) -> None:
    a, b, c = shape
    rng = np.random.default_rng(4)
    x, w, am = rng.standard_normal((a, b)), rng.standard_normal((c, b)), rng.standard_normal((a, c))
    be = NumpyBackend(slots, 1)
    xc = [[be.encrypt(v) for v in chunk] for chunk in baseline.pack_columns(x, slots)]
    wr = [[be.encrypt(v) for v in row] for row in baseline.pack_replicated(w, slots)]
    zs = [baseline.jin_abt(be, chunk, wr) for chunk in xc]  # row chunks when a > slots
    assert be.counts["mult"] == opcount.jin_abt(a, b, c, slots).mult
    assert be.counts["rot"] == 0
    z = np.vstack([np.stack([be.decrypt(col).real for col in zc], 1) for zc in zs])[:a]
    assert np.abs(z - x @ w.T).max() < 1e-9
    be.counts = dict.fromkeys(be.counts, 0)
    ac = [[be.encrypt(v) for v in chunk] for chunk in baseline.pack_columns(am, slots)]
    g = baseline.jin_atb(be, ac, xc)
    assert _tuple(opcount.OpCount(be.counts["cmult"], be.counts["mult"], be.counts["rot"])) == (
        _tuple(opcount.jin_atb(a, b, c, slots))
    )
    got = np.array([[be.decrypt(g[j][k])[7].real for k in range(b)] for j in range(c)])
    assert np.abs(got - am.T @ x).max() < 1e-8


def test_matmul_bench_rows_on_seal() -> None:
    """The bench's rows: all four algorithms, counts = formulas, results correct."""
    from fedhe_cli.bench.hetal_matmul import run_matmul_bench

    shape = (64, 16, 2)
    rows = run_matmul_bench([shape], max_depth=2, measure_limit_s=30.0)
    by = {r["algo"]: r for r in rows}
    assert set(by) == {"DiagABT", "DiagATB", "JinABT", "JinATB", "DiagABT_compact"}
    lay, lay_atb = (opcount.best_layout(64, 2, 16, 8192, 2, k) for k in ("abt", "atb"))
    keys = ("cmult", "mult", "rot", "conj")
    assert {k: by["DiagABT"][k] for k in keys} == opcount.ours_diag_abt(lay, 64).as_dict()
    assert {k: by["DiagATB"][k] for k in keys} == (
        opcount.ours_diag_atb(lay_atb, 64, paired=True).as_dict()
    )
    assert {k: by["DiagABT_compact"][k] for k in keys} == (
        opcount.ours_diag_abt_compact(lay, 64).as_dict()
    )
    assert by["DiagATB"]["unit"] == f"{lay_atb.s0}x{lay_atb.s1}"
    assert by["JinATB"]["cpu_s_relin_each"] >= by["JinATB"]["cpu_s"]
    for algo in ("DiagABT", "DiagATB", "JinABT", "DiagABT_compact"):
        assert by[algo]["cpu_s_method"] == "measured"
        assert by[algo]["max_abs_err"] < 1e-3
        assert by[algo]["cpu_s"] > 0
    assert by["JinATB"]["cpu_s_method"] == "extrapolated"


def test_jin_atb_on_seal() -> None:
    """The baseline runs on SEAL too: replicated gradient entries, counts = formula."""
    import tenseal.sealapi as sa

    from fedhe_common.hetal.seal_backend import (
        ChainParams,
        SealBackend,
        build_context,
        galois_elements,
    )

    params = ChainParams.for_depth(1)
    ctx = build_context(params)
    kg = sa.KeyGenerator(ctx)
    pk, rk, gk = sa.PublicKey(), sa.RelinKeys(), sa.GaloisKeys()
    kg.create_public_key(pk)
    kg.create_relin_keys(rk)
    kg.create_galois_keys(galois_elements([1 << t for t in range(13)], params.n), gk)
    be = SealBackend(params, pk, rk, gk, context=ctx)
    dec = sa.Decryptor(ctx, kg.secret_key())
    rng = np.random.default_rng(6)
    a, b, c = 40, 3, 2
    x, am = rng.standard_normal((a, b)) / 4, rng.standard_normal((a, c)) / 4
    xc = [[be.encrypt(v) for v in baseline.pack_columns(x, be.slots)[0]]]
    ac = [[be.encrypt(v) for v in baseline.pack_columns(am, be.slots)[0]]]
    g = baseline.jin_atb(be, ac, xc)
    assert _tuple(opcount.OpCount(be.counts["cmult"], be.counts["mult"], be.counts["rot"])) == (
        _tuple(opcount.jin_atb(a, b, c, be.slots))
    )
    for j in range(c):
        for k in range(b):
            pt = sa.Plaintext()
            dec.decrypt(g[j][k].ct, pt)
            slots = be.decode(pt, g[j][k].f).real
            assert (
                np.abs(slots - (am.T @ x)[j, k]).max() < 2e-3
            )  # 8192 slots' noise summed (~1e-4 seen)
