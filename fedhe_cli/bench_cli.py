"""``fedhe bench ...`` commands."""

from __future__ import annotations

import dataclasses
import platform
from pathlib import Path
from typing import Any

import click
from rich.progress import Progress, TaskID

from fedhe_cli.output import console, parse_list, print_table, write_json
from fedhe_common.crypto.presets import DEFAULT_PRESET


def _sizes(text: str) -> list[int]:
    return parse_list(text, int, "sizes", lambda v: v > 0, "positive")


@click.group("bench")
def bench() -> None:
    """Benchmarks: our path and the baselines in one run, process CPU time."""


@bench.command("crypto")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="write results here")
@click.option(
    "--sizes",
    default="1663370,11689512",
    show_default=True,
    help="comma-separated values per client (109482240 = BERT-base)",
)
@click.option(
    "--configs",
    default="single-key-fast,single-key,single-key-8k,single-key-compact,paper-default,"
    "nvflare-default",
    show_default=True,
    help="comma-separated configs",
)
@click.option("--seed", default=0, show_default=True)
def bench_crypto(json_path: Path | None, sizes: str, configs: str, seed: int) -> None:
    """Encrypted FedAvg of 3 clients (weights 1,2,3): bytes, CPU and error per config."""
    from fedhe_cli.bench.crypto_bench import PATH_FACTORIES, ratios_vs, run_crypto_bench

    size_list = _sizes(sizes)
    config_list = [c.strip() for c in configs.split(",") if c.strip()]
    unknown = [c for c in config_list if c not in PATH_FACTORIES]
    if unknown:
        raise click.BadParameter(f"unknown config(s) {unknown}; known: {sorted(PATH_FACTORIES)}")
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        tasks = {
            (c, n): progress.add_task(f"{c} n={n:,}", total=n)
            for c in config_list
            for n in size_list
        }
        results = run_crypto_bench(
            config_list,
            size_list,
            seed,
            on_block=lambda c, n, done: progress.advance(tasks[(c, n)], done),
        )
    print_table(
        "fedhe bench crypto (3 clients, weights 1,2,3; process CPU s)",
        [
            "config",
            "n_params",
            "up B/val",
            "down B/val",
            "client cpu s",
            "server cpu s/client",
            "decrypt cpu s",
            "max abs err",
            "max rel err",
        ],
        [
            [
                r.config,
                r.n_params,
                r.upload_bytes_per_value,
                r.download_bytes_per_value,
                r.client_cpu_s,
                r.server_cpu_s_per_client,
                r.decrypt_cpu_s,
                r.max_abs_err,
                r.max_rel_err,
            ]
            for r in results
        ],
    )
    ratios = ratios_vs(results, "nvflare-default")
    if ratios:
        print_table(
            "ratios vs nvflare-default (same run)",
            [
                "config",
                "n_params",
                "client cpu",
                "server cpu",
                "decrypt cpu",
                "upload bytes",
                "download bytes",
            ],
            [
                [
                    r["config"],
                    r["n_params"],
                    r["client_cpu_ratio"],
                    r["server_cpu_ratio"],
                    r["decrypt_cpu_ratio"],
                    r["upload_bytes_ratio"],
                    r["download_bytes_ratio"],
                ]
                for r in ratios
            ],
        )
    if json_path:
        write_json(
            json_path,
            {
                "suite": "crypto",
                "clients": 3,
                "weights": [1, 2, 3],
                "value_range": [-10, 10],
                "cpu_time": "process CPU seconds (time.process_time)",
                "machine": {
                    "python": platform.python_version(),
                    "cpu": platform.processor(),
                    "system": platform.platform(),
                },
                "results": [dataclasses.asdict(r) for r in results],
                "ratios": ratios,
            },
        )


@bench.command("round")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="write results here")
@click.option(
    "--model",
    default="cnn",
    show_default=True,
    help="any zoo model (fedhe_client.zoo); CPU phases only for the digit models",
)
@click.option(
    "--dataset", default="digits28", show_default=True, type=click.Choice(["digits", "digits28"])
)
@click.option("--epochs", default=1, show_default=True, type=click.IntRange(1, 100))
@click.option("--memory-only", is_flag=True, help="only the per-process memory round")
@click.option(
    "--peft",
    type=click.Choice(["lora"]),
    default=None,
    help="LoRA r=8: only adapters and head travel (transformer models)",
)
@click.option(
    "--bandwidth",
    help="comma-separated link speeds (e.g. 50MB/s,200MB/s,1GB/s): instead of the CPU and "
    "memory rounds, round time per step at each speed (paced streams), plain vs HE vs compact",
)
def bench_round(
    json_path: Path | None,
    model: str,
    dataset: str,
    epochs: int,
    memory_only: bool,
    peft: str | None,
    bandwidth: str | None,
) -> None:
    """One 3-client round over gRPC: HE vs plaintext float32 updates, peak RSS per process."""
    from fedhe_cli.bench.round_bench import run_round_bench
    from fedhe_client.zoo import zoo_model

    if bandwidth is not None:
        _bench_bandwidth(json_path, model, bandwidth)
        return

    try:
        zoo_model(model)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--model") from None
    result = run_round_bench(model, dataset, epochs, memory_only, peft)
    _print_round(result)
    if json_path:
        write_json(json_path, result)


