"""HETAL extractors and built-in transfer tasks: real torch, real tiny transformers on disk."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedhe_client.tasks.base import ArrayData, ArrayTask
from fedhe_client.transfer.datasets import (
    digits_transfer,
    load_transfer_task,
    site_features,
)
from fedhe_client.transfer.extractors import (
    FeatureExtractor,
    HFExtractor,
    IdentityExtractor,
    Pooling,
    TorchModuleExtractor,
    load_extractor,
)
from fedhe_client.transfer.pretrained import (
    FEATURE_DIM,
    IMAGE_SHAPE,
    WEIGHTS,
    random_digits_cnn,
)
from fedhe_common.config.models import SiteDataSection
from fedhe_common.errors import ConfigError


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


# --- built-in transfer tasks -------------------------------------------------------------


def test_digits_is_the_prototype_split() -> None:
    s = load_transfer_task("digits")
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (1077, 360, 360)
    assert s.dim == 64 and s.classes == 10 and s.x_train.dtype == np.float32
    assert s.x_train.max() == 16.0  # raw pixels, no preprocessing
    assert np.bincount(s.y_test).min() >= 35  # stratified
    again = load_transfer_task("digits")
    np.testing.assert_array_equal(s.x_train, again.x_train)


def _lr_cv(x: np.ndarray, y: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    return float(cross_val_score(model, x, y, cv=folds).mean())


def _all(s: object) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([s.x_train, s.x_val, s.x_test])  # type: ignore[attr-defined]
    return x, np.concatenate([s.y_train, s.y_val, s.y_test])  # type: ignore[attr-defined]


def test_digits_transfer_features_are_deterministic_and_beat_random_init() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    s = load_transfer_task("digits-transfer")
    assert s.dim == FEATURE_DIM and s.classes == 5 and s.x_train.dtype == np.float32
    assert sorted(set(s.y_train.tolist())) == [0, 1, 2, 3, 4]
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (537, 179, 180)
    np.testing.assert_array_equal(s.x_test, load_transfer_task("digits-transfer").x_test)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    assert model.fit(s.x_train, s.y_train).score(s.x_test, s.y_test) >= 0.95
    transfer = _lr_cv(*_all(s))
    for seed in (0, 1):
        rand = TorchModuleExtractor(random_digits_cnn(seed).features, IMAGE_SHAPE)
        baseline = _lr_cv(*_all(digits_transfer(extractor=rand)))
        assert transfer >= baseline + 0.01, (transfer, baseline)


def test_random_projection_768() -> None:
    s = load_transfer_task("random-projection-768")
    assert s.dim == 768 and s.classes == 10 and len(s.y_train) == 1077
    assert np.abs(s.x_train).max() <= 1.0 and np.linalg.matrix_rank(s.x_train[:800]) > 64


def test_unknown_task_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="digits-transfer"):
        load_transfer_task("cifar")


def test_shipped_weights_are_small_safetensors() -> None:
    from safetensors.torch import load_file

    assert WEIGHTS.stat().st_size < 200_000
    assert "features.6.weight" in load_file(str(WEIGHTS))  # no pickle involved


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rebuild_gives_an_equivalent_extractor(tmp_path: Path) -> None:
    from fedhe_client.transfer.pretrained import load_digits_cnn
    from fedhe_client.transfer.pretrained.train import rebuild

    out = rebuild(tmp_path / "w.safetensors")
    assert 0 < out.stat().st_size < 200_000
    rebuilt = TorchModuleExtractor(load_digits_cnn(out).features, IMAGE_SHAPE)
    shipped = _lr_cv(*_all(load_transfer_task("digits-transfer")))
    again = _lr_cv(*_all(digits_transfer(extractor=rebuilt)))
    rand = TorchModuleExtractor(random_digits_cnn(0).features, IMAGE_SHAPE)
    assert again >= _lr_cv(*_all(digits_transfer(extractor=rand))) + 0.01
    assert abs(again - shipped) <= 0.015, (again, shipped)


# --- torch module extractors ------------------------------------------------------------


class _Task(ArrayTask):
    name = "tiny"

    def build_model(self) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Flatten(), nn.Linear(16, 12), nn.Dropout(0.5), nn.ReLU(), nn.Linear(12, 3)
        )


class _OwnModuleTask(_Task):
    name = "own"

    def build_model(self) -> nn.Module:
        return nn.LSTM(4, 4)  # no usable head to strip

    def feature_extractor(self) -> nn.Module:
        torch.manual_seed(1)
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 5))


def _data(n: int = 37) -> ArrayData:
    rng = np.random.default_rng(0)
    return ArrayData(rng.random((n, 1, 4, 4), dtype=np.float32), rng.integers(0, 3, n))


def test_task_model_minus_head_in_batches_with_progress() -> None:
    data = _data()
    ext = load_extractor("task", "tiny", task=_Task(data, data))
    assert isinstance(ext, FeatureExtractor) and ext.dim == 12
    assert isinstance(ext, TorchModuleExtractor)
    ext.batch_size = 10
    calls: list[tuple[int, int]] = []
    feats = ext.extract(data.x, lambda done, total: calls.append((done, total)))
    assert feats.shape == (37, 12) and feats.dtype == np.float32
    assert calls == [(10, 37), (20, 37), (30, 37), (37, 37)]
    np.testing.assert_array_equal(feats, ext.extract(data.x))  # eval mode: dropout off
    assert (feats >= 0).all()  # the ReLU before the head is kept
    assert not any(p.requires_grad for p in ext.module.parameters())


def test_task_feature_extractor_method_is_preferred() -> None:
    data = _data(5)
    ext = load_extractor("task", task=_OwnModuleTask(data, data))
    assert ext.dim == 5 and ext.extract(data.x).shape == (5, 5)


def test_zoo_transformers_model_minus_head() -> None:
    from transformers import BertConfig, BertForSequenceClassification

    from fedhe_client.zoo.hf import LogitsOf

    class _Text(_Task):
        name = "text"

        def build_model(self) -> nn.Module:
            torch.manual_seed(0)
            config = BertConfig(
                vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=32, num_labels=3,
            )
            return LogitsOf(BertForSequenceClassification(config), "input_ids", tokens=True)

    ids = np.array([[3, 4, 5, 0, 0], [6, 7, 8, 9, 10]], dtype=np.float32)
    data = ArrayData(ids, np.zeros(2, dtype=np.int64))
    ext = load_extractor("task", task=_Text(data, data))
    feats = ext.extract(ids)
    assert ext.dim == 16 and feats.shape == (2, 16) and np.isfinite(feats).all()
    np.testing.assert_array_equal(feats, ext.extract(ids))


def test_task_errors() -> None:
    data = _data(5)

    class _Bad(_Task):
        name = "bad"

        def build_model(self) -> nn.Module:
            return nn.LSTM(4, 4)

    with pytest.raises(ConfigError, match="feature_extractor"):
        load_extractor("task", task=_Bad(data, data))
    with pytest.raises(ConfigError, match="runs 'tiny'"):
        load_extractor("task", "other", task=_Task(data, data))
    with pytest.raises(ConfigError, match="needs a task"):
        load_extractor("task")
    ext = load_extractor("task", task=_Task(data, data))
    with pytest.raises(ValueError, match="expected"):
        ext.extract(np.zeros((2, 1, 5, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="batch_size"):
        TorchModuleExtractor(nn.Flatten(), (4,), batch_size=0)


def test_builtin_and_identity_and_unknown_kinds() -> None:
    ext = load_extractor("builtin", "digits-cnn")
    x = np.zeros((3, *IMAGE_SHAPE), dtype=np.float32)
    assert ext.dim == FEATURE_DIM and ext.extract(x).shape == (3, FEATURE_DIM)
    ident = load_extractor("identity", "16")
    assert isinstance(ident, IdentityExtractor) and ident.extract(_data(4).x).shape == (4, 16)
    with pytest.raises(ConfigError, match="choose one of"):
        load_extractor("onnx", "m")
    with pytest.raises(ConfigError, match="never downloaded"):
        load_extractor("hf", "google/vit-base-patch16-224-in21k")
    with pytest.raises(ConfigError, match="digits-cnn"):
        load_extractor("builtin", "resnet")


# --- transformers from a local folder ----------------------------------------------------


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=16, patch_size=8, num_channels=3,
    )
    folder = tmp_path_factory.mktemp("vit")
    ViTModel(config).save_pretrained(folder)
    return folder


def test_vit_cls_features(vit_folder: Path) -> None:
    from transformers import ViTModel

    ext = load_extractor("hf", "tiny-vit", "cls", local_path=vit_folder)
    assert isinstance(ext, HFExtractor) and ext.dim == 32 and ext.pooling is Pooling.CLS
    x = np.random.default_rng(0).random((5, 3, 16, 16), dtype=np.float32)
    feats = ext.extract(x)
    assert feats.shape == (5, 32) and feats.dtype == np.float32
    np.testing.assert_array_equal(feats, ext.extract(x))
    ref = ViTModel.from_pretrained(vit_folder, local_files_only=True).eval()
    with torch.no_grad():
        want = ref(pixel_values=torch.from_numpy(x)).last_hidden_state[:, 0].numpy()
    np.testing.assert_allclose(feats, want, atol=1e-5)
    mean = HFExtractor(vit_folder, "mean").extract(x)
    assert not np.allclose(mean, feats)
    grey = ext.extract(np.random.default_rng(1).random((2, 1, 8, 8), dtype=np.float32))
    assert grey.shape == (2, 32)  # grey 8x8 digits: replicated to RGB, resized to 16


@pytest.mark.parametrize("arch", ["bert", "mpnet"])
def test_text_mean_pooling_ignores_padding(arch: str, tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel, MPNetConfig, MPNetModel

    torch.manual_seed(0)
    sizes = dict(
        vocab_size=50, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=48, max_position_embeddings=64,
    )
    model = BertModel(BertConfig(**sizes)) if arch == "bert" else MPNetModel(MPNetConfig(**sizes))
    model.save_pretrained(tmp_path)
    ext = load_extractor("hf", arch, local_path=tmp_path)
    assert ext.dim == 24 and isinstance(ext, HFExtractor) and ext.pooling is Pooling.MEAN
    pad = ext.pad_id
    ids = np.array([[5, 6, 7, pad, pad, pad], [8, 9, 10, 11, 12, 13]])
    short = np.array([[5, 6, 7]])
    feats = ext.extract(ids)
    assert feats.shape == (2, 24)
    np.testing.assert_allclose(feats[0], ext.extract(short)[0], atol=1e-5)
    cls = HFExtractor(tmp_path, "cls").extract(ids)
    assert not np.allclose(cls, feats)


def test_text_with_tokenizer_from_the_folder(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "private", "data", "stays", "home"]
    folder = tmp_path / "model"
    BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32,
    )
    BertModel(config).save_pretrained(folder)
    ext = HFExtractor(folder)
    feats = ext.extract(["private data stays home", "data", "home home"])
    assert feats.shape == (3, 16) and np.isfinite(feats).all()
    np.testing.assert_allclose(feats[1], ext.extract(["data"])[0], atol=1e-5)
    one, other = ext.extract(["data", "home"])  # the vocabulary is used (not all [UNK])
    assert not np.allclose(one, other)


def test_hf_errors(tmp_path: Path, vit_folder: Path) -> None:
    with pytest.raises(ConfigError, match="no such model folder"):
        HFExtractor(tmp_path / "absent")
    with pytest.raises(ConfigError, match=r"config\.json"):
        HFExtractor(tmp_path)
    with pytest.raises(ConfigError, match="pooling"):
        HFExtractor(vit_folder, "max")
    with pytest.raises(ValueError, match="channels"):
        HFExtractor(vit_folder).extract(np.zeros((1, 2, 16, 16), dtype=np.float32))
    from transformers import BertConfig, BertModel

    bert = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
                         num_attention_heads=1, intermediate_size=8)).save_pretrained(bert)
    with pytest.raises(ConfigError, match="tokenizer"):
        HFExtractor(bert).extract(["no tokenizer saved"])


# --- a site's own data -------------------------------------------------------------------


def test_site_features_from_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "site.npz"
    np.savez(path, x=rng.random((50, 4, 4), dtype=np.float32), y=rng.integers(0, 3, 50))
    section = SiteDataSection(format="npz", path=str(path), val_fraction=0.2)
    ext = TorchModuleExtractor(nn.Sequential(nn.Flatten(), nn.Linear(16, 6)), (1, 4, 4))
    s = site_features(section, ext, test_fraction=0.25)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (30, 10, 10)
    assert s.dim == 6 and s.classes == 3 and s.x_train.dtype == np.float32
    with pytest.raises(ConfigError, match="test_fraction"):
        site_features(section, ext, test_fraction=1.0)
