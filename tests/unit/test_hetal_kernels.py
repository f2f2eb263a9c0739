"""HETAL kernels: layouts, numpy twin exactness, SEAL vs numpy twin, wire checks."""

from __future__ import annotations

import numpy as np
import pytest

from fedhe_client.transfer.keys import CheckingBackend as Owner
from fedhe_common.errors import InvalidArgumentError, InvalidCiphertextError, KeyMaterialError
from fedhe_common.hetal.backend import LevelError
from fedhe_common.hetal.kernels import (
    diag_abt,
    diag_abt_compact,
    diag_atb,
    required_steps,
    rotate_weights,
)
from fedhe_common.hetal.layout import Layout, RowSum
from fedhe_common.hetal.numpy_backend import NumpyBackend
from fedhe_common.hetal.seal_backend import (
    CT_MAGIC,
    ChainParams,
    SealBackend,
    galois_elements,
)


def make_owner(params: ChainParams, steps: list[int]) -> Owner:
    return Owner(params, steps)


def _run(be, layout: Layout, x: np.ndarray, w: np.ndarray, a: np.ndarray, coef: float):  # type: ignore[no-untyped-def]
    s0 = layout.s0
    nblk = layout.row_blocks(len(x))
    xb = [[be.encrypt(v) for v in layout.pack_x(x[r * s0 : (r + 1) * s0])] for r in range(nblk)]
    rot = rotate_weights(be, layout, [be.encrypt(v) for v in layout.pack_wc(w)])
    zs = [diag_abt(be, layout, xb[r], rot) for r in range(nblk)]
    ah = [be.encrypt(layout.pack_ahat(a[r * s0 : (r + 1) * s0])) for r in range(nblk)]
    gs = diag_atb(be, layout, ah, xb, coef)
    return zs, gs


LAYOUTS = [
    Layout(10, 64),  # the prototype's 64 x 128 block, one feature block
    Layout(10, 200),  # 4 feature blocks
    Layout(3, 50, slots=1024, s0=32),
    Layout(16, 40, slots=8192, s0=512),  # cp = s1: HETAL's masked row sum
    Layout(10, 64, rowsum=RowSum.MASKED),
    Layout(10, 768),  # ViT/MPNet features: 12 feature blocks
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: f"{lay.rowsum}-{lay.s0}-{lay.d}")
def test_numpy_twin_is_exact(layout: Layout) -> None:
    rng = np.random.default_rng(1)
    n = 2 * layout.s0 - 3
    x, w = rng.standard_normal((n, layout.d)), rng.standard_normal((layout.classes, layout.d))
    a = rng.standard_normal((n, layout.classes))
    be = NumpyBackend(layout.slots, layout.depth)
    zs, gs = _run(be, layout, x, w, a, -0.25)
    for r, zc in enumerate(zs):
        rows = min(layout.s0, n - r * layout.s0)
        ref = x[r * layout.s0 : r * layout.s0 + rows] @ w.T
        assert np.abs(be.decrypt(zc) - layout.tile_z(ref)).max() < 1e-10  # all columns tiled
        assert zc.lvl == 0
    g_ref = -0.25 * a.T @ x
    tiled = layout.pack_w(g_ref)
    for f, gc in enumerate(gs):
        assert np.abs(be.decrypt(gc) - tiled[f]).max() < 1e-10  # W's own layout, every row
    assert np.abs(layout.unpack_w([be.decrypt(g) for g in gs]) - g_ref).max() < 1e-10
    rot = rotate_weights(be, layout, [be.encrypt(v) for v in layout.pack_wc(w)])
    xs = [be.encrypt(v) for v in layout.pack_x(x[: layout.s0])]
    zc = diag_abt_compact(be, layout, xs, rot)
    z_ref = x[: layout.s0] @ w.T
    assert np.abs(layout.unpack_z_compact(be.decrypt(zc), layout.s0) - z_ref).max() < 1e-10
    assert zc.lvl == layout.depth - 2
    s0, nb = layout.s0, layout.row_blocks(n)
    xb = [[be.encrypt(v) for v in layout.pack_x(x[r * s0 : (r + 1) * s0])] for r in range(nb)]
    ah = [be.encrypt(layout.pack_ahat(a[r * s0 : (r + 1) * s0])) for r in range(nb)]
    gp = diag_atb(be, layout, ah, xb, -0.25, paired=True)
    assert np.abs(layout.unpack_w([be.decrypt(g) for g in gp]) - g_ref).max() < 1e-10


