"""`fedhe bench selective` on a small vector: JSON contract and the byte targets."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from fedhe_cli.app import cli


def test_bench_selective_contract_and_targets(tmp_path: Path) -> None:
    out = tmp_path / "sel.json"
    result = CliRunner().invoke(
        cli, ["bench", "selective", "--sizes", "300000", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    rows = {r["ratio"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {0.0, 0.1, 0.3, 0.5, 0.7, 1.0}
    for r in rows.values():
        assert isinstance(r["upload_bytes_per_client"], int)
        assert isinstance(r["plain_bytes_per_client"], int) and r["n_params"] == 300000
        assert r["client_cpu_s"] >= 0 and r["server_cpu_s_per_client"] >= 0
        assert r["max_abs_err"] < 1e-6
    ratio = {
        p: rows[p]["upload_bytes_per_client"] / rows[p]["plain_bytes_per_client"] for p in rows
    }
    assert ratio[0.0] == 1.0
    assert ratio[0.1] <= 1.3 and ratio[1.0] <= 2.2
    assert sorted(ratio.values()) == [ratio[p] for p in sorted(ratio)]
