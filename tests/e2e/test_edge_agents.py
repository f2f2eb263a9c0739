"""Long-lived client agents as real processes (issue 14): started before any job exists,
they take job after job without restart, ride out a server restart, and move on from a
job an admin cancels mid-round."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fedhe_cli.cluster import ClientSpec, LocalCluster
from fedhe_client.connection import ServerConnection
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.models import PeerSection
from tests.e2e.helpers import job_yaml

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
NAMES = ["c0", "c1", "c2"]


def _admin(cluster: LocalCluster) -> ServerConnection:
    return ServerConnection(
        PeerSection(address=f"127.0.0.1:{cluster.server_port}",
                    token_file=cluster.token_file("admin"), insecure=True)
    )  # fmt: skip


def _wait_status(
    cluster: LocalCluster, job: str, done: object, timeout_s: float = 60
) -> pb.GetJobStatusResponse:
    deadline = time.monotonic() + timeout_s
    while True:
        conn = _admin(cluster)
        try:
            status = conn.job_status(job)
        finally:
            conn.close()
        if done(status):  # type: ignore[operator]
            return status
        for name in NAMES:
            assert cluster.procs[name].poll() is None, cluster.log_tail(name)
        assert time.monotonic() < deadline, f"job {job}: {status}\n{cluster.log_tail('c0')}"
        time.sleep(0.3)


def _submit(cluster: LocalCluster, yaml_text: str) -> None:
    conn = _admin(cluster)
    try:
        conn.call("SubmitJob", pb.SubmitJobRequest(job_yaml=yaml_text))
    finally:
        conn.close()


def test_three_agents_take_two_jobs_and_survive_a_cancelled_one(tmp_path: Path) -> None:
    t0 = time.monotonic()
    specs = [ClientSpec(name, i, 3, long_lived=True) for i, name in enumerate(NAMES)]
    with LocalCluster(tmp_path, specs) as cluster:
        cluster.start_keyauth()
        cluster.start_server()  # no job yet: the agents wait instead of exiting
        cluster.start_clients()
        time.sleep(2)
        assert all(cluster.procs[n].poll() is None for n in NAMES)
        finished = pb.JOB_STATE_FINISHED
        _submit(cluster, job_yaml("job-a", rounds=2, min_clients=3, hidden=16))
        a = _wait_status(cluster, "job-a", lambda s: s.state == finished)
        assert [(r.round, r.contributors) for r in a.history] == [(1, 3), (2, 3)]
        # Key authority and server restart between jobs: the agents reconnect on their own.
        cluster.kill("server")
        cluster.kill("keyauth")
        time.sleep(1)
        cluster.start_keyauth(port=cluster.keyauth_port)
        cluster.start_server(port=cluster.server_port)
        _submit(cluster, job_yaml("job-b", rounds=2, min_clients=3, hidden=16))
        b = _wait_status(cluster, "job-b", lambda s: s.state == finished)
        assert [(r.round, r.contributors) for r in b.history] == [(1, 3), (2, 3)]
        assert all(not c.error.phase for c in b.clients) and len(b.clients) == 3
        _submit(cluster, job_yaml("job-c", rounds=50, min_clients=3, hidden=16))
        _wait_status(cluster, "job-c", lambda s: s.current_round >= 2)  # round 2 is open
        conn = _admin(cluster)
        reply = conn.call("CancelJob", pb.CancelJobRequest(job_id="job-c"))
        conn.close()
        assert reply.state == pb.JOB_STATE_CANCELLED and len(reply.aborted_rounds) == 1
        deadline = time.monotonic() + 30
        logs = {n: "" for n in NAMES}
        while time.monotonic() < deadline and not all("was cancelled" in t for t in logs.values()):
            logs = {n: (cluster.logs / f"{n}.log").read_text() for n in NAMES}
            time.sleep(0.3)
        for name in NAMES:
            assert "job job-c was cancelled" in logs[name], cluster.log_tail(name)
            assert '"job_id": "job-a"' in logs[name] and '"job_id": "job-b"' in logs[name]
            assert "Traceback" not in logs[name]
        time.sleep(1)
        # Still running, waiting for the next job (stopped by the cluster on exit).
        assert all(cluster.procs[n].poll() is None for n in NAMES)
    print(f"edge agents e2e: {time.monotonic() - t0:.1f}s")
