"""docs/config.md is generated from the config models and cannot drift from them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fedhe_common.config import models
from fedhe_common.config.docs import CONFIGS, main, render, rows
from fedhe_common.config.field_notes import NOTES

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_docs_config_md_is_up_to_date() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/config.md is out of date: run "
        ".venv/bin/python -m fedhe_common.config.docs --write docs/config.md"
    )


def test_every_field_of_the_four_configs_is_documented() -> None:
    for title, model, _ in CONFIGS:
        listed = list(rows(model))
        assert {r[0] for r in listed} >= set(model.model_fields), title
        undocumented = [r[0] for r in listed if not r[4]]
        assert not undocumented, f"{title} config: add a comment above {undocumented}"


def test_every_note_names_a_real_field() -> None:
    for key in NOTES:
        cls_name, field = key.split(".")
        assert field in getattr(models, cls_name).model_fields, key


def test_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "config.md"
    stale.write_text(render().replace("| `job.rounds` |", "| `job.round` |"), encoding="utf-8")
    assert main(["--check", str(stale)]) == 1
    assert main(["--check", str(tmp_path / "missing.md")]) == 1
    assert main(["--write", str(stale)]) == 0
    done = subprocess.run(
        [sys.executable, "-m", "fedhe_common.config.docs", "--check", str(stale)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr


def test_rows_show_type_default_and_constraints() -> None:
    job = {r[0]: r for r in rows(models.JobConfig)}
    assert job["job.rounds"][1:4] == ("int", "required", ">= 1, <= 100000")
    assert job["encryption.mode"][1:3] == ('"ckks" | "none"', '"ckks"')
    assert job["participants.expected_clients"][1] == "int | null"
    server = {r[0]: r for r in rows(models.ServerConfig)}
    assert "identities[].token_sha256" in server
    assert server["identities[].token_sha256"][3] == "matches `^[0-9a-f]{64}$`"
