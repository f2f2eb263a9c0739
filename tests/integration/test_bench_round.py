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
