"""YAML configs: unknown keys and bad values are refused with the field and file named."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from fedhe_cli.app import cli
from fedhe_common.config.load import load_yaml, parse_yaml
from fedhe_common.config.models import JobConfig, ServerConfig
from fedhe_common.crypto.presets import DEFAULT_PRESET
from fedhe_common.errors import ConfigError


def test_valid_job_defaults() -> None:
    job = parse_yaml("job: {name: a, rounds: 2}", JobConfig)
    assert job.encryption.mode == "ckks" and job.encryption.preset == DEFAULT_PRESET
    assert job.preset_name == "single-key-fast"


def test_threshold_keys_refuse_another_named_preset() -> None:
    keys = "keys: {mode: threshold, parties: 3, threshold: 2}\nparticipants: {min_clients: 3}"
    job = parse_yaml(f"job: {{name: a, rounds: 2}}\n{keys}", JobConfig)
    assert job.preset_name == "threshold-strict"
    with pytest.raises(ConfigError, match=r"keys\.preset"):
        parse_yaml(
            f"job: {{name: a, rounds: 2}}\n{keys}\nencryption: {{preset: single-key}}", JobConfig
        )


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("job: {name: a, rounds: 2, colour: red}", "job.colour"),
        ("job: {name: a, rounds: 0}", "job.rounds"),
        ("job: {name: a, rounds: 2}\nencryption: {preset: nope}", "encryption.preset"),
        ("job: {name: a, rounds: 2}\nencryption: {preset: paper-default}", "encryption.preset"),
        ("job: {name: 'a b', rounds: 2}", "job.name"),
        ("job: {name: a, rounds: 2}\nmodel: {name: os.system}", "model.name"),
        ("job: {name: a, rounds: 2}\ndata: {dataset: npz}", "data"),
    ],
)
def test_bad_job_names_the_field_and_file(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_yaml(path, JobConfig)
    assert str(path) in exc.value.message and field in exc.value.message


def test_not_yaml_and_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_yaml("job: [unclosed", JobConfig)
    with pytest.raises(ConfigError, match="mapping"):
        parse_yaml("- 1\n- 2", JobConfig)


def test_insecure_only_on_loopback() -> None:
    base = (
        "state_dir: s\nkeyauth: {address: '127.0.0.1:1', token_file: t, insecure: true}\n"
        "identities: []\n"
    )
    parse_yaml(base + "listen: 127.0.0.1:5\ninsecure: true", ServerConfig)
    with pytest.raises(ConfigError, match="loopback"):
        parse_yaml(base + "listen: 0.0.0.0:5\ninsecure: true", ServerConfig)
    with pytest.raises(ConfigError, match="cert_file"):
        parse_yaml(base + "listen: 0.0.0.0:5", ServerConfig)


def test_config_validate_command(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("job: {name: a, rounds: 2}")
    bad.write_text("job: {name: a, rounds: 2}\ntraining: {lr: -1}")
    runner = CliRunner()
    assert runner.invoke(cli, ["config", "validate", str(good)]).exit_code == 0
    result = runner.invoke(cli, ["config", "validate", str(bad)])
    assert result.exit_code != 0 and "training.lr" in result.output
