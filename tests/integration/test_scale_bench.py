"""`fedhe bench scale` JSON contract with 2 and 4 simulated clients (the 10..200 run is
the benchmark): real key authority and server processes, clients over loopback gRPC."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from fedhe_cli.app import cli
from fedhe_cli.bench.scale_bench import run_scale_round

KEYS = {
    "clients",
    "n_params",
    "round_wall_s",
    "server_cpu_s",
    "server_peak_rss_mb",
    "upload_bytes_per_client",
    "download_bytes_per_client",
}


def test_bench_scale_contract(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    n = 20_000
    result = CliRunner().invoke(
        cli, ["bench", "scale", "--clients", "2,4", "--n-params", str(n), "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    rows = doc["results"]
    assert [r["clients"] for r in rows] == [2, 4]
    for r in rows:
        assert set(r) >= KEYS
        assert r["n_params"] == n
        assert 0 < r["round_wall_s"] < 120 and r["server_cpu_s"] > 0
        assert 20 < r["server_peak_rss_mb"] < 2048
        # single-key: ~8.1 B/value up, ~16.1 B/value down (+ headers, last-chunk padding)
        assert 8 * n < r["upload_bytes_per_client"] < 9 * n
        assert 16 * n < r["download_bytes_per_client"] < 18 * n
        # the decrypted aggregate is the weighted mean of what the clients uploaded
        assert r["max_abs_err"] < 1e-5
    assert doc["targets"]["rss_ratio_max"] == 1.3


def test_bench_scale_refuses_bad_counts() -> None:
    result = CliRunner().invoke(cli, ["bench", "scale", "--clients", "0,5"])
    assert result.exit_code != 0 and "--clients" in result.output


def test_more_clients_than_upload_slots_all_get_in(caplog: pytest.LogCaptureFixture) -> None:
    """40 uploads at once against 16 upload slots: every upload counts.

    Whether the server turns some BeginUploads away (RESOURCE_EXHAUSTED, then the client
    retries) depends on timing: on a loaded machine the small streams may end before the
    slots run out. The gate itself is tested deterministically in test_upload_gate.py.
    """
    caplog.set_level(logging.INFO, logger="fedhe_common.rpc.retry")
    with tempfile.TemporaryDirectory() as tmp:
        row = run_scale_round(40, 5000, Path(tmp))
    assert row.max_abs_err < 1e-5  # the aggregate is the weighted mean of all 40
    turned_away = [r for r in caplog.records if "RESOURCE_EXHAUSTED" in r.getMessage()]
    assert all("BeginUpload" in r.getMessage() for r in turned_away)  # only ever at begin
