"""`fedhe bench threshold` JSON contract on a small vector."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from fedhe_cli.app import cli


def test_bench_threshold_contract(tmp_path: Path) -> None:
    out = tmp_path / "thr.json"
    result = CliRunner().invoke(
        cli, ["bench", "threshold", "--values", "163840", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    rows = {r["config"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"threshold-strict", "threshold-practical", "single-key"}
    keys = {
        "upload_bytes_per_value",
        "share_bytes_per_value",
        "encrypt_cpu_s_per_1m",
        "share_cpu_s_per_party_per_1m",
        "fusion_cpu_s_per_1m",
        "max_abs_err",
        "verify_cpu_s_per_party_per_1m",
        "verify_bytes_per_value_per_party",
    }
    for row in rows.values():
        assert keys <= set(row)
        assert row["max_abs_err"] < 1e-5
    assert rows["threshold-strict"]["upload_bytes_per_value"] <= 33
    assert rows["single-key"]["share_bytes_per_value"] == 0
    assert rows["threshold-strict"]["verify_cpu_s_per_party_per_1m"] > 0
