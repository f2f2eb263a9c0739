"""deploy/: compose files parse, their commands are real CLIs, their configs validate.

No Docker engine runs here, so the same topology runs as processes in tests/e2e.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from click.testing import CliRunner

from fedhe_cli.app import cli

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_example_configs_validate() -> None:
    for path in sorted((ROOT / "deploy" / "configs").glob("*.yaml")):
        result = CliRunner().invoke(cli, ["config", "validate", str(path)])
        assert result.exit_code == 0, f"{path}: {result.output}"


def test_compose_commands_exist() -> None:
    doc = yaml.safe_load((ROOT / "deploy" / "compose" / "compose.yaml").read_text())
    for name, service in doc["services"].items():
        command = service["command"]
        help_run = subprocess.run(
            [str(BIN / command[0]), command[1], "--help"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert help_run.returncode == 0, f"{name}: {help_run.stderr}"
        for flag in (c for c in command if c.startswith("--")):
            assert flag in help_run.stdout, f"{name}: {flag} not an option"
