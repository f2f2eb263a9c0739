"""The model zoo: known parameter counts (meta device), training options, the job's list."""

from __future__ import annotations

import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from fedhe_client.trainer import pick_device, round_lr, train
from fedhe_client.zoo import ZOO, build_model, count_params, reference_model
from fedhe_common.config.models import ModelSection, TrainingSection, ZooName
from fedhe_common.errors import ConfigError

# torchvision / transformers reference counts (ImageNet heads, 1000 classes).
KNOWN = {
    "lenet": 61_706,  # LeNet-5, 1x28x28, 10 classes
    "cnn": 1_663_370,  # FedML-HE's CNN
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "mobilenetv2": 3_504_872,
    "vit-base": 86_567_656,  # ViT-B/16 with a 1000-class head
    "bert-base": 109_482_240 + 768 * 2 + 2,  # BertModel + a 2-class head
}


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_zoo_parameter_counts(name: str) -> None:
    model = reference_model(name)  # meta device: shapes only
    assert count_params(model) == KNOWN[name]
    assert all(p.is_meta for p in model.parameters())


def test_bert_base_and_gpt2_backbones_match_the_published_sizes() -> None:
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

    with torch.device("meta"):
        assert count_params(BertModel(BertConfig())) == 109_482_240
        assert count_params(GPT2Model(GPT2Config())) == 124_439_808


def test_the_jobs_model_names_are_the_zoo() -> None:
    assert set(typing.get_args(ZooName)) == set(ZOO)
    with pytest.raises(ValidationError):
        ModelSection(name="resnet9000")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("linear", (1, 8, 8)),
        ("lenet", (1, 8, 8)),
        ("lenet", (3, 32, 32)),
        ("lenet-dlg", (1, 8, 8)),
        ("resnet18", (3, 32, 32)),
        ("mobilenetv2", (3, 32, 32)),
        ("vit-base", (3, 32, 32)),
        ("gpt-mini", (16,)),
    ],
)
def test_zoo_models_give_logits_for_small_inputs(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(name, shape, 3)
    x = torch.randint(0, 100, (2, *shape)).float() if len(shape) == 1 else torch.rand(2, *shape)
    assert model(x).shape == (2, 3)


def test_bad_inputs_for_a_model_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="needs images"):
        build_model("resnet18", (16,), 2)
    with pytest.raises(ValueError, match="multiple of 16"):
        build_model("vit-base", (3, 28, 28), 2)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("nope", (1, 8, 8), 2)


def test_learning_rate_schedules() -> None:
    cos = TrainingSection(lr=0.1, lr_schedule="cosine", lr_min=0.01)
    assert round_lr(cos, 1, 5) == pytest.approx(0.1)
    assert round_lr(cos, 3, 5) == pytest.approx(0.055)
    assert round_lr(cos, 5, 5) == pytest.approx(0.01)
    step = TrainingSection(lr=0.1, lr_schedule="step", lr_step_rounds=2, lr_gamma=0.5)
    assert [round_lr(step, r, 6) for r in (1, 2, 3, 5)] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    assert round_lr(TrainingSection(lr=0.1), 9, 10) == 0.1


@pytest.mark.parametrize(
    "fields",
    [
        {"optimizer": "rmsprop"},
        {"optimizer": "adam", "momentum": 0.9},
        {"lr_schedule": "cosine", "lr": 0.1, "lr_min": 0.2},
        {"clip_grad_norm": 0},
        {"prox_mu": -1},
        {"lr_gamma": 1.5},
    ],
)
def test_bad_training_fields_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TrainingSection(**fields)  # type: ignore[arg-type]


def _blobs(n: int = 96) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 1, (n, 1, 4, 4)).astype(np.float32) + y[:, None, None, None] * 1.5
    return x.astype(np.float32), y.astype(np.int64)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_every_optimizer_lowers_the_loss(optimizer: str) -> None:
    x, y = _blobs()
    cfg = TrainingSection(optimizer=optimizer, lr=0.01, local_epochs=5, clip_grad_norm=1.0)  # type: ignore[arg-type]
    torch.manual_seed(0)
    model = build_model("linear", (1, 4, 4), 2)
    first = train(model, x, y, TrainingSection(lr=1e-9), 0, torch.device("cpu"), False)
    last = train(model, x, y, cfg, 0, torch.device("cpu"), False)
    assert last < first


