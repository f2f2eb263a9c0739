"""`fedhe bench round --bandwidth`: paced links (token bucket both ways), JSON contract."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from fedhe_cli.app import cli
from fedhe_cli.bench.bandwidth import (
    MODES,
    STEPS,
    TokenBucket,
    parse_bandwidth,
    run_bandwidth_round,
)


def test_parse_bandwidth_units_and_errors() -> None:
    assert parse_bandwidth("50MB/s") == 50e6
    assert parse_bandwidth("1GB/s") == 1e9
    assert parse_bandwidth("100Mbit/s") == 12.5e6
    for bad in ("fast", "0MB/s", "50MB", "-1GB/s"):
        with pytest.raises(ValueError, match="bandwidth"):
            parse_bandwidth(bad)


def test_token_bucket_paces_to_its_rate() -> None:
    bucket = TokenBucket(4e6, burst=64 * 1024)
    t0 = time.perf_counter()
    for _ in range(32):
        bucket.consume(32 * 1024)  # 1 MiB at 4 MB/s: >= ~0.25 s less the burst
    elapsed = time.perf_counter() - t0
    assert elapsed >= (2**20 - 64 * 1024) / 4e6 * 0.95


def test_a_slow_link_slows_exactly_the_transfer_steps(tmp_path: Path) -> None:
    n = 20_000
    slow = run_bandwidth_round("he", 2e6, n, tmp_path / "slow")
    fast = run_bandwidth_round("he", 1e9, n, tmp_path / "fast")
    for row in (slow, fast):
        assert row["max_abs_err_vs_fedavg"] < 1e-5  # type: ignore[operator]
        assert set(row["step_s"]) == set(STEPS)  # type: ignore[call-overload]
    up, down = slow["upload_bytes_per_client"], slow["download_bytes_per_client"]
    burst = 64 * 1024
    assert slow["step_s"]["upload"] >= 0.9 * (up - burst) / 2e6  # type: ignore[index, operator]
    assert slow["step_s"]["download"] >= 0.9 * (down - burst) / 2e6  # type: ignore[index, operator]
    assert slow["step_s"]["download"] > fast["step_s"]["download"] + 0.05  # type: ignore[index, operator]


def test_bench_round_bandwidth_contract(tmp_path: Path) -> None:
    out = tmp_path / "bw.json"
    result = CliRunner().invoke(
        cli,
        ["bench", "round", "--model", "linear", "--bandwidth", "50MB/s,1GB/s",
         "--json", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["steps"] == list(STEPS) and doc["modes"] == list(MODES)
    assert {(r["mode"], r["bandwidth"]) for r in doc["results"]} == {
        (m, b) for m in MODES for b in ("50MB/s", "1GB/s")
    }
    for r in doc["results"]:
        assert r["round_s"] > 0 and r["upload_bytes_per_client"] > 0
    bad = CliRunner().invoke(cli, ["bench", "round", "--bandwidth", "fast"])
    assert bad.exit_code != 0 and "bandwidth" in bad.output
