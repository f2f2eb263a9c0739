"""``fedhe bench hetal``: encrypted transfer learning per task and mode, plus the matmul table.

Each (task, mode) row runs in its own spawned process (so ``peak_rss_mb`` is that row's
alone) through :func:`fedhe_cli.hetal_local.run_transfer`: real SEAL, the owner and the
server's trainer exchanging the protocol messages, thread CPU time per side, bytes both
ways (``bytes_up``: owner to server). The 768-d row times a few mode-client steps on
random-projection features and extrapolates an MNIST-size epoch (52,500 samples).
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from fedhe_common.hetal.params import SoftmaxMode, TransferParams, default_chain

DEFAULT_TASKS = ("digits", "digits-transfer")
MODES = ("client", "server")
TIMING_TASK = "random-projection-768"
MNIST_TRAIN = 52_500
DEFAULT_EPOCHS = {"client": 10, "server": 5}
TIMING_STEPS = 3
Log = Callable[[str], None]
RESULT_KEYS = (
    "task",
    "mode",
    "n_train",
    "d",
    "classes",
    "batch",
    "epochs_run",
    "server_cpu_s_per_step",
    "client_cpu_s_per_step",
    "bytes_up_per_step",
    "bytes_down_per_step",
    "acc_he",
    "acc_plain_same_algo",
    "acc_sklearn",
    "peak_rss_mb",
)


@dataclass(frozen=True)
class View:
    """The owner's splits under the names ``run_transfer`` reads."""

    train_x: Any
    train_y: Any
    val_x: Any
    val_y: Any
    test_x: Any
    test_y: Any


def load_task(name: str, seed: int = 0) -> tuple[View, int]:
    """A built-in transfer task's splits and class count."""
    from fedhe_client.transfer.datasets import load_transfer_task

    s = load_transfer_task(name, seed)
    return View(s.x_train, s.y_train, s.x_val, s.y_val, s.x_test, s.y_test), s.classes


def task_params(
    view: View, classes: int, mode: str, epochs: int | None, seed: int = 0, workers: int = 1
) -> TransferParams:
    """The bench's parameters: job defaults, epochs per mode unless given."""
    from fedhe_client.transfer.preprocess import Preprocessor

    features = Preprocessor.fit(view.train_x).out_features
    return TransferParams(
        mode=SoftmaxMode(mode),
        classes=classes,
        features=features,
        max_epochs=epochs or DEFAULT_EPOCHS[mode],
        patience=3,
        seed=seed,
        chain=default_chain(mode),
        workers=workers,
    )


def run_row(
    task: str, mode: str, epochs: int | None, max_steps: int | None, workers: int = 1
) -> str:
    """One (task, mode) row as JSON (runs in a spawned process)."""
    from fedhe_cli.hetal_local import run_transfer

    view, classes = load_task(task)
    params = task_params(view, classes, mode, epochs, workers=workers)
    res = run_transfer(params, view, max_steps=max_steps)
    val_cpu = sum(v.server_cpu_s for v in res.validations)
    row: dict[str, Any] = {
        "task": task,
        "mode": mode,
        "n_train": res.n_train,
        "d": params.features,
        "classes": classes,
        "batch": params.batch,
        "epochs_run": res.epochs_run,
        "server_cpu_s_per_step": res.per_step("server_cpu_s"),
        "client_cpu_s_per_step": res.per_step("client_cpu_s"),
        "bytes_up_per_step": res.per_step("bytes_up"),
        "bytes_down_per_step": res.per_step("bytes_down"),
        "acc_he": res.acc_he,
        "acc_plain_same_algo": res.acc_plain_same_algo,
        "acc_sklearn": res.acc_sklearn,
        "peak_rss_mb": res.peak_rss_mb,
        "steps_run": res.steps_run,
        "best_epoch": res.best_epoch,
        "max_abs_w_diff_vs_twin": res.max_abs_w_diff,
        "validation_server_cpu_s_per_epoch": val_cpu / max(1, len(res.validations)),
        "keygen_cpu_s": res.setup_s["keygen_cpu_s"],
        "encrypt_cpu_s": res.setup_s["encrypt_cpu_s"],
        "eval_key_bytes": res.bytes_setup["eval_keys"],
        "dataset_bytes": res.bytes_setup["dataset"],
        "val_acc_per_epoch": res.val_acc,
        "chain_bits": list(params.chain.coeff_bits),
        "kernels": params.kernels,
        "workers": params.workers,
        "server_critical_s_per_step": res.per_step("server_critical_s"),
    }
    if task == TIMING_TASK:
        per_sample = row["server_cpu_s_per_step"] / params.batch
        row["server_cpu_s_per_sample_epoch"] = per_sample
        row["mnist_epoch_extrapolated_s"] = per_sample * MNIST_TRAIN
        # Wall time on 2 idle cores: the measured critical path (the trainer's thread plus,
        # per parallel kernel call, its busiest worker); with one worker, all of the CPU.
        crit = row["server_critical_s_per_step"] / params.batch
        row["mnist_epoch_extrapolated_s_2_cores"] = crit * MNIST_TRAIN
    return json.dumps(row)