def test_layout_d768_has_12_feature_blocks_and_closes() -> None:
    lay = Layout(10, 768)
    assert (lay.rowsum, lay.width, lay.kappa, lay.depth) == (RowSum.ZERO_HALF, 64, 12, 2)
    w = np.random.default_rng(2).standard_normal((10, 768))
    assert np.array_equal(lay.unpack_w([v.astype(complex) for v in lay.pack_w(w)]), w)
    assert Layout(16, 40, s0=512).rowsum == RowSum.MASKED


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"classes": 20, "d": 10, "s0": 512}, "padded classes"),
        ({"classes": 10, "d": 10, "s0": 48}, "powers of two"),
        ({"classes": 0, "d": 10}, "classes >= 1"),
        ({"classes": 32, "d": 8, "slots": 1024, "s0": 16}, "block rows"),
    ],
)
def test_layout_rejects_bad_geometry(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        Layout(**kwargs)  # type: ignore[arg-type]


def test_packing_rejects_bad_input() -> None:
    lay = Layout(10, 64)
    with pytest.raises(InvalidArgumentError):
        lay.pack_x(np.zeros((65, 64)))
    with pytest.raises(InvalidArgumentError):
        lay.pack_w(np.zeros((10, 63)))
    with pytest.raises(InvalidArgumentError):
        lay.pack_ahat(np.full((4, 10), np.nan))


def test_galois_elements_are_elements_not_steps() -> None:
    n = 16384
    elts = galois_elements([1, -64, 8192, 0], n)
    assert elts == sorted({3, pow(3, n // 2 - 64, 2 * n), 2 * n - 1})
    assert galois_elements([5], n, conj=False) == [pow(3, 5, 2 * n)]


@pytest.mark.parametrize("layout", LAYOUTS[:5], ids=lambda lay: f"{lay.rowsum}-{lay.s0}-{lay.d}")
def test_required_steps_are_exactly_the_steps_used(layout: Layout) -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((layout.s0, layout.d))
    w, a = (
        rng.standard_normal((layout.classes, layout.d)),
        rng.standard_normal((64, layout.classes)),
    )
    for kernel in ("abt", "abt_compact", "atb", "atb_paired"):
        be = NumpyBackend(layout.slots, layout.depth)
        xs = [be.encrypt(v) for v in layout.pack_x(x)]
        if kernel.startswith("abt"):
            rot = rotate_weights(be, layout, [be.encrypt(v) for v in layout.pack_wc(w)])
            fn = diag_abt if kernel == "abt" else diag_abt_compact
            fn(be, layout, xs, rot)
        else:
            ah = [be.encrypt(layout.pack_ahat(a[: layout.s0]))]
            diag_atb(be, layout, ah, [xs], 1.0, paired=kernel == "atb_paired")
        used = {s % layout.slots for s in be.steps_used}
        need = {s % layout.slots for s in required_steps(layout, (kernel,))}
        assert used == need, kernel


def test_required_steps_prototype_layout() -> None:
    steps = required_steps(Layout(10, 64))
    # row sums, un-shift, weight diagonals, P - Y diagonals, column sums: 22 (+ conj = 23 keys)
    expected = {1, 2, 4, 8, 16, 32, 64, -64} | {k * 128 for k in range(2, 16, 2)}
    expected |= set(range(2, 16, 2)) | {128 << t for t in range(6)}
    assert set(steps) == expected and len(steps) == 22


# -- real SEAL ---------------------------------------------------------------------------
SEAL_LAYOUTS = [Layout(10, 100), Layout(16, 40, s0=512)]


@pytest.fixture(scope="module")
def owners() -> dict[int, Owner]:
    out = {}
    for depth in (2, 3):
        lays = [lay for lay in SEAL_LAYOUTS if lay.depth == depth]
        kernels = ("abt", "abt_compact", "atb", "atb_paired")
        steps = sorted({s for lay in lays for s in required_steps(lay, kernels)})
        out[depth] = make_owner(ChainParams.for_depth(depth), steps)
    return out


@pytest.mark.parametrize("layout", SEAL_LAYOUTS, ids=lambda lay: str(lay.rowsum))
def test_seal_matches_numpy_twin(layout: Layout, owners: dict[int, Owner]) -> None:
    owner = owners[layout.depth]
    rng = np.random.default_rng(3)
    n = layout.s0 + 5
    x = rng.standard_normal((n, layout.d)) / 8
    w, a = (
        rng.standard_normal((layout.classes, layout.d)),
        rng.standard_normal((n, layout.classes)) / 4,
    )
    twin = NumpyBackend(layout.slots, layout.depth)
    zs_he, gs_he = _run(owner.be, layout, x, w, a, -0.5)
    zs_np, gs_np = _run(twin, layout, x, w, a, -0.5)
    for be in (owner.be, twin):
        rot = rotate_weights(be, layout, [be.encrypt(v) for v in layout.pack_wc(w)])
        xs = [be.encrypt(v) for v in layout.pack_x(x[: layout.s0])]
        (zs_he if be is owner.be else zs_np).append(diag_abt_compact(be, layout, xs, rot))
        ah = [be.encrypt(layout.pack_ahat(a[: layout.s0]))]
        xb = [[be.encrypt(v) for v in layout.pack_x(x[: layout.s0])]]
        (gs_he if be is owner.be else gs_np).extend(diag_atb(be, layout, ah, xb, 2.0, paired=True))
    for he, tw in zip(zs_he + gs_he, zs_np + gs_np, strict=True):
        assert np.abs(owner.decrypt(he) - twin.decrypt(tw)).max() < 1e-4
        assert owner.be.level(he) == twin.level(tw)
    assert owner.be.factor_mismatch == 0.0  # every addition was exact in scale
    assert owner.be.counts == twin.counts


def test_seal_wire_round_trip_and_rejections(owners: dict[int, Owner]) -> None:
    owner = owners[2]
    be = owner.be
    v = np.linspace(-1, 1, be.slots)
    ct = be.mul_plain(be.encrypt(v), 0.5, target_factor=1.0)
    blob = be.serialize(ct)
    back = be.deserialize(blob)
    assert be.level(back) == be.depth - 1
    assert np.abs(owner.decrypt(back).real - 0.5 * v).max() < 1e-5
    with pytest.raises(InvalidCiphertextError, match="exceeds"):
        be.deserialize(blob[:12] + b"\0" * (be.max_raw_ct_bytes + 1))
    with pytest.raises(InvalidCiphertextError, match="magic"):
        be.deserialize(b"XXXX" + blob[4:])
    with pytest.raises(InvalidCiphertextError, match="factor"):
        be.deserialize(CT_MAGIC + np.float64(np.inf).tobytes() + blob[12:])
    with pytest.raises(InvalidCiphertextError):
        be.deserialize(blob[:-10])
    other = owners[3].be  # another chain: SEAL's parms_id check refuses it
    with pytest.raises(InvalidCiphertextError):
        be.deserialize(other.serialize(other.encrypt(v)))


def test_seal_level_and_key_errors(owners: dict[int, Owner]) -> None:
    be = owners[2].be
    c = be.encrypt(np.ones(be.slots))
    c = be.mul_plain(be.mul_plain(c, 1.0), 1.0)
    with pytest.raises(LevelError):
        be.mul_plain(c, 1.0)
    sparse = make_owner(ChainParams.for_depth(1), [5]).be  # SEAL would compose 3 = 4 - 1
    with pytest.raises(KeyMaterialError, match="rotation by 3"):
        sparse.rot(sparse.encrypt(np.ones(sparse.slots)), 3)
    bare = SealBackend(ChainParams.for_depth(2))
    with pytest.raises(KeyMaterialError, match="public key"):
        bare.encrypt(np.ones(bare.slots))


def test_kernel_pool_equals_serial(owners: dict[int, Owner]) -> None:
    """Two spawned workers give bit-identical ciphertexts; the only extra work is each
    worker rotating its own copy of the weights (ABT) / of A^ (ATB)."""
    from fedhe_common.hetal.parallel import KernelPool
    from fedhe_common.hetal.seal_backend import key_bytes

    owner = owners[2]
    be, lay = owner.be, Layout(10, 100)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3 * 64, 100)) / 8
    w, a = rng.standard_normal((10, 100)), rng.standard_normal((3 * 64, 10)) / 4
    xb = [[be.encrypt(v) for v in lay.pack_x(x[r : r + 64])] for r in range(0, 192, 64)]
    wc = [be.encrypt(v) for v in lay.pack_wc(w)]
    ah = [be.encrypt(lay.pack_ahat(a[r : r + 64])) for r in range(0, 192, 64)]
    rot = rotate_weights(be, lay, wc)
    serial = [diag_abt(be, lay, row, rot) for row in xb] + diag_atb(be, lay, ah, xb, -0.5)
    assert be.rk is not None and be.gk is not None
    with KernelPool(be.params, key_bytes(be.rk), key_bytes(be.gk), workers=2) as pool:
        par = pool.diag_abt(be, lay, xb, wc) + pool.diag_atb(be, lay, ah, xb, -0.5)
        counts = dict(pool.counts)
        zc = pool.diag_abt(be, lay, xb[:1], wc, compact=True)
        gp = pool.diag_atb(be, lay, ah, xb, -0.5, paired=True)
    assert np.array_equal(
        owner.decrypt(zc[0]), owner.decrypt(diag_abt_compact(be, lay, xb[0], rot))
    )
    g_serial = diag_atb(be, lay, ah, xb, -0.5, paired=True)
    for s_ct, p_ct in zip(g_serial, gp, strict=True):
        assert np.array_equal(owner.decrypt(s_ct), owner.decrypt(p_ct))
    assert len(par) == len(serial) == 3 + lay.kappa
    for s_ct, p_ct in zip(serial, par, strict=True):
        assert np.array_equal(owner.decrypt(s_ct), owner.decrypt(p_ct))
    p = len(lay.pairs)
    # ABT split 2 + 1 row blocks, ATB split 1 + 1 feature blocks (kappa = 2)
    extra_rot = lay.kappa * (p - 1) + len(xb) * (p - 1)
    from fedhe_common.hetal import opcount

    serial_rot = opcount.ours_diag_abt(lay, 192).rot + opcount.ours_diag_atb(lay, 192).rot
    assert counts["rot"] == serial_rot + extra_rot
    assert counts["mult"] == 2 * len(lay.pairs) * len(xb) * lay.kappa


def test_hetal_modules_hold_no_secret_key_code() -> None:
    """The server imports these modules: no KeyGenerator, Decryptor or SecretKey in them."""
    import ast
    import importlib
    import inspect

    banned = {"KeyGenerator", "Decryptor", "SecretKey", "secret_key"}
    names = ["backend", "seal_backend", "numpy_backend", "layout", "kernels", "opcount", "chain"]
    names += ["baseline", "parallel"]
    for name in names:
        tree = ast.parse(inspect.getsource(importlib.import_module(f"fedhe_common.hetal.{name}")))
        used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        used |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert not used & banned, (name, used & banned)


def _rewrap(blob: bytes, frame: bytes) -> bytes:
    """A HETAL blob whose SEAL payload is ``frame`` (zstd), header fixed up to match."""
    from fedhe_common.crypto import sealbytes

    _, _, major, minor, _, _, _ = sealbytes.read_header(blob[12:])
    head = sealbytes.SEAL_HEADER.pack(
        sealbytes.SEAL_MAGIC, 16, major, minor, sealbytes.COMPR_ZSTD, 0, 16 + len(frame)
    )
    return blob[:12] + head + frame


def test_seal_deserialize_bounds_zstd(owners: dict[int, Owner]) -> None:
    """Declared sizes must be a ciphertext size of the chain; bombs and trailers refused."""
    import zstandard

    from fedhe_common.crypto import sealbytes

    be = owners[2].be
    blob = be.serialize(be.encrypt(np.ones(be.slots)))
    members = sealbytes.to_uncompressed(blob[12:])[16:]
    ok = zstandard.ZstdCompressor(write_content_size=True).compress(members)
    assert np.allclose(owners[2].decrypt(be.deserialize(_rewrap(blob, ok))).real, 1.0, atol=1e-5)
    with pytest.raises(InvalidCiphertextError, match=r"declared size|zstd"):
        be.deserialize(_rewrap(blob, ok + zstandard.ZstdCompressor().compress(b"x")))
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(64 << 20))
    with pytest.raises(InvalidCiphertextError, match="inflates past"):
        be.deserialize(_rewrap(blob, bomb))
    longer = zstandard.ZstdCompressor(write_content_size=True).compress(members + b"\0" * 64)
    with pytest.raises(InvalidCiphertextError):
        be.deserialize(_rewrap(blob, longer))
