"""The zoo's real LeNet-5 learns digits28 in `fedhe simulate` at the default settings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(200)]

FEDHE = Path(sys.executable).parent / "fedhe"
JOB = """version: 1
job: {name: lenet-digits28, rounds: 20, seed: 0}
model: {name: lenet}
data: {dataset: digits28}
"""


def test_lenet_reaches_95_percent_on_digits28_encrypted(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(JOB)
    result = subprocess.run(
        [str(FEDHE), "simulate", str(job), "--no-compare", "--workdir", str(tmp_path / "run"),
         "--timeout", "150"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    found = re.search(r"final test accuracy \(HE, ckks\): ([0-9.]+)", out)
    assert found, out
    assert float(found.group(1)) >= 0.95, out
