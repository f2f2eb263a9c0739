"""`fedhe bench models` on two tiny zoo models: the JSON contract and sane figures."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from fedhe_cli.app import cli
from fedhe_cli.bench.models_bench import DEFAULT_MODELS, model_size
from fedhe_common.crypto.presets import DEFAULT_PRESET

ROW_KEYS = {
    "model",
    "n_params",
    "config",
    "plain_bytes",
    "upload_bytes",
    "download_bytes",
    "client_cpu_s",
    "server_cpu_s_per_client",
    "decrypt_cpu_s",
}


def test_bench_models_json_for_two_tiny_models(tmp_path: Path) -> None:
    out = tmp_path / "models.json"
    result = CliRunner().invoke(
        cli, ["bench", "models", "--models", "linear,lenet", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    rows = doc["results"]
    assert [(r["model"], r["config"]) for r in rows] == [
        (m, c)
        for m in ("linear", "lenet")
        for c in (DEFAULT_PRESET, "single-key", "nvflare-default", "paper-default")
    ]
    for r in rows:
        assert set(r) == ROW_KEYS
        assert r["upload_bytes"] > r["plain_bytes"] > 0
        assert r["download_bytes"] > 0
        assert r["client_cpu_s"] > 0 and r["decrypt_cpu_s"] > 0
    assert {r["n_params"] for r in rows} == {7_850, 61_706}
    assert rows[0]["plain_bytes"] == 4 * 7_850
    ours = {r["model"]: r for r in rows if r["config"] == DEFAULT_PRESET}
    nvflare = {r["model"]: r for r in rows if r["config"] == "nvflare-default"}
    assert ours["lenet"]["upload_bytes"] < nvflare["lenet"]["upload_bytes"]
    ratio = [x for x in doc["ratios"] if x["model"] == "lenet" and x["config"] == "paper-default"]
    assert ratio[0]["ours_vs_baseline_upload"] < 1


def test_scaling_from_a_measured_prefix_matches_the_whole(tmp_path: Path) -> None:
    """Bytes extrapolated from a prefix equal the bytes of measuring every value."""
    from fedhe_cli.bench.crypto_bench import PATH_FACTORIES
    from fedhe_cli.bench.models_bench import ModelSize, bench_model

    path = PATH_FACTORIES["nvflare-default"]()
    size = ModelSize("x", 40_000, 40_000)
    whole = bench_model(size, [path], measure_values=0)[0]
    part = bench_model(size, [path], measure_values=8_192)[0]
    assert abs(part.upload_bytes - whole.upload_bytes) <= 0.01 * whole.upload_bytes
    assert part.plain_bytes == whole.plain_bytes


def test_default_run_covers_the_papers_models_and_bad_names_are_refused() -> None:
    assert {"linear", "cnn", "resnet18", "resnet50", "mobilenetv2", "vit-base", "bert-base"} <= set(
        DEFAULT_MODELS
    )
    assert model_size("bert-base").values > 109_482_240
    result = CliRunner().invoke(cli, ["bench", "models", "--models", "resnet9"])
    assert result.exit_code != 0 and "unknown model" in result.output
    result = CliRunner().invoke(cli, ["bench", "models", "--configs", "nope"])
    assert result.exit_code != 0 and "unknown config" in result.output
