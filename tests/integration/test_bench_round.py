"""`fedhe bench round` JSON contract on a small model (the CNN run is the benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from fedhe_cli.app import cli


def test_bench_round_contract(tmp_path: Path) -> None:
    out = tmp_path / "round.json"
    result = CliRunner().invoke(
        cli, ["bench", "round", "--model", "lenet", "--dataset", "digits", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["clients"] == 3 and doc["n_params"] > 0
    phases = {"train", "encrypt", "upload", "aggregate", "download", "decrypt"}
    for mode in ("he", "plain"):
        m = doc["modes"][mode]
        assert m["upload_bytes_per_client"] > 0 and m["download_bytes_per_client"] > 0
        assert set(m["cpu_s"]) == phases
    he, plain = doc["modes"]["he"], doc["modes"]["plain"]
    assert he["max_abs_diff_vs_plain"] < 1e-6
    # Ciphertext is ~8 B/value up and ~16 down vs 4 B/value float32 (+ padding of the
    # last chunk on this small model).
    assert he["upload_bytes_per_client"] < 2.6 * plain["upload_bytes_per_client"]
    # Issue 12: every process's peak RSS, from a round run as separate processes.
    assert doc["model"] == "lenet" and doc["peft"] is None
    rss = doc["peak_rss_mb"]
    assert set(rss) >= {"server", "client_max", "keyauth"}
    assert all(0 < rss[k] < 2048 for k in ("server", "client_max", "keyauth"))
    memory = doc["memory_round"]
    assert memory["max_abs_diff_vs_plain_fedavg"] < 1e-6
    assert memory["download_x_plaintext"] < 4.3


def test_bench_round_refuses_an_unknown_model() -> None:
    result = CliRunner().invoke(cli, ["bench", "round", "--model", "nope"])
    assert result.exit_code == 2 and "unknown model" in result.output
