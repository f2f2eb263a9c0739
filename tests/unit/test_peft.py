"""LoRA (job option ``peft:``): only adapters and the head travel; the frozen base is pinned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from fedhe_client.learner import LocalLearner, check_layout
from fedhe_client.peft_support import FROZEN_ENTRY, apply_peft, frozen_fingerprint
from fedhe_client.tasks.base import TaskSetup
from fedhe_client.tasks.textgen import TOPICS, TextGenTask, encode, sentences, vocabulary
from fedhe_client.zoo import reference_model
from fedhe_common.config.models import JobConfig, PeftSection
from fedhe_common.errors import ConfigError, ManifestMismatchError
from fedhe_common.mlbridge.flatten import build_manifest, flatten

HIDDEN, LAYERS, R = 32, 2, 4
ADAPTERS = LAYERS * 2 * (R * HIDDEN + HIDDEN * R)  # query and value, A and B
HEAD = HIDDEN * len(TOPICS) + len(TOPICS)


def _job(peft: dict[str, Any] | None = None, **params: Any) -> JobConfig:
    return JobConfig.model_validate(
        {
            "job": {"name": "lora", "rounds": 2, "seed": 3},
            "task": {"name": "textgen", "params": {"samples": 32, "val_samples": 32, **params}},
            "training": {"local_epochs": 1, "lr": 0.02, "batch_size": 8, "optimizer": "adam"},
            "peft": peft,
        }
    )


def _learner(job: JobConfig, client: str = "c0") -> LocalLearner:
    assert job.task is not None
    task = TextGenTask(TaskSetup(dict(job.task.params), None, job.job.seed, client))
    return LocalLearner(job, 0, 1, device="cpu", task=task)


def test_only_adapters_and_head_travel() -> None:
    full = _learner(_job())
    lora = _learner(_job({"r": R, "alpha": 8}))
    assert lora.manifest.total == ADAPTERS + HEAD == 1156
    assert full.manifest.total > 15 * lora.manifest.total
    names = [e.name for e in lora.manifest.entries]
    assert all("lora_" in n or ".classifier." in n for n in names)
    assert [e.name for e in lora.manifest.excluded] == [FROZEN_ENTRY]
    vector, _ = lora.train_round(1)
    assert vector.shape == (lora.manifest.total,)


def test_load_vector_sets_adapters_and_leaves_the_base() -> None:
    lora = _learner(_job({"r": R}))
    assert lora.peft is not None
    before = frozen_fingerprint(lora.model, lora.peft)
    frozen = {n: p.detach().clone() for n, p in lora.model.named_parameters() if
              not p.requires_grad}  # fmt: skip
    vector = np.linspace(-0.1, 0.1, lora.manifest.total)
    lora.load_vector(vector)
    got, _ = flatten(lora._travelling())
    np.testing.assert_allclose(got, vector, atol=1e-7)
    assert frozen_fingerprint(lora.model, lora.peft) == before
    for n, p in lora.model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n])


def test_same_seed_same_base_and_layout_on_every_site() -> None:
    job = _job({"r": R})
    a, b = _learner(job, "c0"), _learner(job, "c1")  # different data, same base
    assert a.manifest.layout_id == b.manifest.layout_id


def test_another_frozen_base_is_refused() -> None:
    mine = _learner(_job({"r": R}))
    other = _learner(_job({"r": R}, init_range=0.03))  # same shapes, other base weights
    assert [e.name for e in other.manifest.entries] == [e.name for e in mine.manifest.entries]
    assert other.manifest.layout_id != mine.manifest.layout_id
    with pytest.raises(ManifestMismatchError, match="differs from the job's"):
        check_layout(mine.manifest.layout_id, other.manifest.layout_id)
    assert mine.peft is not None
    pinned = _learner(_job({"r": R, "base_sha256": mine.peft.frozen_sha256}))
    assert pinned.manifest.layout_id == mine.manifest.layout_id
    with pytest.raises(ManifestMismatchError, match="frozen base sha256"):
        _learner(_job({"r": R, "base_sha256": mine.peft.frozen_sha256}, init_range=0.03))


def test_bad_peft_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="target_modules"):
        _learner(_job({"r": R, "target_modules": ["nope"]}))
    with pytest.raises(ConfigError, match="modules_to_save"):
        _learner(_job({"r": R, "modules_to_save": ["nope"]}))
    for bad in ({"r": 0}, {"method": "ia3"}, {"dropout": 1.0}, {"base_sha256": "xyz"}):
        with pytest.raises(ValidationError):
            _job(bad)


def test_zoo_transformers_on_meta_bert_base_counts() -> None:
    model = reference_model("bert-base")
    with torch.device("meta"):
        model, info = apply_peft(model, PeftSection(r=8, target_modules=["query", "value"]))
    manifest = build_manifest({n: model.get_parameter(n) for n in info.trainable})
    adapters = sum(e.length for e in manifest.entries if "lora_" in e.name)
    assert adapters == 294_912
    assert manifest.total == 294_912 + 768 * 2 + 2
    assert info.frozen_values > 100_000_000


@pytest.mark.parametrize(("name", "target"), [("gpt-mini", "c_attn"), ("vit-base", "q_proj")])
def test_default_targets_of_other_zoo_models(name: str, target: str) -> None:
    model = reference_model(name)
    with torch.device("meta"):
        model, info = apply_peft(model, PeftSection(r=2))
    assert any(f".{target}.lora_A." in n for n in info.trainable)
    head = "score" if name == "gpt-mini" else "classifier"
    assert any(f".{head}." in n for n in info.trainable)


def test_text_task_data_and_tokenizer() -> None:
    texts, labels = sentences(50, seed=1)
    again, labels2 = sentences(50, seed=1)
    assert texts == again and np.array_equal(labels, labels2)
    vocab = vocabulary()
    ids = encode(texts, vocab, 8)
    assert ids.shape == (50, 8) and (ids[:, 0] == vocab["[CLS]"]).all()
    assert (ids != vocab["[UNK]"]).all()  # every generated word is in the vocabulary
    for text, label in zip(texts, labels, strict=True):  # the class is the keywords'
        keys = [k for k in text.split() if any(k in ks for ks in TOPICS.values())]
        assert keys and all(k in list(TOPICS.values())[label] for k in keys)
    with pytest.raises(ConfigError, match="seq_len"):
        TextGenTask(TaskSetup({"seq_len": 2}, None, 0, "c0"))


def test_lora_table_bert_base_under_target_and_llama_by_layout() -> None:
    from fedhe_cli.bench.models_bench import run_lora_bench

    bert, llama = run_lora_bench(models=("bert-base",))
    assert (bert.model, bert.measured, llama.model, llama.measured) == (
        "bert-base", True, "llama-2-7b", False
    )  # fmt: skip
    assert bert.lora_values == 294_912 + 768 * 2 + 2
    assert bert.full_values == 109_483_778
    assert bert.lora_encrypted_bytes <= 2.5e6  # issue 12 target (paper: 16.66 MB)
    assert bert.lora_plain_bytes >= 1.1e6
    assert bert.plain_bytes < bert.full_encrypted_bytes
    assert llama.lora_values == 32 * 2 * 2 * 4096 * 8 + 4096 * 2
    assert llama.lora_encrypted_bytes > bert.lora_encrypted_bytes


def test_own_transformers_folder_keeps_the_base_fingerprint(tmp_path: Path) -> None:
    mine = _learner(_job({"r": R}))
    assert mine.peft is not None
    fresh = _learner(_job())  # the same seeded bert-tiny, without adapters
    fresh.model.net.save_pretrained(tmp_path / "own-bert")  # type: ignore[union-attr,operator]
    own = _learner(_job({"r": R}, model_dir=str(tmp_path / "own-bert")))
    assert own.peft is not None
    assert own.manifest.total == mine.manifest.total
    assert own.peft.frozen_sha256 == mine.peft.frozen_sha256  # same base, loaded from disk
    assert own.manifest.layout_id == mine.manifest.layout_id
    with pytest.raises(ConfigError, match=r"no config\.json"):
        _learner(_job({"r": R}, model_dir=str(tmp_path / "missing")))


def test_selective_scores_cover_the_adapter_vector() -> None:
    lora = _learner(_job({"r": R}))
    for method in ("exact", "random"):
        scores = lora.sensitivity(method, 8)
        assert scores.shape == (lora.manifest.total,)
        assert np.isfinite(scores).all()
    assert lora.sensitivity("exact", 8).any()


def test_bench_round_client_sends_only_adapters_under_lora() -> None:
    """`fedhe bench round --peft lora`: a benchmark client's update is the adapter vector."""
    from fedhe_cli.bench.round_client import client_vector

    full, full_layout = client_vector("gpt-mini", 0)
    lora, lora_layout = client_vector("gpt-mini", 0, "lora")
    assert 0 < lora.size < full.size // 10
    assert lora_layout != full_layout
    again, again_layout = client_vector("gpt-mini", 1, "lora")
    assert again_layout == lora_layout and again.size == lora.size  # same base on every client
