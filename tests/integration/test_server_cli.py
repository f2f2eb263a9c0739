"""`fedhe-server serve` start-up errors are one clear line, and nothing starts."""

from __future__ import annotations

import socket
from pathlib import Path

from click.testing import CliRunner

from fedhe_server.cli import cli


def test_metrics_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    token = tmp_path / "server.token"
    token.write_text("t" * 32)
    token.chmod(0o600)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "server.yaml"
        config.write_text(
            f"""
version: 1
listen: 127.0.0.1:0
insecure: true
state_dir: {tmp_path / "state"}
metrics_port: {port}
keyauth: {{address: "127.0.0.1:1", token_file: {token}, insecure: true}}
identities: []
"""
        )
        result = CliRunner().invoke(cli, ["serve", "--config", str(config)])
    assert result.exit_code == 1
    assert f"metrics_port {port} on 127.0.0.1" in result.output
    assert "in use" in result.output
