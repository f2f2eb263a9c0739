"""fedhe bench hetal: a tiny real run (2 encrypted steps of digits, mode client) through the
CLI, checking the JSON contract and that the numbers are sane."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from fedhe_cli.bench.hetal_bench import RESULT_KEYS
from fedhe_cli.bench_cli import bench


def test_bench_hetal_tiny_run_writes_the_contract(tmp_path: Path) -> None:
    out = tmp_path / "hetal.json"
    args = ["hetal", "--task", "digits", "--mode", "client", "--max-steps", "2", "--epochs", "1",
            "--skip-matmul", "--no-timing-768", "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["matmul"] == [] and len(doc["results"]) == 1
    row = doc["results"][0]
    assert set(RESULT_KEYS) <= set(row)
    assert (row["task"], row["mode"], row["classes"], row["batch"]) == ("digits", "client", 10, 128)
    assert row["n_train"] == 1077 and 2 <= row["d"] <= 65 and row["steps_run"] == 2
    assert 0 < row["server_cpu_s_per_step"] < 60 and 0 < row["client_cpu_s_per_step"] < 10
    assert row["bytes_up_per_step"] > row["bytes_down_per_step"] > 10_000
    assert 0.5 < row["acc_he"] <= 1 and abs(row["acc_he"] - row["acc_plain_same_algo"]) < 0.02
    assert 0.9 < row["acc_sklearn"] <= 1 and row["peak_rss_mb"] > 50
    assert row["max_abs_w_diff_vs_twin"] < 1e-3


def test_bench_hetal_refuses_unknown_task_and_mode() -> None:
    for args in (["--task", "nope"], ["--mode", "both"]):
        result = CliRunner().invoke(bench, ["hetal", *args, "--skip-matmul"])
        assert result.exit_code != 0 and "known" in result.output
