"""``--log-format json``: every line the daemons log is one JSON object."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from fedhe_client.cli import cli as client_cli
from fedhe_common.errors import ConfigError
from fedhe_common.logsetup import configure_logging
from fedhe_keyauth.cli import cli as keyauth_cli
from fedhe_server.cli import cli as server_cli

BIN = Path(sys.executable).parent
KEYS = {"time", "level", "logger", "message"}


def _json_lines(text: str) -> list[dict[str, str]]:
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert entries and all(isinstance(e, dict) and e.keys() >= KEYS for e in entries), text
    return entries


def test_json_lines_carry_time_level_logger_message_and_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("DEBUG", "json")
    try:
        log = logging.getLogger("fedhe_test")
        log.info("two\nlines, \"quoted\" %s", "ünïcode")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
        entries = _json_lines(capsys.readouterr().err)
    finally:
        configure_logging("INFO")
    assert [e["level"] for e in entries] == ["INFO", "ERROR"]
    assert entries[0]["logger"] == "fedhe_test"
    assert entries[0]["message"] == 'two\nlines, "quoted" ünïcode'
    assert entries[0]["time"].endswith("+00:00") and "exc_info" not in entries[0]
    assert "ValueError: boom" in entries[1]["exc_info"]


def test_unknown_log_format_is_a_config_error() -> None:
    before = logging.getLogger().handlers[:]
    with pytest.raises(ConfigError, match="unknown log format 'xml'"):
        configure_logging("INFO", "xml")
    assert logging.getLogger().handlers == before


@pytest.mark.parametrize("cli", [server_cli, keyauth_cli, client_cli])
def test_every_daemon_has_the_option(cli: object) -> None:
    command = "run" if cli is client_cli else "serve"
    result = CliRunner().invoke(cli, [command, "--help"])  # type: ignore[arg-type]
    assert result.exit_code == 0 and "--log-format [text|json]" in result.output
    result = CliRunner().invoke(cli, [command, "--config", "x", "--log-format", "xml"])  # type: ignore[arg-type]
    assert result.exit_code == 2 and "'xml' is not one of 'text', 'json'" in result.output


def _token(tmp_path: Path) -> Path:
    token = tmp_path / "t.token"
    token.write_text("t" * 32)
    token.chmod(0o600)
    return token


def _serve_json(tmp_path: Path, name: str, config: str) -> list[dict[str, str]]:
    """Start ``fedhe-NAME serve --log-format json``, stop it with SIGTERM, parse stderr."""
    path, port_file = tmp_path / f"{name}.yaml", tmp_path / f"{name}.port"
    path.write_text(config)
    proc = subprocess.Popen(
        [str(BIN / f"fedhe-{name}"), "serve", "--config", str(path), "--port-file",
         str(port_file), "--log-format", "json", "--log-level", "DEBUG"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert port_file.exists(), proc.communicate()[1] if proc.poll() is not None else "no port"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return _json_lines(err)


def test_keyauth_and_server_log_json_lines(tmp_path: Path) -> None:
    keyauth = _serve_json(
        tmp_path, "keyauth",
        f"listen: 127.0.0.1:0\ninsecure: true\nstate_dir: {tmp_path / 'ka'}\nidentities: []\n",
    )
    server = _serve_json(
        tmp_path, "server",
        f"""
listen: 127.0.0.1:0
insecure: true
state_dir: {tmp_path / "state"}
keyauth: {{address: "127.0.0.1:1", token_file: {_token(tmp_path)}, insecure: true}}
identities: []
""",
    )
    for entries in (keyauth, server):
        assert {e["logger"].split(".")[0] for e in entries} & {"fedhe_keyauth", "fedhe_server"}
