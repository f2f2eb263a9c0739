"""Guard: the aggregation server never loads secret-key, threshold-party or torch code,
and its core modules have no import circle."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import importlib, pkgutil, sys
import fedhe_server
for info in pkgutil.walk_packages(fedhe_server.__path__, "fedhe_server."):
    importlib.import_module(info.name)
bad = sorted(
    m for m in sys.modules
    if m.endswith("crypto.secret") or m.endswith("crypto.threshold")
    or m.startswith("fedhe_client") or m.startswith("fedhe_keyauth")
    or m == "torch" or m.startswith("torch.")
)
print(bad)
sys.exit(1 if bad else 0)
"""


def test_every_server_module_loads_no_secret_key_threshold_party_or_torch_code() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_round_state_machine_does_not_import_the_job_run() -> None:
    """rounds.py is the base of jobrun.py, never the other way round (no circle)."""
    code = (
        "import sys, fedhe_server.rounds;"
        "sys.exit(1 if 'fedhe_server.jobrun' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
