"""The committed gRPC code is exactly what protos/ generates."""

from __future__ import annotations

import subprocess
import sys


def test_generated_code_matches_protos() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fedhe_common.protogen", "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
