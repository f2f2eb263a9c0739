"""`fedhe simulate JOB --clients N` on a tiny plaintext job."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_simulate_runs_a_user_job(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        "job: {name: sim, rounds: 2}\nencryption: {mode: none}\n"
        "participants: {min_clients: 2, wait_after_min_s: 0.5}\n"
    )
    fedhe = Path(sys.executable).parent / "fedhe"
    result = subprocess.run(
        [str(fedhe), "simulate", str(job), "--clients", "2", "--workdir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert len(re.findall(r"^round \d/2 ", out, re.M)) == 2
    assert "plaintext FedAvg, same seeds" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("job: {name: sim, rounds: 2, extra: 1}\n")
    result = subprocess.run(
        [str(fedhe), "simulate", str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0 and "job.extra" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