def _spawned(
    task: str, mode: str, epochs: int | None, max_steps: int | None, workers: int = 1
) -> dict[str, Any]:
    # Not multiprocessing.Pool: its daemonic workers may not start the KernelPool's.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        text = pool.submit(run_row, task, mode, epochs, max_steps, workers).result()
    result: dict[str, Any] = json.loads(text)
    return result


@dataclass(frozen=True)
class BenchPlan:
    """What one ``fedhe bench hetal`` run covers."""

    tasks: Sequence[str] = DEFAULT_TASKS
    modes: Sequence[str] = MODES
    epochs: int | None = None
    max_steps: int | None = None
    matmul: bool = True
    timing_768: bool = True
    workers: int = 1

    def quick(self) -> BenchPlan:
        """A plan without the slow extras (tests)."""
        return replace(self, matmul=False, timing_768=False)


def run_hetal_bench(plan: BenchPlan, log: Log | None = None) -> dict[str, Any]:
    """{"results": [...], "matmul": [...]} per the issue's contract (extra keys allowed)."""
    say = log or (lambda _m: None)
    results = []
    for task in plan.tasks:
        for mode in plan.modes:
            say(f"hetal bench: {task} mode {mode} ...")
            row = _spawned(task, mode, plan.epochs, plan.max_steps, plan.workers)
            say(
                f"  acc HE {row['acc_he']:.4f} twin {row['acc_plain_same_algo']:.4f} "
                f"server {row['server_cpu_s_per_step']:.2f} s/step"
            )
            results.append(row)
    if plan.timing_768:
        say(f"hetal bench: {TIMING_TASK} mode client, {TIMING_STEPS} steps ...")
        steps = min(plan.max_steps or TIMING_STEPS, TIMING_STEPS)
        results.append(_spawned(TIMING_TASK, "client", 1, steps, plan.workers))
    matmul: list[dict[str, Any]] = []
    if plan.matmul:
        from fedhe_cli.bench.hetal_matmul import run_matmul_bench

        say("hetal bench: matmul shapes of HETAL's Table 7 ...")
        matmul = run_matmul_bench(log=say)
    return {"results": results, "matmul": matmul}


# -- the command (registered on ``fedhe bench`` in fedhe_cli/bench_cli.py) ----------------
def _csv(text: str, allowed: Sequence[str] | None, what: str) -> list[str]:
    import click

    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if allowed is not None and t not in allowed]
    if not items or bad:
        raise click.BadParameter(f"{what}: {bad or 'none given'}; known: {list(allowed or [])}")
    return items


