"""Start-up mistakes are one-line errors (exit != 0, no traceback) on every FedHE command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from fedhe_client.cli import cli as client_cli
from fedhe_common.errors import ConfigError
from fedhe_common.logsetup import configure_logging
from fedhe_keyauth.cli import cli as keyauth_cli
from fedhe_server.cli import cli as server_cli

BIN = Path(sys.executable).parent


def _token(tmp_path: Path) -> Path:
    token = tmp_path / "t.token"
    token.write_text("t" * 32)
    token.chmod(0o600)
    return token


def _server_config(tmp_path: Path) -> Path:
    config = tmp_path / "server.yaml"
    config.write_text(
        f"""
listen: 127.0.0.1:0
insecure: true
state_dir: {tmp_path / "state"}
keyauth: {{address: "127.0.0.1:1", token_file: {_token(tmp_path)}, insecure: true}}
identities: []
"""
    )
    return config


def _client_config(tmp_path: Path, device: str) -> Path:
    token = _token(tmp_path)
    config = tmp_path / "client.yaml"
    config.write_text(
        f"""
client_id: c1
server: {{address: "127.0.0.1:1", token_file: {token}, insecure: true}}
keyauth: {{address: "127.0.0.1:1", token_file: {token}, insecure: true}}
partition: {{index: 0, count: 1}}
device: {device}
state_dir: {tmp_path / "client-state"}
"""
    )
    return config


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def test_server_missing_job_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    result = _run(
        str(BIN / "fedhe-server"), "serve", "--config", str(_server_config(tmp_path)),
        "--job", str(missing),
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    expected = f"Error: {missing}: cannot read the job: No such file or directory"
    assert result.stderr.strip() == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch has CUDA")
def test_client_device_cuda_without_cuda_is_one_line(tmp_path: Path) -> None:
    result = _run(
        str(BIN / "fedhe-client"), "run", "--config", str(_client_config(tmp_path, "cuda"))
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "device: cuda" in lines[0] and "no CUDA device" in lines[0], lines
    assert not (tmp_path / "client-state").exists()  # refused before anything started


@pytest.mark.parametrize(
    "cli,args",
    [
        (server_cli, ["serve", "--config", "x.yaml"]),
        (keyauth_cli, ["serve", "--config", "x.yaml"]),
        (client_cli, ["run", "--config", "x.yaml"]),
    ],
)
def test_log_level_typo_is_refused(cli: click.Group, args: list[str]) -> None:
    result = CliRunner().invoke(cli, [*args, "--log-level", "DEBGU"])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--log-level'" in result.output
    assert "DEBGU" in result.output
    # A known level in any case passes the option (and then fails on the missing config).
    result = CliRunner().invoke(cli, [*args, "--log-level", "debug"])
    assert result.exit_code == 1 and "x.yaml: cannot read" in result.output, result.output


def test_configure_logging_refuses_unknown_levels() -> None:
    with pytest.raises(ConfigError, match="unknown log level 'LOUD'"):
        configure_logging("LOUD")
    configure_logging("warning")
    configure_logging("INFO")
