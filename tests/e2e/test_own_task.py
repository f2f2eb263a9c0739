"""A user's own task module and image folder per site, through the three services.

The task module lives in a temp folder on the clients' PYTHONPATH (their environment);
the job names the task only by its registered name. The model each client keeps is
exported with ``fedhe model export`` and reproduces the accuracy the last round reported.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from fedhe_cli.app import cli
from fedhe_cli.cluster import ClientSpec, LocalCluster
from fedhe_client.tasks import TaskSetup
from fedhe_common.config.models import SiteDataSection
from fedhe_common.mlbridge.flatten import build_manifest
from tests.e2e.helpers import server_db

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

TASK_MODULE = '''
"""A site's own task: a small MLP over its own image folder."""
from torch import nn
from fedhe_client.tasks import ArrayTask, load_site_data


class Stripes(ArrayTask):
    name = "stripes"

    def __init__(self, setup):
        train, val, self.class_names = load_site_data(setup.data)
        super().__init__(train, val)
        self.hidden = int(setup.params.get("hidden", 16))

    def build_model(self):
        c, h, w = self.train_data().x.shape[1:]
        return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, self.hidden), nn.ReLU(),
                             nn.Linear(self.hidden, len(self.class_names)))


class Renamed(Stripes):
    name = "stripes-v2"


def make_task(setup):
    return Stripes(setup)
'''

JOB = """
version: 1
job: {{name: own, rounds: 2, seed: 1}}
participants: {{min_clients: 3, round_timeout_s: 60, wait_after_min_s: 1}}
task: {{name: stripes, params: {{hidden: 8}}, layout_id: '{layout}'}}
training: {{local_epochs: 2, batch_size: 8, lr: 0.1}}
"""


def _site_images(root: Path, seed: int, classes: tuple[str, ...] = ("horizontal", "vertical")):
    """Noisy 8x8 stripes, 24 PNGs per class."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(24):
            stripes = np.zeros((8, 8))
            if label == 0:
                stripes[::2, :] = 1
            elif label == 1:
                stripes[:, ::2] = 1
            else:
                stripes[np.eye(8, dtype=bool)] = 1
            img = np.clip(stripes * 180 + rng.normal(40, 30, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(img, "L").save(root / name / f"{i}.png")
    return root


class OwnTaskCluster(LocalCluster):
    """Each client's config also names its task and its own data (as an operator would)."""

    tasks: dict[str, str]

    def client_config(self, client_id: str) -> Path:
        path = super().client_config(client_id)
        doc = yaml.safe_load(path.read_text())
        doc["task"] = self.tasks[client_id]
        doc["data"] = _data(self.workdir, client_id).model_dump()
        return self._write(client_id, doc)


def _data(workdir: Path, client_id: str) -> SiteDataSection:
    path = str(workdir / "sites" / client_id)
    return SiteDataSection(format="images", path=path, image_size=[8, 8], val_fraction=0.25)


def test_own_task_and_image_folders_train_and_export(tmp_path: Path) -> None:
    code = tmp_path / "usercode"
    code.mkdir()
    (code / "site_task.py").write_text(TASK_MODULE)
    for i in range(3):
        _site_images(tmp_path / "sites" / f"c{i}", seed=i)
    _site_images(tmp_path / "sites" / "c3", seed=3)
    _site_images(tmp_path / "sites" / "c4", seed=4, classes=("horizontal", "vertical", "x"))
    sys.path.insert(0, str(code))
    try:
        import site_task  # the test's own copy, to rebuild the model after export

        setups = {c: TaskSetup({"hidden": 8}, _data(tmp_path, c), 1) for c in ("c0", "c1", "c2")}
        layout = build_manifest(site_task.make_task(setups["c0"]).build_model().state_dict())
    finally:
        sys.path.remove(str(code))
    env = {"PYTHONPATH": str(code)}
    specs = [ClientSpec(f"c{i}", i, 5, env=env) for i in range(5)]
    with OwnTaskCluster(tmp_path, specs) as cluster:
        cluster.tasks = {f"c{i}": "site_task:make_task" for i in range(5)}
        cluster.tasks["c3"] = "site_task:Renamed"  # another task name: refused
        cluster.start_keyauth()
        cluster.start_server(JOB.format(layout=layout.layout_id))
        cluster.start_clients()
        # c4 has a third class: its model's layout differs from the job's; refused.
        assert cluster.wait("c3", 60) != 0
        assert "runs task 'stripes', but this client's task" in cluster.log_tail("c3")
        assert cluster.wait("c4", 60) != 0
        assert "differs from the job's" in cluster.log_tail("c4")
        for name in ("c0", "c1", "c2"):
            assert cluster.wait(name, 120) == 0, cluster.log_tail(name)
        reported = _reported(server_db(cluster))
    for name in ("c0", "c1", "c2"):
        cards = list((tmp_path / "client-state" / name / "models").glob("*/card.json"))
        assert len(cards) == 1
        card = json.loads(cards[0].read_text())
        assert card["round"] == 2 and card["task"] == "stripes"
        assert card["layout_id"] == layout.layout_id
        assert card["metrics"]["accuracy"] == reported[name]
        out = tmp_path / f"{name}.pt"
        result = CliRunner().invoke(cli, ["model", "export", str(cards[0]), "--out", str(out)])
        assert result.exit_code == 0, result.output
        task = site_task.make_task(setups[name])
        model = task.build_model()
        model.load_state_dict(torch.load(out, weights_only=True))  # plain torch
        again = task.evaluate(model, task.val_data())
        assert again["accuracy"] == reported[name]
        assert again["loss"] == pytest.approx(card["metrics"]["loss"], abs=1e-6)
    assert min(reported.values()) >= 0.8  # the stripes are learnable
    assert not list(tmp_path.glob("client-state/*/models/*/upload*"))  # no plaintext updates


def _reported(db: sqlite3.Connection) -> dict[str, float]:
    """Accuracy each client reported to the server for its last round."""
    rows = db.execute(
        "SELECT client_id, value FROM metrics WHERE name='accuracy' AND round="
        "(SELECT MAX(round) FROM metrics)"
    ).fetchall()
    return {client: float(value) for client, value in rows}
