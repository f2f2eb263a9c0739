"""A LoRA job on a tiny BERT through the three services: only encrypted adapters travel.

The job runs the offline text task (``textgen``) with ``peft: lora``; every upload's
manifest carries the adapter+head count (1,156 values, against 22,276 in the model), its
ciphertext is one chunk and there is no plaintext stream; the decrypted global model is
the plaintext FedAvg of the uploads; the last round's accuracy is far above chance (1/4).
A site whose frozen base differs from the job's pinned layout is refused before round 1.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedhe_cli.cluster import ClientSpec, LocalCluster
from fedhe_client.learner import LocalLearner
from fedhe_client.tasks.base import TaskSetup
from fedhe_client.tasks.textgen import TextGenTask
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.models import JobConfig
from tests.e2e.helpers import exported_global, plain_fedavg, server_db

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ROUNDS = 4
JOB = """
version: 1
job: {{name: lora, rounds: {rounds}, seed: 3}}
participants: {{min_clients: 3, round_timeout_s: 120, wait_after_min_s: 1}}
task: {{name: textgen, params: {{samples: 256, hidden: 32, layers: 2}}, layout_id: '{layout}'}}
training: {{local_epochs: 3, batch_size: 8, lr: 0.02, optimizer: adam}}
peft: {{method: lora, r: 4, alpha: 16, target_modules: [query, value]}}
"""
OTHER_BASE = '''
import torch
from fedhe_client.tasks.textgen import TextGenTask


class OtherBase(TextGenTask):
    """Same task name and shapes, but another random base (another seed)."""

    def build_model(self):
        torch.manual_seed(12345)
        return super().build_model()
'''


class TextCluster(LocalCluster):
    """Each client's config names the text task (as a site operator would)."""

    tasks: dict[str, str]

    def client_config(self, client_id: str) -> Path:
        path = super().client_config(client_id)
        doc = yaml.safe_load(path.read_text())
        doc["task"] = self.tasks[client_id]
        return self._write(client_id, doc)


def _learner(job: JobConfig) -> LocalLearner:
    assert job.task is not None
    task = TextGenTask(TaskSetup(dict(job.task.params), None, job.job.seed, "c0"))
    return LocalLearner(job, 0, 1, device="cpu", task=task)


def test_lora_job_sends_only_encrypted_adapters(tmp_path: Path) -> None:
    doc = yaml.safe_load(JOB.format(rounds=ROUNDS, layout="0" * 64))
    del doc["task"]["layout_id"]  # the reference model, to pin the job's layout
    reference = _learner(JobConfig.model_validate(doc))
    adapters, layout = reference.manifest.total, reference.manifest.layout_id
    model_values = sum(p.numel() for p in reference.model.parameters())
    assert adapters == 1156 and model_values > 20_000
    code = tmp_path / "usercode"
    code.mkdir()
    (code / "other_base.py").write_text(OTHER_BASE)
    specs = [ClientSpec(f"c{i}", i, 3) for i in range(3)]
    rogue = ClientSpec("rogue", 0, 3, env={"PYTHONPATH": str(code)})
    names = [s.client_id for s in specs]
    with TextCluster(tmp_path, [*specs, rogue], export=True) as cluster:
        cluster.tasks = {n: "fedhe_client.tasks.textgen:TextGenTask" for n in names}
        cluster.tasks["rogue"] = "other_base:OtherBase"
        cluster.start_keyauth()
        cluster.start_server(JOB.format(rounds=ROUNDS, layout=layout))
        cluster.start_clients()
        assert cluster.wait("rogue", 120) != 0
        assert "differs from the job's" in cluster.log_tail("rogue")
        for name in names:
            assert cluster.wait(name, 180) == 0, cluster.log_tail(name)
        for number in range(1, ROUNDS + 1):
            expected = plain_fedavg(cluster, names, number)
            assert expected.shape == (adapters,)
            for name in names:
                got = exported_global(cluster, name, number)
                assert np.abs(got - expected).max() <= 1e-6
        db = server_db(cluster)
        pinned, total = db.execute(
            "SELECT layout_id, num_values FROM jobs WHERE job_id='lora'"
        ).fetchone()
        assert (pinned, total) == (layout, adapters)
        uploads = db.execute(
            "SELECT upload_id, round, client_id, manifest FROM uploads WHERE state='COMMITTED' "
            "AND round >= 1"
        ).fetchall()
        assert len(uploads) == ROUNDS * 3
        assert {u[2] for u in uploads} == set(names)
        for upload_id, number, client, blob in uploads:
            manifest = pb.UploadManifest.FromString(blob)
            assert manifest.num_values == adapters, (number, client)
            assert manifest.layout_id == layout
            streams = db.execute(
                "SELECT stream, COUNT(*) FROM chunks WHERE upload_id=? GROUP BY stream",
                (upload_id,),
            ).fetchall()
            assert streams == [(pb.STREAM_KIND_CIPHERTEXT, math.ceil(adapters / 4096))]
        accuracy = [
            float(v)
            for (v,) in db.execute(
                "SELECT value FROM metrics WHERE name='accuracy' AND round=?", (ROUNDS,)
            )
        ]
    assert len(accuracy) == 3 and min(accuracy) >= 0.7  # chance is 0.25


THRESHOLD_JOB = """
version: 1
job: {{name: lora-t, rounds: 1, seed: 3}}
participants: {{min_clients: 3, round_timeout_s: 120, wait_after_min_s: 1}}
task: {{name: textgen, params: {{samples: 96, hidden: 32, layers: 2}}, layout_id: '{layout}'}}
training: {{local_epochs: 1, batch_size: 8, lr: 0.02, optimizer: adam}}
peft: {{method: lora, r: 4, alpha: 16, target_modules: [query, value]}}
keys: {{mode: threshold, parties: 3, threshold: 2, preset: threshold-practical}}
"""


def test_threshold_keys_on_lora_adapters(tmp_path: Path) -> None:
    """Threshold keys on the adapter vector like on any other: key generation on the sites,
    only adapters travel, every site fuses the same global adapters (= plaintext FedAvg)."""
    doc = yaml.safe_load(THRESHOLD_JOB.format(layout="0" * 64))
    del doc["task"]["layout_id"]
    reference = _learner(JobConfig.model_validate(doc))
    adapters, layout = reference.manifest.total, reference.manifest.layout_id
    specs = [ClientSpec(f"c{i}", i, 3) for i in range(3)]
    names = [s.client_id for s in specs]
    with TextCluster(tmp_path, specs, export=True) as cluster:
        cluster.tasks = dict.fromkeys(names, "fedhe_client.tasks.textgen:TextGenTask")
        cluster.start_keyauth()
        cluster.start_server(THRESHOLD_JOB.format(layout=layout))
        cluster.start_clients()
        for name in names:
            assert cluster.wait(name, 180) == 0, cluster.log_tail(name)
        expected = plain_fedavg(cluster, names, 1)
        assert expected.shape == (adapters,)
        for name in names:
            assert np.abs(exported_global(cluster, name, 1) - expected).max() <= 1e-6
        db = server_db(cluster)
        assert db.execute("SELECT num_values FROM jobs").fetchone() == (adapters,)
        assert db.execute("SELECT state, contributors FROM rounds").fetchall() == [
            ("PUBLISHED", 3)
        ]
