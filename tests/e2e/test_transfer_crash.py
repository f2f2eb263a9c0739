"""A transfer job survives kill -9 of the server mid-training: the restarted server loads
the trainer's last persisted state, asks the pending request again, the owner (same
process, retrying) answers, and the head still equals the uninterrupted plaintext twin."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from fedhe_cli.cluster import ClientSpec, LocalCluster
from fedhe_client.connection import ServerConnection
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.load import parse_yaml
from fedhe_common.config.models import ClientConfig, JobConfig, PeerSection
from tests.e2e.test_transfer_job import JOB, _twin_accuracy

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(480)]


def _status(cluster: LocalCluster) -> pb.GetJobStatusResponse | None:
    admin = ServerConnection(
        PeerSection(address=f"127.0.0.1:{cluster.server_port}",
                    token_file=cluster.token_file("admin"), insecure=True)
    )  # fmt: skip
    try:
        return admin.job_status("tl-digits")
    except Exception:
        return None
    finally:
        admin.close()


def test_server_killed_mid_training_resumes_and_finishes(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, [ClientSpec("owner", 0, 1)]) as cluster:
        cluster.start_keyauth()
        port = cluster.start_server(JOB)
        cluster.start_client("owner")
        deadline = time.monotonic() + 300
        while True:  # until the owner answered a few requests of epoch 0
            status = _status(cluster)
            if status is not None and status.transfer.answered >= 3:
                break
            assert cluster.procs["owner"].poll() is None, cluster.log_tail("owner")
            assert time.monotonic() < deadline, cluster.log_tail("server")
            time.sleep(0.2)
        answered_before = status.transfer.answered
        cluster.kill("server")  # SIGKILL
        cluster.start_server(port=port)  # same state folder; the job is in its database
        assert cluster.wait("owner", 300) == 0, cluster.log_tail("owner")
        final = _status(cluster)
        assert final is not None and final.state == pb.JOB_STATE_FINISHED
        assert final.transfer.answered > answered_before
        log = (cluster.logs / "server.log").read_text()
        assert "resumed after" in log or "repaired" in log, log[-3000:]
        config = parse_yaml((tmp_path / "config/owner.yaml").read_text(), ClientConfig)
    card = json.loads((tmp_path / "client-state/owner/models/tl-digits/card.json").read_text())
    acc_plain = _twin_accuracy(config, parse_yaml(JOB, JobConfig))
    assert abs(card["metrics"]["accuracy"] - acc_plain) <= 0.005
