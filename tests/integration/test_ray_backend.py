"""`fedhe simulate --backend ray` on a local Ray: the clients run as Ray actors.

Ray is the optional extra ``fedhe[ray]`` (``make test-ray`` installs it and runs
this file, slow as it is); without it this test is skipped with that reason.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,  # ~27 s: Ray starts in ~10 s, then one encrypted round
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        importlib.util.find_spec("ray") is None,
        reason="Ray is not installed (optional extra: pip install -e '.[ray]', or make test-ray)",
    ),
]

FEDHE = Path(sys.executable).parent / "fedhe"
JOB = """\
job: {name: ray-sim, rounds: 1}
encryption: {mode: ckks, preset: single-key}
participants: {min_clients: 2, wait_after_min_s: 0.5}
model: {name: mlp, hidden: 16}
training: {local_epochs: 1}
aggregation: {workers: 2, backend: ray}
"""


def test_simulate_with_clients_as_ray_actors(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(JOB)
    result = subprocess.run(
        [str(FEDHE), "simulate", str(job), "--clients", "2", "--backend", "ray",
         "--no-compare", "--workdir", str(tmp_path / "run"), "--timeout", "200"],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Traceback" not in out
    assert len(re.findall(r"^round 1/1 ", out, re.M)) == 1
    accuracy = float(re.search(r"final test accuracy \(HE, ckks\): ([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    assert accuracy > 0.15  # 10 classes: better than chance after an encrypted round
    # The server added the uploads with 2 Ray tasks over chunk ranges.
    assert "aggregation: 2 ray workers" in (tmp_path / "run" / "logs" / "server.log").read_text()
    # No client process was started by the local cluster: the clients were Ray actors.
    logs = {p.stem for p in (tmp_path / "run" / "logs").glob("*.log")}
    assert logs == {"keyauth", "server"}
