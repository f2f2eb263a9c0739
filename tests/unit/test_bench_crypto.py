"""`fedhe bench crypto` on a small size: the JSON contract and the byte targets."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from fedhe_cli.app import cli


def test_bench_crypto_json_contract(tmp_path: Path) -> None:
    out = tmp_path / "crypto.json"
    result = CliRunner().invoke(cli, ["bench", "crypto", "--sizes", "20000", "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = {r["config"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {
        "single-key-fast",
        "single-key",
        "single-key-8k",
        "single-key-compact",
        "paper-default",
        "nvflare-default",
    }
    keys = {
        "config",
        "n_params",
        "upload_bytes_per_value",
        "download_bytes_per_value",
        "client_cpu_s",
        "server_cpu_s_per_client",
        "decrypt_cpu_s",
        "max_abs_err",
        "max_rel_err",
    }
    for row in rows.values():
        assert keys <= set(row) and row["n_params"] == 20000
    ours = rows["single-key"]
    # 20000 values = 5 ciphertexts (last one partial), so a little padding overhead.
    assert ours["upload_bytes_per_value"] <= 8.3
    assert ours["download_bytes_per_value"] <= 16.5
    assert ours["max_abs_err"] <= 1e-6
    assert rows["nvflare-default"]["upload_bytes_per_value"] > 50
    compact = rows["single-key-compact"]
    used = 20000 / (5 * 4096)  # 5 chunks of 4096 values, the last one padded
    assert compact["upload_bytes_per_value"] * used <= 4.1
    assert compact["download_bytes_per_value"] * used <= 4.2
    assert compact["max_rel_err"] <= 1e-3
    fast = rows["single-key-fast"]  # exact, at single-key's bytes
    assert fast["upload_bytes_per_value"] * used <= 8.05
    assert fast["download_bytes_per_value"] * used <= 16.05
    assert fast["max_rel_err"] <= 1e-10
    ratios = {r["config"]: r for r in json.loads(out.read_text())["ratios"]}
    assert ratios["single-key-compact"]["upload_bytes_ratio"] < 0.1
    assert {"client_cpu_ratio", "server_cpu_ratio"} <= set(ratios["single-key-fast"])
    assert {"decrypt_cpu_ratio", "download_bytes_ratio"} <= set(ratios["single-key"])


def test_bench_rejects_unknown_config() -> None:
    result = CliRunner().invoke(cli, ["bench", "crypto", "--configs", "nope", "--sizes", "10"])
    assert result.exit_code != 0 and "unknown config" in result.output
