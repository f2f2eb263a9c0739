"""`fedhe demo`: the README's main job reaches >= 90% and matches plaintext FedAvg."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def test_demo_accuracy_matches_plaintext(tmp_path: Path) -> None:
    fedhe = Path(sys.executable).parent / "fedhe"
    result = subprocess.run(
        [str(fedhe), "demo", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert len(re.findall(r"^round \d/5 ", out, re.M)) == 5, out
    he = float(re.search(r"final test accuracy \(HE, ckks\): ([\d.]+)", out).group(1))
    plain = float(re.search(r"plaintext FedAvg, same seeds\): ([\d.]+)", out).group(1))
    assert he >= 0.90
    assert abs(he - plain) <= 0.005
