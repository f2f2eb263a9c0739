"""Tasks from the client's own config, site-local data loaders, refusals, the model out."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from pydantic import ValidationError

from fedhe_cli.app import cli
from fedhe_cli.model_cli import load_kept_model
from fedhe_client.learner import LocalLearner, check_layout, learner_for_client
from fedhe_client.model_out import save_global
from fedhe_client.tasks import BUILTIN_TASK, TaskSetup, build_task, load_site_data, resolve_task
from fedhe_common.config.load import parse_yaml
from fedhe_common.config.models import ClientConfig, JobConfig, SiteDataSection
from fedhe_common.errors import ConfigError, ManifestMismatchError

TASK_MODULE = '''
from torch import nn
from fedhe_client.tasks import ArrayTask, load_site_data

class Tiny(ArrayTask):
    name = "tiny"
    def __init__(self, setup):
        train, val, names = load_site_data(setup.data)
        super().__init__(train, val)
        self.hidden = int(setup.params.get("hidden", 4))
        self.classes = len(names)
    def build_model(self):
        return nn.Sequential(nn.Flatten(), nn.Linear(16, self.hidden), nn.ReLU(),
                             nn.Linear(self.hidden, self.classes))

def make_task(setup):
    return Tiny(setup)

NOT_A_TASK = 3
'''


def _images(root: Path, per_class: int = 6, size: int = 6, classes: tuple[str, ...] = ("a", "b")):
    rng = np.random.default_rng(0)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = (rng.random((size, size)) * 100 + 150 * label).astype(np.uint8)
            Image.fromarray(arr, "L").save(root / name / f"{i}.png")
    return root


def _client(tmp_path: Path, task: str | None, data: dict[str, object] | None) -> ClientConfig:
    peer = {"address": "127.0.0.1:1", "token_file": "t", "insecure": True}
    doc: dict[str, object] = {
        "client_id": "c1",
        "server": peer,
        "keyauth": peer,
        "partition": {"index": 0, "count": 1},
        "state_dir": str(tmp_path / "state"),
    }
    if task:
        doc["task"] = task
    if data:
        doc["data"] = data
    return ClientConfig.model_validate(doc)


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "site_tasks.py").write_text(TASK_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "site_tasks"


# ------------------------------------------------------------------ data loaders
def test_image_folder_resizes_and_labels_by_sorted_folders(tmp_path: Path) -> None:
    _images(tmp_path / "img", per_class=5, size=10)
    (tmp_path / "img" / "a" / "notes.txt").write_text("ignored")
    section = SiteDataSection(format="images", path=str(tmp_path / "img"), image_size=[4, 4])
    train, val, names = load_site_data(section)
    assert names == ["a", "b"] and len(train) + len(val) == 10 and len(val) == 2
    assert train.x.shape[1:] == (1, 4, 4) and train.x.dtype == np.float32
    assert train.x.min() >= 0.0 and train.x.max() <= 1.0
    rgb = section.model_copy(update={"channels": 3})
    assert load_site_data(rgb)[0].x.shape[1:] == (3, 4, 4)


def test_image_folder_fixed_classes_and_errors(tmp_path: Path) -> None:
    root = _images(tmp_path / "img", classes=("b",))  # this site has no 'a' images
    section = SiteDataSection(
        format="images", path=str(root), classes=["a", "b"], val_path=str(root)
    )
    train, val, names = load_site_data(section)
    assert names == ["a", "b"] and set(train.y.tolist()) == {1} and len(val) == len(train)
    with pytest.raises(ConfigError, match="not among the configured classes"):
        load_site_data(section.model_copy(update={"classes": ["a"]}))
    (root / "b" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="not a readable image"):
        load_site_data(section)
    with pytest.raises(ConfigError, match="does not exist"):
        load_site_data(section.model_copy(update={"path": str(tmp_path / "nope")}))


def test_npz_loader(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.random.rand(20, 5, 5), y=np.arange(20) % 3)
    train, val, names = load_site_data(SiteDataSection(format="npz", path=str(path)))
    assert train.x.shape[1:] == (1, 5, 5) and len(val) == 4 and names == []
    np.savez(tmp_path / "obj.npz", x=np.array([object()], dtype=object), y=np.zeros(1))
    with pytest.raises(ConfigError, match="no pickled objects"):
        load_site_data(SiteDataSection(format="npz", path=str(tmp_path / "obj.npz")))


def test_csv_loader_and_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    rows = ["f1,label,f2"] + [f"{i * 0.5},{i % 2},{-i}" for i in range(10)]
    path.write_text("\n".join(rows) + "\n")
    section = SiteDataSection(format="csv", path=str(path), val_fraction=0.3, split_seed=1)
    train, val, _ = load_site_data(section)
    assert train.x.shape == (7, 2) and len(val) == 3
    both = np.concatenate([train.x, val.x])
    assert sorted(both[:, 1].tolist()) == sorted(-float(i) for i in range(10))  # f1, f2 order
    only = section.model_copy(update={"feature_columns": ["f2"]})
    assert load_site_data(only)[0].x.shape == (7, 1)
    path.write_text("f1,label\n1.0,0\nabc,1\n")
    with pytest.raises(ConfigError, match="not numeric"):
        load_site_data(section)
    path.write_text("f1,label\n1.0,0.5\n2.0,1\n")
    with pytest.raises(ConfigError, match="integers"):
        load_site_data(section)
    with pytest.raises(ConfigError, match="no label column 'y'"):
        load_site_data(section.model_copy(update={"label_column": "y"}))


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow installed")
def test_parquet_without_pyarrow_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    with pytest.raises(ConfigError, match="needs the pyarrow package"):
        load_site_data(SiteDataSection(format="parquet", path=str(tmp_path / "t.parquet")))


def test_hf_datasets_directory(tmp_path: Path) -> None:
    if importlib.util.find_spec("datasets") is None:
        (tmp_path / "ds").mkdir()
        with pytest.raises(ConfigError, match="needs the datasets package"):
            load_site_data(SiteDataSection(format="hf", path=str(tmp_path / "ds")))
        pytest.skip("datasets not installed: only the clear error is checked")
    import datasets

    table = {"a": [0.1 * i for i in range(10)], "label": [0, 1] * 5}
    datasets.Dataset.from_dict(table).save_to_disk(str(tmp_path / "ds"))
    train, val, _ = load_site_data(SiteDataSection(format="hf", path=str(tmp_path / "ds")))
    assert train.x.shape == (8, 1) and len(val) == 2


# ------------------------------------------------------------------ tasks + refusals
@pytest.mark.parametrize("name", ["site_tasks:make_task", "os.path", "a/b", "..x"])
def test_a_job_cannot_name_a_module_path(name: str) -> None:
    with pytest.raises(ConfigError, match="never a module path"):
        parse_yaml(f"job: {{name: j, rounds: 1}}\ntask: {{name: '{name}'}}", JobConfig)


def test_user_task_from_client_config_trains(tmp_path: Path, user_module: str) -> None:
    _images(tmp_path / "img", size=4)
    data = {"format": "images", "path": str(tmp_path / "img"), "image_size": [4, 4]}
    config = _client(tmp_path, f"{user_module}:make_task", data)
    job = parse_yaml(
        "job: {name: j, rounds: 1}\ntask: {name: tiny, params: {hidden: 3}}", JobConfig
    )
    learner = learner_for_client(config, job)
    assert learner.task.name == "tiny" and learner.sample_count == 10
    assert learner.manifest.total == 16 * 3 + 3 + 3 * 2 + 2  # the job's params reached it
    vector, loss = learner.train_round(1)
    assert np.isfinite(loss) and vector.size == learner.manifest.total
    assert set(learner.evaluate()) >= {"accuracy", "loss"}
    assert learner.sensitivity("exact", 4).shape == (learner.manifest.total,)


def test_task_name_mismatch_is_refused(tmp_path: Path, user_module: str) -> None:
    _images(tmp_path / "img", size=4)
    data = {"format": "images", "path": str(tmp_path / "img"), "image_size": [4, 4]}
    config = _client(tmp_path, f"{user_module}:make_task", data)
    other = parse_yaml("job: {name: j, rounds: 1}\ntask: {name: resnet}", JobConfig)
    with pytest.raises(ConfigError, match=r"job runs task 'resnet'.*'tiny'"):
        resolve_task(config, other)
    builtin = parse_yaml("job: {name: j, rounds: 1}", JobConfig)  # no task: the built-in one
    with pytest.raises(ConfigError, match=f"job runs task '{BUILTIN_TASK}'"):
        resolve_task(config, builtin)
    with pytest.raises(ConfigError, match="no task configured"):
        resolve_task(_client(tmp_path, None, None), other)


def test_bad_task_references_are_clear_errors(tmp_path: Path, user_module: str) -> None:
    setup = TaskSetup(params={}, data=None, seed=0)
    with pytest.raises(ConfigError, match="cannot import"):
        build_task("no_such_module_xyz:make", setup)
    with pytest.raises(ConfigError, match="has no attribute"):
        build_task(f"{user_module}:missing", setup)
    with pytest.raises(ConfigError, match="not a Task"):
        build_task(f"{user_module}:NOT_A_TASK", setup)
    with pytest.raises(ConfigError, match="no entry point"):
        build_task("no-such-task", setup)
    with pytest.raises(ValidationError, match="'module:attr' or an entry point"):
        _client(tmp_path, "not a ref!", None)


def test_layout_mismatch_is_refused_before_round_one() -> None:
    job = parse_yaml("job: {name: j, rounds: 1}", JobConfig)
    actual = LocalLearner(job, 0, 3).manifest.layout_id
    check_layout(actual, actual)
    check_layout("", actual)  # not pinned yet
    pinned = parse_yaml(
        f"job: {{name: j, rounds: 1}}\ntask: {{name: builtin, layout_id: '{'ab' * 32}'}}",
        JobConfig,
    )
    with pytest.raises(ManifestMismatchError, match="differs from the job's"):
        LocalLearner(pinned, 0, 3)


def test_builtin_task_on_site_images(tmp_path: Path) -> None:
    _images(tmp_path / "img", size=8)
    data = {"format": "images", "path": str(tmp_path / "img"), "image_size": [8, 8]}
    job = parse_yaml("job: {name: j, rounds: 1}\nmodel: {name: mlp, hidden: 5}", JobConfig)
    learner = learner_for_client(_client(tmp_path, None, data), job)
    assert learner.sample_count == 10 and learner.manifest.total == 64 * 5 + 5 + 5 * 2 + 2


def _tokens(path: Path, rows: int = 10) -> Path:
    ids = [" ".join(str(5 + (i * 7 + j) % 50) for j in range(3 + i)) for i in range(rows)]
    lines = [f"{i % 2}\t{tokens}" for i, tokens in enumerate(ids)]
    path.write_text("\n".join(lines[:5]) + "\n\n" + "\n".join(lines[5:]) + "\n")
    return path


def test_token_file_is_padded_and_truncated_to_seq_len(tmp_path: Path) -> None:
    path = _tokens(tmp_path / "train.tsv")
    section = SiteDataSection(format="tokens", path=str(path), seq_len=6, val_fraction=0.2)
    train, val, names = load_site_data(section)
    assert names == [] and train.x.shape == (8, 6) and val.x.shape == (2, 6)
    full = np.concatenate([train.x, val.x])
    assert sorted(full[:, 0].tolist()) == sorted(float(5 + (i * 7) % 50) for i in range(10))
    short = full[(full[:, 4:] == 0).all(axis=1)]  # 3 or 4 tokens: padded with pad_id 0
    assert len(short) == 2 and set(np.concatenate([train.y, val.y]).tolist()) == {0, 1}


@pytest.mark.parametrize(
    ("line", "why"),
    [("1 5 6 7", "no tab"), ("x\t5 6", "invalid literal"), ("1\t5 six", "invalid literal"),
     ("1\t", "1\\+ token ids"), ("-1\t5", "label >= 0"), ("0\t-3 4", "token ids in")],
)
def test_malformed_token_lines_are_refused_naming_file_and_line(
    tmp_path: Path, line: str, why: str
) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text(f"0\t1 2 3\n\n{line}\n1\t4 5\n")
    with pytest.raises(ConfigError, match=rf"bad.tsv line 3: .*{why}"):
        load_site_data(SiteDataSection(format="tokens", path=str(path), seq_len=4))


def test_builtin_gpt_mini_trains_on_a_site_token_file(tmp_path: Path) -> None:
    path = _tokens(tmp_path / "train.tsv")
    data = {"format": "tokens", "path": str(path), "seq_len": 16}
    job = parse_yaml(
        "job: {name: j, rounds: 1}\nmodel: {name: gpt-mini}\ntraining: {batch_size: 4}", JobConfig
    )
    learner = learner_for_client(_client(tmp_path, None, data), job)
    assert learner.sample_count == 8
    learner.train_round(1)
    metrics = learner.evaluate()
    assert 0.0 <= metrics["accuracy"] <= 1.0 and np.isfinite(metrics["loss"])


# ------------------------------------------------------------------ the model out
def test_kept_model_exports_to_a_plain_torch_state_dict(tmp_path: Path) -> None:
    job = parse_yaml("job: {name: j, rounds: 1}", JobConfig)
    learner = LocalLearner(job, 0, 3)
    learner.train_round(1)
    metrics = learner.evaluate()
    card = save_global(
        tmp_path, "job-1", 1, learner.model, learner.manifest.layout_id, "builtin", metrics
    )
    save_global(tmp_path, "job-2", 7, torch.nn.Linear(2, 2), "x", "other", {})
    assert json.loads(card.read_text())["round"] == 1  # another job did not overwrite it
    out = tmp_path / "model.pt"
    result = CliRunner().invoke(cli, ["model", "export", str(card.parent), "--out", str(out)])
    assert result.exit_code == 0, result.output
    fresh = LocalLearner(job, 0, 3)
    fresh.model.load_state_dict(torch.load(out, weights_only=True))
    assert fresh.evaluate() == metrics
    blob = bytearray((card.parent / "global.safetensors").read_bytes())
    blob[-1] ^= 1
    (card.parent / "global.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ConfigError, match="sha256 differs"):
        load_kept_model(card)
    bad = CliRunner().invoke(cli, ["model", "export", str(tmp_path / "none"), "--out", str(out)])
    assert bad.exit_code != 0 and "cannot read the model card" in bad.output


def test_task_from_an_entry_point(tmp_path: Path, user_module: str) -> None:
    dist = tmp_path / "site_tasks-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: site-tasks\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[fedhe.tasks]\ntiny = {user_module}:make_task\n")
    _images(tmp_path / "img", size=4)
    data = SiteDataSection(format="images", path=str(tmp_path / "img"), image_size=[4, 4])
    task = build_task("tiny", TaskSetup(params={}, data=data, seed=0))
    assert task.name == "tiny" and len(task.train_data()) == 10
