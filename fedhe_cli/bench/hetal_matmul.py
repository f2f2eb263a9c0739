"""Encrypted matrix products on SEAL (N = 2^14): DiagABT / DiagATB vs Jin et al.'s packing.

``run_matmul_bench`` is the "matmul" part of ``fedhe bench hetal``: one row per shape
(a, b, c) of HETAL's Table 7 and algorithm, with the operation counts the kernels ran
and the process CPU time. The bench plays both roles in one process (it makes the keys,
encrypts, evaluates, and decrypts to check the result); only evaluation is timed.

DiagABT / DiagATB are always measured. Jin et al. needs b c ciphertext products (and
b c log2(slots) rotations for ATB) and b (c + 1) ciphertexts in memory; a row is
measured when its estimate is under ``measure_limit_s``, otherwise its ``cpu_s`` is
its exact operation count times per-operation costs measured in the same run on the
same chain (products, relinearisations, rotations), and the row says
``"cpu_s_method": "extrapolated"``. Both sides close each inner product with one
relinearisation (``mul_sum``). Jin runs on its own
minimal chain (depth 1), which favours the baseline.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedhe_client.transfer.keys import CheckingBackend
from fedhe_common.hetal import baseline, opcount
from fedhe_common.hetal.kernels import (
    diag_abt,
    diag_abt_compact,
    diag_atb,
    required_steps,
    rotate_weights,
)
from fedhe_common.hetal.layout import Layout
from fedhe_common.hetal.parallel import KernelPool
from fedhe_common.hetal.seal_backend import (
    ChainParams,
    SealCT,
    key_bytes,
)

TABLE7: tuple[tuple[int, int, int], ...] = (
    (128, 128, 4),
    (256, 256, 8),
    (512, 769, 4),
    (1024, 769, 8),
    (2048, 769, 16),
)
ALGOS = ("DiagABT", "DiagATB", "JinABT", "JinATB", "DiagABT_compact")
MAX_JIN_CIPHERTEXTS = 4000  # b (c + 1) encryptions for a measured JinABT
Log = Callable[[str], None]


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


def _row(
    shape: tuple[int, int, int],
    algo: str,
    ops: dict[str, int],
    cpu: float,
    method: str,
    **extra: Any,
) -> dict[str, Any]:
    a, b, c = shape
    return {
        "a": a,
        "b": b,
        "c": c,
        "algo": algo,
        "cmult": ops["cmult"],
        "mult": ops["mult"],
        "rot": ops["rot"],
        "conj": ops.get("conj", 0),
        "cpu_s": round(cpu, 3),
        "cpu_s_method": method,
        **extra,
    }


def _parallel(pool: KernelPool, run: Callable[[], object], workers: int) -> dict[str, float | int]:
    w0, c0, crit0, cpu_w0 = time.time(), time.process_time(), pool.critical_cpu_s, pool.worker_cpu_s
    run()
    return {
        "workers": workers,
        "wall_s": round(time.time() - w0, 3),
        "cpu_s": round(time.process_time() - c0 + pool.worker_cpu_s - cpu_w0, 3),
        "critical_cpu_s": round(pool.critical_cpu_s - crit0, 3),
    }


def bench_diag(
    shape: tuple[int, int, int],
    layout: Layout,
    rng: np.random.Generator,
    workers: int = 1,
    kernels: Sequence[str] = ("abt", "atb"),
) -> list[dict[str, Any]]:
    """Measured DiagABT + DiagABT_compact (weights rotated once + every row block;
    ``"abt"`` in ``kernels``) and/or DiagATB (paired; ``"atb"``) on one shape.

    With ``workers`` > 1 the rows also get ``"parallel"``: the same products through a
    :class:`KernelPool` (wall seconds, total CPU of parent + workers, and the busiest
    worker's CPU, which is the wall time on otherwise idle cores).
    """
    a, b, c = shape
    steps = required_steps(layout, ("abt", "abt_compact", "atb_paired"))
    owner = CheckingBackend(ChainParams.for_depth(layout.depth), steps)
    be, s0 = owner.be, layout.s0
    x = rng.uniform(-1, 1, (a, b)) / np.sqrt(b)
    w, am = rng.uniform(-1, 1, (c, b)), rng.uniform(-1, 1, (a, c))
    xb = [[be.encrypt(v) for v in layout.pack_x(x[r : r + s0])] for r in range(0, a, s0)]
    extra = {
        "unit": f"{layout.s0}x{layout.s1}",
        "rowsum": str(layout.rowsum),
        "depth": layout.depth,
    }
    rows: dict[str, dict[str, Any]] = {}
    blocks = [min(s0, a - i * s0) for i in range(len(xb))]

    def timed(fn: Callable[[], Any]) -> tuple[Any, float, dict[str, int]]:
        c0, t0 = dict(be.counts), time.process_time()
        out = fn()
        return out, time.process_time() - t0, _delta(c0, be.counts)

    if "abt" in kernels:
        wc = [be.encrypt(v) for v in layout.pack_wc(w)]
        for algo, kern, unpack in (
            ("DiagABT", diag_abt, layout.unpack_z),
            ("DiagABT_compact", diag_abt_compact, layout.unpack_z_compact),
        ):

            def run(kern: Any = kern) -> list[SealCT]:
                rotated = rotate_weights(be, layout, wc)
                return [kern(be, layout, row, rotated) for row in xb]

            zs, cpu, ops = timed(run)
            z = np.vstack([unpack(owner.decrypt(zc), n) for zc, n in zip(zs, blocks, strict=True)])
            err = float(np.abs(z - x @ w.T).max())
            rows[algo] = _row(shape, algo, ops, cpu, "measured", max_abs_err=err, **extra)
    if "atb" in kernels:
        ah = [be.encrypt(layout.pack_ahat(am[r : r + s0])) for r in range(0, a, s0)]
        gs, cpu, ops = timed(lambda: diag_atb(be, layout, ah, xb, 1.0, paired=True))
        g = layout.unpack_w([owner.decrypt(gc) for gc in gs])
        err = float(np.abs(g - am.T @ x).max())
        rows["DiagATB"] = _row(shape, "DiagATB", ops, cpu, "measured", max_abs_err=err, **extra)
    if workers > 1:
        assert be.rk is not None and be.gk is not None
        with KernelPool(be.params, key_bytes(be.rk), key_bytes(be.gk), workers) as pool:
            pool.diag_abt(be, layout, xb[:1], [be.encrypt(v) for v in layout.pack_wc(w)])  # warm
            if "abt" in kernels:
                rows["DiagABT"]["parallel"] = _parallel(
                    pool, lambda: pool.diag_abt(be, layout, xb, wc), workers
                )
            if "atb" in kernels:
                rows["DiagATB"]["parallel"] = _parallel(
                    pool, lambda: pool.diag_atb(be, layout, ah, xb, 1.0, paired=True), workers
                )
    return list(rows.values())


def jin_unit_costs(owner: CheckingBackend, repeats: int = 6) -> dict[str, float]:
    """CPU seconds of Jin's building blocks on its chain (top level): one more product in
    an inner product (``prod``), the relinearisation + rescale closing it (``relin``),
    and a rotation + add one level down (``rot``, where its ATB rotates)."""
    be = owner.be
    u = be.encrypt(np.full(be.slots, 0.5))
    many = [(u, u)] * 16

    def timed(fn: Callable[[], object]) -> float:
        fn()
        t0 = time.process_time()
        for _ in range(repeats):
            fn()
        return (time.process_time() - t0) / repeats

    t_one = timed(lambda: be.mul_sum(many[:1]))
    t_many = timed(lambda: be.mul_sum(many))
    prod = max(0.0, (t_many - t_one) / 15)
    low = be.mul(u, u)
    t_rot = timed(lambda: be.add(low, be.rot(low, 1)))
    return {"prod": prod, "relin": max(0.0, t_one - prod), "rot": t_rot}


def bench_jin(
    shape: tuple[int, int, int], rng: np.random.Generator, measure_limit_s: float
) -> list[dict[str, Any]]:
    """JinABT / JinATB: exact counts; CPU time measured or extrapolated (see module doc)."""
    a, b, c = shape
    params = ChainParams.for_depth(1)
    owner = CheckingBackend(params, [1 << t for t in range(int(np.log2(params.slots)))])
    be = owner.be
    unit = jin_unit_costs(owner)
    rows = []
    for algo, count in (
        ("JinABT", opcount.jin_abt(a, b, c, be.slots)),
        ("JinATB", opcount.jin_atb(a, b, c, be.slots)),
    ):
        relins = c if algo == "JinABT" else b * c  # one per output ciphertext
        est = count.mult * unit["prod"] + relins * unit["relin"] + count.rot * unit["rot"]
        each = count.mult * (unit["prod"] + unit["relin"]) + count.rot * unit["rot"]
        model = {
            "cpu_s_model": round(est, 3),
            # as HETAL benchmarked it: every product relinearised (always extrapolated)
            "cpu_s_relin_each": round(each, 3),
            "depth": 1,
            "unit": f"{be.slots}x1",
        }
        small = b * (c + 1) <= MAX_JIN_CIPHERTEXTS and a <= be.slots
        if algo == "JinABT" and est <= measure_limit_s and small:
            cpu, ops, err = _measure_jin_abt(owner, a, b, c, rng)
            rows.append(_row(shape, algo, ops, cpu, "measured", max_abs_err=err, **model))
        else:
            rows.append(_row(shape, algo, count.as_dict(), est, "extrapolated", **model))
    return rows


def _measure_jin_abt(
    owner: CheckingBackend, a: int, b: int, c: int, rng: np.random.Generator
) -> tuple[float, dict[str, int], float]:
    """Jin's ABT on SEAL, one class at a time (its b weight ciphertexts encrypted untimed)."""
    be = owner.be
    x = rng.uniform(-1, 1, (a, b)) / np.sqrt(b)
    w = rng.uniform(-1, 1, (c, b))
    xc = [be.encrypt(v) for v in baseline.pack_columns(x, be.slots)[0]]
    cpu, c0, cols = 0.0, dict(be.counts), []
    for j in range(c):
        wr = [be.encrypt(v) for v in baseline.pack_replicated(w[j : j + 1], be.slots)[0]]
        t0 = time.process_time()
        (zj,) = baseline.jin_abt(be, xc, [wr])
        cpu += time.process_time() - t0
        cols.append(owner.decrypt(zj).real[:a])
    err = float(np.abs(np.stack(cols, 1) - x @ w.T).max())
    return cpu, _delta(c0, be.counts), err


def run_matmul_bench(
    shapes: Sequence[tuple[int, int, int]] = TABLE7,
    *,
    max_depth: int = 3,
    measure_limit_s: float = 6.0,
    seed: int = 0,
    workers: int = 1,
    log: Log | None = None,
) -> list[dict[str, Any]]:
    """Rows {"a","b","c","algo","cmult","mult","rot","cpu_s", "cpu_s_method", ...} for
    DiagABT, DiagATB, JinABT, JinATB (and DiagABT_compact, the variant for an owner who
    decrypts Z) on every shape (SEAL, N = 2^14, process CPU time). Jin rows also carry
    ``cpu_s_relin_each``: the baseline as HETAL ran it, every product relinearised.

    Each Diag kernel runs on its :func:`~fedhe_common.hetal.opcount.best_layout` (block
    height minimising that kernel's modelled cost, depth <= ``max_depth``; the row's
    ``unit`` says which), on the minimal chain. A training step uses one joint layout
    for both (``kernel="step"``), which can differ at the largest shapes.
    """
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for shape in shapes:
        a, b, c = shape
        t0 = time.time()
        best = {k: opcount.best_layout(a, c, b, 8192, max_depth, k) for k in ("abt", "atb")}
        if best["atb"] == best["abt"]:
            diag = bench_diag(shape, best["abt"], rng, workers)
        else:
            diag = bench_diag(shape, best["abt"], rng, workers, ("abt",))
            diag += bench_diag(shape, best["atb"], rng, workers, ("atb",))
        new = diag + bench_jin(shape, rng, measure_limit_s)
        rows += new
        if log is not None:
            speed = {r["algo"]: r["cpu_s"] for r in new}
            log(
                f"{shape}: DiagABT {speed['DiagABT']:.2f}s (compact "
                f"{speed['DiagABT_compact']:.2f}s) vs JinABT {speed['JinABT']:.2f}s, "
                f"DiagATB {speed['DiagATB']:.2f}s vs JinATB {speed['JinATB']:.2f}s "
                f"(units {best['abt'].s0}x{best['abt'].s1} / {best['atb'].s0}x{best['atb'].s1}; "
                f"{time.time() - t0:.0f}s wall)"
            )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m fedhe_cli.bench.hetal_matmul [--shapes a,b,c ...] [--json]``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--shapes", nargs="*", default=None, help="a,b,c triples (default: Table 7)")
    ap.add_argument("--max-depth", type=int, default=3)
    ap.add_argument("--measure-limit-s", type=float, default=6.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    shapes = (
        [tuple(int(v) for v in s.split(",")) for s in args.shapes] if args.shapes else list(TABLE7)
    )
    rows = run_matmul_bench(
        shapes,  # type: ignore[arg-type]
        max_depth=args.max_depth,
        measure_limit_s=args.measure_limit_s,
        workers=args.workers,
        log=None if args.json else print,
    )
    if args.json:
        print(json.dumps({"matmul": rows}, indent=1))
        return
    print(
        "| (a, b, c) | algo | CMult | Mult | Rot | conj | cpu_s | method | unit | max err |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        err = f"{r['max_abs_err']:.1e}" if "max_abs_err" in r else "-"
        print(
            f"| {(r['a'], r['b'], r['c'])} | {r['algo']} | {r['cmult']} | {r['mult']} | {r['rot']}"
            f" | {r['conj']} | {r['cpu_s']:.2f} | {r['cpu_s_method']} | {r['unit']} | {err} |"
        )
    for r in rows:
        if "parallel" in r:
            print(
                f"{(r['a'], r['b'], r['c'])} {r['algo']} serial cpu {r['cpu_s']}s; {r['parallel']}"
            )


if __name__ == "__main__":
    main()