def test_fedprox_keeps_the_update_closer_to_the_global_model() -> None:
    x, y = _blobs()

    def drift(mu: float) -> float:
        torch.manual_seed(0)
        model = build_model("mlp", (1, 4, 4), 2, hidden=8)
        start = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        cfg = TrainingSection(lr=0.2, local_epochs=3, prox_mu=mu)
        train(model, x, y, cfg, 0, torch.device("cpu"), False)
        end = torch.cat([p.detach().flatten() for p in model.parameters()])
        return float((end - start).norm())

    assert drift(5.0) < 0.8 * drift(0.0)


def test_cuda_without_cuda_is_a_config_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="no usable CUDA"):
        pick_device("cuda")
    assert pick_device("auto").type == "cpu"


def test_batchnorm_models_train_when_the_last_batch_has_one_sample() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((9, 3, 32, 32)).astype(np.float32)  # 9 = 8 + a batch of 1
    y = rng.integers(0, 2, 9).astype(np.int64)
    torch.manual_seed(0)
    model = build_model("resnet18", (3, 32, 32), 2)
    cfg = TrainingSection(batch_size=8, lr=0.01)
    loss = train(model, x, y, cfg, 0, torch.device("cpu"), False)
    assert np.isfinite(loss)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_client_trains_with_amp_and_maps_sensitivity_on_the_gpu() -> None:
    from fedhe_client.learner import LocalLearner
    from fedhe_common.config.load import parse_yaml
    from fedhe_common.config.models import JobConfig

    job = parse_yaml(
        "job: {name: gpu, rounds: 2, seed: 0}\nmodel: {name: lenet}\n"
        "data: {dataset: digits28}\ntraining: {amp: true, clip_grad_norm: 1.0, prox_mu: 0.01}\n",
        JobConfig,
    )
    gpu = LocalLearner(job, 0, 3, 64, device="cuda")
    cpu = LocalLearner(job, 0, 3, 64, device="cpu")
    assert gpu.device.type == "cuda"
    before = gpu.sensitivity("exact", 16)
    np.testing.assert_allclose(before, cpu.sensitivity("exact", 16), rtol=1e-3, atol=1e-6)
    vector, loss = gpu.train_round(1)
    assert np.isfinite(vector).all() and np.isfinite(loss)
    assert next(gpu.model.parameters()).is_cuda
    gpu.load_vector(vector)
    assert next(gpu.model.parameters()).is_cuda
    assert 0.0 <= gpu.evaluate()["accuracy"] <= 1.0


def test_a_text_model_trains_on_a_sites_token_ids(tmp_path: Path) -> None:
    from fedhe_client.learner import LocalLearner
    from fedhe_client.tasks import BuiltinTask
    from fedhe_common.config.load import parse_yaml
    from fedhe_common.config.models import JobConfig, SiteDataSection

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    x = rng.integers(2, 100, (40, 12)) + 100 * y[:, None]  # the label shows in the ids
    np.savez(tmp_path / "tokens.npz", x=x, y=y)
    job = parse_yaml(
        "job: {name: text, rounds: 1}\nmodel: {name: gpt-mini}\n"
        "training: {optimizer: adamw, lr: 0.001, batch_size: 8}\n",
        JobConfig,
    )
    site = SiteDataSection(format="npz", path=str(tmp_path / "tokens.npz"))
    learner = LocalLearner(job, 0, 1, task=BuiltinTask(job, site=site), device="cpu")
    vector, loss = learner.train_round(1)
    assert vector.size == learner.manifest.total and np.isfinite(loss)
    assert set(learner.evaluate()) >= {"accuracy", "loss"}
    learner.model.net.save_pretrained(tmp_path / "hf")  # a transformers folder
    assert (tmp_path / "hf" / "config.json").exists()
    images = parse_yaml("job: {name: t, rounds: 1}\nmodel: {name: resnet18}\n", JobConfig)
    with pytest.raises(ConfigError, match="needs images"):
        BuiltinTask(images, site=site)
