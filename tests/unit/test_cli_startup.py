"""`fedhe --help` and `fedhe job ...` start without torch, transformers or SEAL."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from fedhe_cli.app import COMMANDS, cli

HEAVY = ("torch", "transformers", "tenseal", "peft", "sklearn")

PROBE = """
import sys
from fedhe_cli.app import cli
for args in {calls!r}:
    try:
        cli.main(args, prog_name="fedhe")
    except SystemExit:
        pass
print("HEAVY:" + ",".join(m for m in {heavy!r} if m in sys.modules))
"""


def _heavy_after(calls: list[list[str]]) -> list[str]:
    code = PROBE.format(calls=calls, heavy=HEAVY)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    last = done.stdout.splitlines()[-1]
    assert last.startswith("HEAVY:"), done.stdout
    return [m for m in last.removeprefix("HEAVY:").split(",") if m]


def test_top_level_help_imports_no_heavy_module() -> None:
    assert _heavy_after([[], ["--help"]]) == []


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_help_imports_no_heavy_module(name: str) -> None:
    """Each command module keeps torch/transformers/SEAL inside the commands that run."""
    assert _heavy_after([[name, "--help"]]) == []


def test_job_subcommand_help_imports_no_heavy_module() -> None:
    assert _heavy_after([["job", "status", "--help"], ["job", "submit", "--help"]]) == []


def test_listed_help_is_each_command_own_short_help() -> None:
    """The static list ``fedhe --help`` prints cannot drift from the commands' docstrings."""
    ctx = click.Context(cli)
    for name, (_, _, short) in COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
        assert command.get_short_help_str(limit=200) == short