def _print_round(result: dict) -> None:
    """The CPU table (when measured) and the memory round's line."""
    from fedhe_cli.bench.round_bench import PHASES

    rss, mem = result["peak_rss_mb"], result["memory_round"]
    console.print(
        f"memory round ({mem['n_values']:,} values, 3 client processes): peak RSS server "
        f"{rss['server']:.0f} MB, client max {rss['client_max']:.0f} MB, keyauth "
        f"{rss['keyauth']:.0f} MB; upload {mem['upload_x_plaintext']:.3f}x, download "
        f"{mem['download_x_plaintext']:.3f}x plaintext; max |HE - FedAvg| "
        f"{mem['max_abs_diff_vs_plain_fedavg']:.3g}; targets met: {mem['targets']['met']}"
    )
    modes = result["modes"]
    if not modes:
        return
    rows = []
    for name, m in modes.items():
        rows.append(
            [
                name,
                m["upload_bytes_per_client"],
                m["download_bytes_per_client"],
                *(m["cpu_s"][p] for p in PHASES),
            ]
        )
    print_table(
        f"fedhe bench round ({result['n_params']:,} params, 3 clients; "
        "process CPU s, client phases per client)",
        ["mode", "up B/client", "down B/client", *PHASES],
        rows,
    )
    he, plain = modes["he"], modes["plain"]
    console.print(
        f"upload {he['upload_bytes_per_client'] / plain['upload_bytes_per_client']:.3f}x plain, "
        f"download {he['download_bytes_per_client'] / plain['download_bytes_per_client']:.3f}x "
        f"plain, max |HE - plain| of the global model {he['max_abs_diff_vs_plain']:.3g}"
    )


@bench.command("selective")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="write results here")
@click.option(
    "--sizes",
    default="86389248",
    show_default=True,
    help="values per client (86,389,248 = ViT-base)",
)
@click.option("--ratios", default="0,0.1,0.3,0.5,0.7,1.0", show_default=True)
def bench_selective(json_path: Path | None, sizes: str, ratios: str) -> None:
    """Wire bytes and CPU per client vs the encrypted ratio (3 clients)."""
    from fedhe_cli.bench.selective_bench import run_selective_bench

    ratio_list = tuple(parse_list(ratios, float, "ratios", lambda v: 0 <= v <= 1, "in [0, 1]"))
    results = []
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        for n in _sizes(sizes):
            task = progress.add_task(f"n={n:,}", total=n * len(ratio_list))

            def advance(_ratio: float, k: int, t: TaskID = task) -> None:
                progress.advance(t, k)

            results += run_selective_bench(n, ratio_list, on_block=advance)
    print_table(
        "fedhe bench selective (single-key, 3 clients; process CPU s per client)",
        [
            "ratio",
            "n_params",
            "upload B/client",
            "x plaintext",
            "client cpu s",
            "server cpu s",
            "max abs err",
        ],
        [
            [
                r.ratio,
                r.n_params,
                r.upload_bytes_per_client,
                r.upload_bytes_per_client / r.plain_bytes_per_client,
                r.client_cpu_s,
                r.server_cpu_s_per_client,
                r.max_abs_err,
            ]
            for r in results
        ],
    )
    if json_path:
        write_json(
            json_path,
            {
                "suite": "selective",
                "clients": 3,
                "preset": "single-key",
                "results": [dataclasses.asdict(r) for r in results],
            },
        )


@bench.command("threshold")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="write results here")
@click.option(
    "--values",
    default=1_000_000,
    show_default=True,
    type=click.IntRange(1),
    help="values per client (results are scaled to 1M)",
)
def bench_threshold(json_path: Path | None, values: int) -> None:
    """Threshold CKKS (3 parties, N-of-N) vs single-key: bytes and CPU per 1M values."""
    import tempfile

    from fedhe_cli.bench.threshold_bench import run_threshold_bench

    with tempfile.TemporaryDirectory(prefix="fedhe-threshold-") as tmp:
        results = run_threshold_bench(values, tmp, on_config=lambda c: console.log(c))
    print_table(
        "fedhe bench threshold (3 clients, 3 parties; process CPU s per 1M values)",
        [
            "config",
            "upload B/value",
            "share B/value",
            "encrypt s",
            "share s/party",
            "fusion s",
            "max abs err",
        ],
        [
            [
                r.config,
                r.upload_bytes_per_value,
                r.share_bytes_per_value,
                r.encrypt_cpu_s_per_1m,
                r.share_cpu_s_per_party_per_1m,
                r.fusion_cpu_s_per_1m,
                r.max_abs_err,
            ]
            for r in results
        ],
    )
    if json_path:
        write_json(
            json_path,
            {
                "suite": "threshold",
                "parties": 3,
                "clients": 3,
                "results": [dataclasses.asdict(r) for r in results],
            },
        )


