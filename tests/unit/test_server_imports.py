"""Guard: the aggregation server never loads secret-key, threshold-party or torch code,
and its core modules have no import circle."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import importlib, importlib.util, pkgutil, sys
import fedhe_server
for info in pkgutil.walk_packages(fedhe_server.__path__, "fedhe_server."):
    importlib.import_module(info.name)
# Transfer jobs import the HETAL trainer on first use: load it as the server would.
if importlib.util.find_spec("fedhe_common.hetal.trainer") is not None:
    importlib.import_module("fedhe_common.hetal.trainer")
bad = sorted(
    m for m in sys.modules
    if m.endswith("crypto.secret") or m.endswith("crypto.threshold")
    or m.startswith("fedhe_client") or m.startswith("fedhe_keyauth")
    or m.endswith(".keys") or m.endswith(".owner") or "keygen" in m
    or m == "torch" or m.startswith("torch.")
)
# No loaded FedHE module may make a SEAL key generator or decryptor.
makers = sorted(
    name for name, mod in list(sys.modules.items())
    if name.startswith("fedhe") and getattr(mod, "__file__", None)
    and any(t in open(mod.__file__, encoding="utf-8").read()
            for t in ("KeyGenerator(", "Decryptor("))
)
print(bad, makers)
sys.exit(1 if bad or makers else 0)
"""


def test_every_server_module_loads_no_secret_key_threshold_party_or_torch_code() -> None:
    """Includes the transfer subpackage and the HETAL trainer it loads: no client code,
    no key-generation module, no module that constructs a KeyGenerator or Decryptor."""
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
