"""`fedhe job submit/status` against a running (in-process) server."""

from __future__ import annotations

from click.testing import CliRunner

from fedhe_cli.app import cli
from tests.integration.conftest import Services

JOB = "job: {name: cli-job, rounds: 2}\n"


def test_submit_is_idempotent_and_status_shows_rounds(services: Services, tmp_path) -> None:  # type: ignore[no-untyped-def]
    job = tmp_path / "job.yaml"
    job.write_text(JOB)
    common = [
        "--server",
        f"127.0.0.1:{services.server_port}",
        "--token-file",
        str(services.token_path("admin")),
        "--insecure",
    ]
    runner = CliRunner()
    first = runner.invoke(cli, ["job", "submit", str(job), *common])
    assert first.exit_code == 0 and "created" in first.output, first.output
    again = runner.invoke(cli, ["job", "submit", str(job), *common])
    assert again.exit_code == 0 and "already exists" in again.output
    job.write_text(JOB.replace("rounds: 2", "rounds: 3"))
    conflict = runner.invoke(cli, ["job", "submit", str(job), *common])
    assert conflict.exit_code != 0 and "another configuration" in conflict.output
    status = runner.invoke(cli, ["job", "status", "cli-job", *common])
    assert status.exit_code == 0 and "RUNNING" in status.output and "OPEN" in status.output
    client = runner.invoke(
        cli,
        [
            "job",
            "submit",
            str(job),
            "--server",
            f"127.0.0.1:{services.server_port}",
            "--token-file",
            str(services.token_path("c1")),
            "--insecure",
        ],
    )
    assert client.exit_code != 0 and "PERMISSION_DENIED" in client.output