@bench.command("models")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="write results here")
@click.option(
    "--models",
    default="linear,cnn,resnet18,resnet50,mobilenetv2,vit-base,bert-base",
    show_default=True,
    help="comma-separated zoo models",
)
@click.option(
    "--configs",
    default=f"{DEFAULT_PRESET},single-key,nvflare-default,paper-default",
    show_default=True,
    help="ours (the default preset first), SEAL single-key and the baselines",
)
@click.option(
    "--measure-values",
    default=1_048_576,
    show_default=True,
    type=click.IntRange(0),
    help="values per model encrypted for real; larger models are scaled by ciphertext "
    "count (0: all)",
)
@click.option(
    "--lora/--no-lora",
    default=True,
    show_default=True,
    help="also the LoRA table (FedML-HE Table 5): BERT-base, ResNet-18, Llama-2-7B by layout",
)
def bench_models(
    json_path: Path | None, models: str, configs: str, measure_values: int, lora: bool
) -> None:
    """FedML-HE Tables 4 and 5: per zoo model, plaintext vs HE bytes and CPU; LoRA bytes."""
    from fedhe_cli.bench.crypto_bench import PATH_FACTORIES
    from fedhe_cli.bench.models_bench import ratios, run_models_bench
    from fedhe_client.zoo import ZOO

    model_list = [m.strip() for m in models.split(",") if m.strip()]
    config_list = [c.strip() for c in configs.split(",") if c.strip()]
    bad_models = [m for m in model_list if m not in ZOO]
    if bad_models or not model_list:
        raise click.BadParameter(f"unknown model(s) {bad_models}; known: {', '.join(ZOO)}")
    bad_configs = [c for c in config_list if c not in PATH_FACTORIES]
    if bad_configs or not config_list:
        raise click.BadParameter(
            f"unknown config(s) {bad_configs}; known: {sorted(PATH_FACTORIES)}"
        )
    rows = run_models_bench(
        model_list, config_list, measure_values, on_model=lambda m: console.log(f"model {m}")
    )
    print_table(
        "fedhe bench models (3 clients, weights 1,2,3; process CPU s; bytes per client)",
        [
            "model",
            "n_params",
            "config",
            "plain MB",
            "upload MB",
            "x plain",
            "download MB",
            "client cpu s",
            "server cpu s/client",
            "decrypt cpu s",
        ],
        [
            [
                r.model,
                r.n_params,
                r.config,
                r.plain_bytes / 1e6,
                r.upload_bytes / 1e6,
                r.upload_bytes / r.plain_bytes,
                r.download_bytes / 1e6,
                r.client_cpu_s,
                r.server_cpu_s_per_client,
                r.decrypt_cpu_s,
            ]
            for r in rows
        ],
    )
    lora_rows = _lora_table() if lora else []
    if json_path:
        write_json(
            json_path,
            {
                "suite": "models",
                "lora": [dataclasses.asdict(r) for r in lora_rows],
                "clients": 3,
                "weights": [1, 2, 3],
                "measured_values_per_model": measure_values or "all",
                "cpu_time": "process CPU seconds (time.process_time)",
                "machine": {
                    "python": platform.python_version(),
                    "cpu": platform.processor(),
                    "system": platform.platform(),
                },
                "results": [dataclasses.asdict(r) for r in rows],
                "ratios": ratios(rows),
            },
        )


def _lora_table() -> list[Any]:
    """FedML-HE Table 5 analogue: full vs LoRA (r=8) bytes per client, ours (the default preset)."""
    from fedhe_cli.bench.models_bench import LORA_R, run_lora_bench

    console.log("LoRA table: BERT-base, ResNet-18 (real CKKS), Llama-2-7B (layout only)")
    rows = run_lora_bench()
    print_table(
        f"LoRA r={LORA_R} (BERT/Llama: query+value, ResNet: convolutions) + head; "
        f"bytes per client, {DEFAULT_PRESET}; Llama-2-7B extrapolated per ciphertext",
        ["model", "values", "LoRA values", "plain MB", "full HE MB", "LoRA plain MB",
         "LoRA HE MB", "LoRA client cpu s", "full client cpu s", "measured"],
        [[r.model, r.full_values, r.lora_values, r.plain_bytes / 1e6,
          r.full_encrypted_bytes / 1e6, r.lora_plain_bytes / 1e6, r.lora_encrypted_bytes / 1e6,
          r.lora_client_cpu_s, r.full_client_cpu_s, "yes" if r.measured else "extrapolated"]
         for r in rows],
    )  # fmt: skip
    return rows


