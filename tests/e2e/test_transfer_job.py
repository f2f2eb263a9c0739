"""HETAL transfer job through the three services as real processes (issue 13, done-when):
key authority, server and one data-owner client; digits, mode client, 2 epochs of 2 steps.
The client's exported head must match the plaintext same-algorithm twin on the test split
within 0.5 pp, and reproduce its reported accuracy from head.npz + card.json alone; the
owner's secret key is nowhere in the key authority's or the server's files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from fedhe_cli.cluster import ClientSpec, LocalCluster
from fedhe_client.connection import ServerConnection
from fedhe_client.transfer.keys import OwnerKeys
from fedhe_client.transfer.preprocess import Preprocessor
from fedhe_client.transfer.sources import FeatureSplits, job_params, site_features
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.load import parse_yaml
from fedhe_common.config.models import ClientConfig, JobConfig, PeerSection
from fedhe_common.crypto.sealbytes import save_bytes
from fedhe_common.hetal.plain import accuracy, train_plain
from tests.e2e.helpers import files_containing

# In the default suite: the done-when of issue 13 (~15 s per variant on 2 cores).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

JOB = """
version: 1
job: {name: tl-digits, rounds: 1}
participants: {min_clients: 1, clients: [owner]}
transfer: {mode: client, dataset: digits, batch: 128, lr: 4.0, max_epochs: 2, patience: 3,
           max_train_samples: 256}
"""


def _twin_accuracy(config: ClientConfig, job: JobConfig) -> float:
    """The same algorithm in float64 on the same split, batches and preprocessing."""
    s = site_features(config, job)
    cap = 256
    s = FeatureSplits(s.train_x[:cap], s.train_y[:cap], s.val_x, s.val_y, s.test_x, s.test_y)
    params = job_params(job, s)
    prep = Preprocessor.fit(s.train_x, out_features=params.features)
    twin = train_plain(params, prep.transform(s.train_x), s.train_y, prep.transform(s.val_x),
                       s.val_y)  # fmt: skip
    return accuracy(twin.weights, prep.transform(s.test_x), s.test_y)


@pytest.mark.parametrize("workers", [1, 2])
def test_transfer_job_trains_a_head_through_the_services(tmp_path: Path, workers: int) -> None:
    t0 = time.monotonic()
    job_yaml = JOB.replace("max_train_samples: 256", f"max_train_samples: 256, workers: {workers}")
    with LocalCluster(tmp_path, [ClientSpec("owner", 0, 1)]) as cluster:
        cluster.start_keyauth()
        cluster.start_server(job_yaml)
        cluster.start_client("owner")
        assert cluster.wait("owner", 360) == 0, cluster.log_tail("owner") + cluster.log_tail(
            "server"
        )
        admin = ServerConnection(
            PeerSection(address=f"127.0.0.1:{cluster.server_port}",
                        token_file=cluster.token_file("admin"), insecure=True)
        )  # fmt: skip
        status = admin.job_status("tl-digits")
        admin.close()
        assert status.state == pb.JOB_STATE_FINISHED
        assert status.transfer.phase == pb.TRANSFER_PHASE_FINISHED
        assert status.transfer.epochs_run == 2 and status.transfer.answered > 0
        server_log = (cluster.logs / "server.log").read_text()
        assert "transfer training finished" in server_log
        assert ("kernels run in 2 worker processes" in server_log) == (workers == 2)
        config = parse_yaml((tmp_path / "config/owner.yaml").read_text(), ClientConfig)
    elapsed = time.monotonic() - t0
    folder = tmp_path / "client-state/owner/models/tl-digits"
    card = json.loads((folder / "card.json").read_text())
    acc_he = card["metrics"]["accuracy"]
    # The exported head alone (weights + preprocessing) reproduces the reported accuracy.
    weights = np.load(folder / "head.npz")["W"]
    prep = Preprocessor.from_json(json.dumps(card["preprocessing"]))
    job = parse_yaml(JOB, JobConfig)
    s = site_features(config, job)
    exported = accuracy(weights, prep.transform(s.test_x), s.test_y)
    assert abs(exported - acc_he) < 1e-9
    # The owner's secret key stays on its device: in its own state, nowhere in the key
    # authority's or the server's files.
    state = tmp_path / "client-state/owner/transfer/tl-digits/owner.keys"
    secret = save_bytes(OwnerKeys.from_bytes(state.read_bytes()).secret)
    assert state.stat().st_mode & 0o077 == 0
    probe = secret[len(secret) // 2 : len(secret) // 2 + 64]
    assert files_containing(state.parent, probe) == [state]
    assert files_containing(tmp_path / "keyauth-state", probe) == []
    assert files_containing(tmp_path / "server-state", probe) == []
    assert (tmp_path / "keyauth-state/jobs/tl-digits/eval_keys.bin").exists()
    acc_plain = _twin_accuracy(config, job)
    print(f"acc_he {acc_he:.4f} acc_plain_same_algo {acc_plain:.4f} ({elapsed:.0f}s)")
    assert abs(acc_he - acc_plain) <= 0.005
    assert acc_he > 0.6  # it learned (10 classes; chance is 0.1)
