"""`fedhe simulate JOB --clients N` on tiny jobs: plain, single-key, selective, threshold."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

FEDHE = Path(sys.executable).parent / "fedhe"
TINY = "model: {name: mlp, hidden: 16}\ntraining: {local_epochs: 1}\n"


def _simulate(tmp_path: Path, job_yaml: str, *extra: str, clients: int = 2) -> str:
    job = tmp_path / "job.yaml"
    job.write_text(job_yaml)
    result = subprocess.run(
        [str(FEDHE), "simulate", str(job), "--clients", str(clients),
         "--workdir", str(tmp_path / "run"), "--timeout", "180", *extra],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Traceback" not in out
    return out


def test_simulate_runs_a_user_job(tmp_path: Path) -> None:
    out = _simulate(
        tmp_path,
        "job: {name: sim, rounds: 2}\nencryption: {mode: none}\n"
        "participants: {min_clients: 2, wait_after_min_s: 0.5}\n",
    )
    assert len(re.findall(r"^round \d/2 ", out, re.M)) == 2
    assert "plaintext FedAvg, same seeds" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("job: {name: sim, rounds: 2, extra: 1}\n")
    result = subprocess.run(
        [str(FEDHE), "simulate", str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0 and "job.extra" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "name,clients,extra_yaml",
    [
        ("single", 2, "encryption: {mode: ckks, preset: single-key}\n"),
        # Round 0 is the mask round: no accuracy line (simulate used to wait for one forever).
        ("selective", 2, "selective: {ratio: 0.5, sensitivity: trueclass, samples: 8}\n"),
        # The job starts in KEYGEN (simulate used to stop at once: KeyError 'accuracy').
        ("threshold", 3, "keys: {mode: threshold, parties: 3, threshold: 2, "
         "preset: threshold-practical}\n"),
        # Threshold keys with selective encryption: round 0's sensitivity sum is fused too.
        ("threshold-selective", 3, "keys: {mode: threshold, parties: 3, threshold: 2, "
         "preset: threshold-practical}\n"
         "selective: {ratio: 0.5, sensitivity: trueclass, samples: 8}\n"),
    ],
)
def test_simulate_encrypted_jobs(tmp_path: Path, name: str, clients: int, extra_yaml: str) -> None:
    participants = f"participants: {{min_clients: {clients}, wait_after_min_s: 0.5}}\n"
    job = f"job: {{name: sim-{name}, rounds: 1}}\n{participants}{TINY}{extra_yaml}"
    out = _simulate(tmp_path, job, "--no-compare", clients=clients)
    assert len(re.findall(r"^round 1/1  accuracy 0\.\d{4} ", out, re.M)) == 1, out
    assert re.search(r"^final test accuracy \(HE, ckks\): 0\.\d{4}$", out, re.M), out
    assert ("round 0 (mask)" in out) == name.endswith("selective"), out


def test_simulate_stops_when_every_client_failed(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        "job: {name: sim-bad-data, rounds: 1}\n"
        f"data: {{dataset: npz, path: {tmp_path / 'missing.npz'}}}\n{TINY}"
    )
    result = subprocess.run(
        [str(FEDHE), "simulate", str(job), "--clients", "2", "--workdir", str(tmp_path / "run"),
         "--no-compare", "--timeout", "90"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "Error: every client exited but the job is still running" in out  # not the timeout
    assert "missing.npz" in out and "Traceback" not in out