@bench.command("scale")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="write results here")
@click.option("--clients", default="10,50,100,200", show_default=True, help="client counts")
@click.option("--n-params", default=200_000, show_default=True, type=click.IntRange(1, 20_000_000))
@click.option("--plain", is_flag=True, help="plaintext float32 updates instead of CKKS")
@click.option("--preset", default=DEFAULT_PRESET, show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(1, 1024),
    help="client threads in this process (default: one per client, all in flight)",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 256),
    help="the job's aggregation.workers (chunk-range worker processes on the server)",
)
def bench_scale(
    json_path: Path | None,
    clients: str,
    n_params: int,
    plain: bool,
    preset: str,
    threads: int | None,
    workers: int,
) -> None:
    """One round per client count, simulated clients over gRPC against a fresh server."""
    from fedhe_cli.bench.scale_bench import run_scale_bench

    counts = parse_list(clients, int, "--clients", lambda v: 1 <= v <= 1000, "in 1..1000")
    result = run_scale_bench(
        counts,
        n_params,
        not plain,
        preset,
        threads,
        on_result=lambda r: console.log(
            f"{r.clients} clients: round {r.round_wall_s:.2f} s, server cpu "
            f"{r.server_cpu_s:.2f} s, peak RSS {r.server_peak_rss_mb:.0f} MB"
        ),
        workers=workers,
    )
    print_table(
        f"fedhe bench scale ({n_params:,} params, {result['encryption']}; one round, "
        "server process CPU and peak RSS)",
        ["clients", "round s", "upload s", "publish s", "download s", "server cpu s",
         "server RSS MB", "up B/client", "down B/client", "max abs err"],
        [[r["clients"], r["round_wall_s"], r["upload_s"], r["publish_s"], r["download_s"],
          r["server_cpu_s"], r["server_peak_rss_mb"], r["upload_bytes_per_client"],
          r["download_bytes_per_client"], r["max_abs_err"]]
         for r in result["results"]],
    )  # fmt: skip
    targets = result["targets"]
    console.print(
        f"peak RSS {targets['rss_ratio_max_vs_min_clients']}x from the smallest to the largest "
        f"count (target <= 1.3); seconds per client {targets['wall_s_per_client_ratio']}x; "
        f"met: {targets['met']}"
    )
    if json_path:
        write_json(json_path, {"suite": "scale", "machine": _machine(), **result})


def _machine() -> dict[str, object]:
    """Where a benchmark ran."""
    import os

    return {
        "python": platform.python_version(),
        "system": platform.platform(),
        "cores": len(os.sched_getaffinity(0)),
    }


def _register_hetal() -> None:
    from fedhe_cli.bench.hetal_bench import bench_hetal

    bench.add_command(bench_hetal)


_register_hetal()


def _bench_bandwidth(json_path: Path | None, model: str, bandwidth: str) -> None:
    """``fedhe bench round --bandwidth``: FedML-HE Fig. 14b analogue."""
    import tempfile

    from fedhe_cli.bench.bandwidth import STEPS, parse_bandwidth, run_bandwidth_bench
    from fedhe_cli.bench.round_client import client_vector

    try:
        rates = [(b.strip(), parse_bandwidth(b)) for b in bandwidth.split(",") if b.strip()]
        n_params = int(client_vector(model, 0)[0].size)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--bandwidth/--model") from None
    if not rates:
        raise click.BadParameter("give at least one link speed", param_hint="--bandwidth")
    with tempfile.TemporaryDirectory(prefix="fedhe-bw-") as tmp:
        result = run_bandwidth_bench(rates, n_params, Path(tmp))
    print_table(
        f"fedhe bench round --bandwidth ({model}, {n_params:,} params, 3 clients, one link "
        "each; wall s per step, mean per client)",
        ["mode", "link", "round s", *STEPS, "up MB/client", "down MB/client", "max abs err"],
        [[r["mode"], r["bandwidth"], r["round_s"], *(r["step_s"][s] for s in STEPS),
          r["upload_bytes_per_client"] / 1e6, r["download_bytes_per_client"] / 1e6,
          r["max_abs_err_vs_fedavg"]]
         for r in result["results"]],  # type: ignore[attr-defined]
    )  # fmt: skip
    if not result["compact_available"]:
        console.print("single-key-compact is not in this build: plain vs HE only")
    if json_path:
        write_json(json_path, {"suite": "round-bandwidth", "model": model, **result})