def _table(doc: dict[str, Any]) -> None:
    from fedhe_cli.output import print_table

    print_table(
        "fedhe bench hetal (thread CPU s per training step; bytes per step, up = owner -> server)",
        [
            "task",
            "mode",
            "n",
            "d",
            "c",
            "epochs",
            "server s",
            "client s",
            "up MB",
            "down MB",
            "acc HE",
            "acc twin",
            "acc sklearn",
            "RSS MB",
        ],
        [
            [
                r["task"],
                r["mode"],
                r["n_train"],
                r["d"],
                r["classes"],
                r["epochs_run"],
                r["server_cpu_s_per_step"],
                r["client_cpu_s_per_step"],
                r["bytes_up_per_step"] / 1e6,
                r["bytes_down_per_step"] / 1e6,
                r["acc_he"],
                r["acc_plain_same_algo"],
                r["acc_sklearn"] if r["acc_sklearn"] is not None else "-",
                r["peak_rss_mb"],
            ]
            for r in doc["results"]
        ],
    )
    for r in doc["results"]:
        if "mnist_epoch_extrapolated_s" in r:
            print(
                f"{r['task']}: {r['server_cpu_s_per_sample_epoch'] * 1e3:.1f} ms server CPU per "
                f"sample-epoch; MNIST-size epoch ({MNIST_TRAIN:,}) "
                f"{r['mnist_epoch_extrapolated_s'] / 60:.1f} CPU-min "
                f"({r['mnist_epoch_extrapolated_s_2_cores'] / 60:.1f} min wall on 2 cores, "
                f"{r.get('workers', 1)} worker(s))"
            )
    if doc["matmul"]:
        print_table(
            "matmul (HETAL Table 7 shapes)",
            ["a", "b", "c", "algo", "cmult", "mult", "rot", "cpu s"],
            [
                [m["a"], m["b"], m["c"], m["algo"], m["cmult"], m["mult"], m["rot"], m["cpu_s"]]
                for m in doc["matmul"]
            ],
        )


def _command() -> Any:
    import platform
    from pathlib import Path

    import click

    from fedhe_cli.output import write_json

    @click.command("hetal")
    @click.option("--json", "json_path", type=click.Path(path_type=Path), help="write results here")
    @click.option(
        "--task",
        "tasks",
        default=",".join(DEFAULT_TASKS),
        show_default=True,
        help="comma-separated built-in transfer tasks",
    )
    @click.option(
        "--mode",
        "modes",
        default=",".join(MODES),
        show_default=True,
        help="comma-separated softmax modes",
    )
    @click.option(
        "--epochs",
        type=click.IntRange(1, 1000),
        help="max epochs (default: client 10, server 5; patience 3)",
    )
    @click.option("--max-steps", type=click.IntRange(1, 10**6), help="stop after this many steps")
    @click.option("--skip-matmul", is_flag=True, help="leave out the Table 7 matmul part")
    @click.option(
        "--workers",
        type=click.IntRange(1, 64),
        default=1,
        show_default=True,
        help="kernel worker processes of the trainer (transfer.workers)",
    )
    @click.option(
        "--timing-768/--no-timing-768",
        default=True,
        show_default=True,
        help="the 768-d mode-client timing row (MNIST-size extrapolation)",
    )
    def bench_hetal(
        json_path: Path | None,
        tasks: str,
        modes: str,
        epochs: int | None,
        max_steps: int | None,
        skip_matmul: bool,
        workers: int,
        timing_768: bool,
    ) -> None:
        """HETAL: encrypted softmax-head training per task and mode vs its float64 twin."""
        from fedhe_client.transfer.datasets import TRANSFER_TASKS

        plan = BenchPlan(
            _csv(tasks, list(TRANSFER_TASKS), "tasks"),
            _csv(modes, MODES, "modes"),
            epochs,
            max_steps,
            not skip_matmul,
            timing_768,
            workers,
        )
        doc = run_hetal_bench(plan, log=print)
        _table(doc)
        if json_path:
            meta = {
                "suite": "hetal",
                "cpu_time": "thread CPU seconds (time.thread_time)",
                "machine": {"python": platform.python_version(), "system": platform.platform()},
            }
            write_json(json_path, {**meta, **doc})

    return bench_hetal


bench_hetal = _command()
