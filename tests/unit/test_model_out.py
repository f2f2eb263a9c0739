"""The model out: every round's model kept on request, and save_pretrained export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from fedhe_cli.app import cli
from fedhe_client.model_out import job_model_dir, round_dir, save_global
from fedhe_client.zoo import build_model
from fedhe_common.config.models import ClientConfig
from fedhe_common.mlbridge.flatten import build_manifest


def _layout(model: torch.nn.Module) -> str:
    return build_manifest(model.state_dict()).layout_id


def _save(tmp: Path, job: str, number: int, model: torch.nn.Module, keep: str) -> Path:
    metrics = {"accuracy": number / 10}
    return save_global(tmp, job, number, model, _layout(model), "builtin", metrics, keep=keep)


def test_keep_every_keeps_each_rounds_model_per_job(tmp_path: Path) -> None:
    torch.manual_seed(0)
    models = [torch.nn.Linear(3, 2) for _ in range(3)]
    for number, model in enumerate(models, start=1):
        card = _save(tmp_path, "job-a", number, model, "every")
    _save(tmp_path, "job-b", 1, torch.nn.Linear(3, 2), "every")  # another job: own folder
    assert card == job_model_dir(tmp_path, "job-a") / "card.json"
    assert json.loads(card.read_text())["round"] == 3
    out = tmp_path / "r1.pt"
    first = round_dir(tmp_path, "job-a", 1)
    result = CliRunner().invoke(cli, ["model", "export", str(first), "--out", str(out)])
    assert result.exit_code == 0, result.output
    kept = torch.load(out, weights_only=True)
    assert torch.equal(kept["weight"], models[0].weight.detach())
    for number in (1, 2, 3):
        assert json.loads((round_dir(tmp_path, "job-a", number) / "card.json").read_text())[
            "round"
        ] == number
    assert sorted(p.name for p in job_model_dir(tmp_path, "job-b").iterdir()) == [
        "card.json", "global.safetensors", "round-1",
    ]  # fmt: skip


def test_keep_last_is_the_default_and_writes_no_round_folders(tmp_path: Path) -> None:
    _save(tmp_path, "job-a", 1, torch.nn.Linear(3, 2), "last")
    _save(tmp_path, "job-a", 2, torch.nn.Linear(3, 2), "last")
    assert sorted(p.name for p in job_model_dir(tmp_path, "job-a").iterdir()) == [
        "card.json", "global.safetensors",
    ]  # fmt: skip
    peer = {"address": "127.0.0.1:1", "token_file": "t", "insecure": True}
    part = {"index": 0, "count": 1}
    doc = {"client_id": "c1", "server": peer, "keyauth": peer, "partition": part}
    assert ClientConfig.model_validate(doc).keep_models == "last"
    assert ClientConfig.model_validate({**doc, "keep_models": "every"}).keep_models == "every"
    with pytest.raises(ValueError):
        ClientConfig.model_validate({**doc, "keep_models": "all"})
    with pytest.raises(ValueError, match="keep must be one of"):
        _save(tmp_path, "job-a", 3, torch.nn.Linear(3, 2), "all")


def test_pretrained_export_loads_with_from_pretrained_and_gives_same_logits(
    tmp_path: Path,
) -> None:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = build_model("gpt-mini", (16,), 3).eval()
    card = _save(tmp_path, "job-lm", 2, model, "last")
    out = tmp_path / "hf"
    args = ["model", "export", str(card), "--format", "pretrained", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert (out / "config.json").is_file()
    loaded = AutoModelForSequenceClassification.from_pretrained(out, local_files_only=True)
    tokens = torch.randint(1, 8192, (4, 16))
    with torch.no_grad():
        want = model(tokens)
        got = loaded.eval()(input_ids=tokens).logits
    assert got.shape == (4, 3) and torch.allclose(got, want, atol=1e-5)
    # The plain state_dict stays the default; a non-transformers model cannot go pretrained.
    small = _save(tmp_path, "job-small", 1, build_model("mlp", (1, 4, 4), 2, 3), "last")
    plain = CliRunner().invoke(cli, ["model", "export", str(small), "--out", str(tmp_path / "m")])
    assert plain.exit_code == 0, plain.output
    args = ["model", "export", str(small), "--format", "pretrained", "--out", str(tmp_path / "x")]
    bad = CliRunner().invoke(cli, args)
    assert bad.exit_code != 0 and "not a transformers zoo model" in bad.output
    assert not (tmp_path / "x").exists()
