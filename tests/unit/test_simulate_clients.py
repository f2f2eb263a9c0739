"""`fedhe simulate` refuses client counts with which the job could never finish."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from fedhe_cli.app import cli
from fedhe_cli.run_cli import client_ids
from fedhe_common.config.load import parse_yaml
from fedhe_common.config.models import JobConfig

THRESHOLD = "keys: {mode: threshold, parties: 4, threshold: 2, preset: threshold-practical}\n"


@pytest.mark.parametrize(
    "job_yaml,clients,message",
    [
        ("participants: {min_clients: 3}\n", "2", "participants.min_clients = 3"),
        ("participants: {min_clients: 3}\n" + THRESHOLD, "3", "keys.parties = 4"),
        ("participants: {min_clients: 2, clients: [a, b]}\n", "3", "enrols only 2 clients"),
    ],
)
def test_impossible_client_counts_are_refused(
    tmp_path: Path, job_yaml: str, clients: str, message: str
) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("job: {name: sim, rounds: 1}\n" + job_yaml)
    work = tmp_path / "run"
    result = CliRunner().invoke(
        cli, ["simulate", str(job), "--clients", clients, "--workdir", str(work),
              "--timeout", "20"],
    )
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert not work.exists()  # nothing was started


def _job(extra: str) -> JobConfig:
    return parse_yaml("job: {name: sim, rounds: 1}\n" + extra, JobConfig, "job")


def test_default_client_count_fits_the_job() -> None:
    assert client_ids(_job(""), None) == ["client-1", "client-2", "client-3"]
    assert len(client_ids(_job("participants: {min_clients: 5}\n"), None)) == 5
    assert len(client_ids(_job("participants: {min_clients: 3}\n" + THRESHOLD), None)) == 4
    enrolled = _job("participants: {min_clients: 2, clients: [ann, bob, cid]}\n")
    assert client_ids(enrolled, None) == ["ann", "bob", "cid"]
    assert client_ids(enrolled, 2) == ["ann", "bob"]
