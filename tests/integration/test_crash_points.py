"""SIGKILL a real server process at each named point of a round transition.

After a restart on the same state folder the job must resume: the round is
published exactly once, the next round opens, and the aggregate is the exact
FedAvg of the committed updates.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2_grpc
from fedhe_common.rpc.auth import call_metadata, new_token, token_sha256, write_secret_file
from fedhe_server.rounds import PUBLISH_POINTS

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = {"c1": 30, "c2": 70}  # client -> sample_count
NUM_VALUES = 10
JOB = """
job: {name: crash, rounds: 2, seed: 0}
encryption: {mode: none}
participants: {min_clients: 2, expected_clients: 2, round_timeout_s: 120,
               wait_after_min_s: 0, clients: [c1, c2]}
"""


def _update(client: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(client.encode()).digest()[:4], "little")
    return np.random.default_rng(seed).normal(size=NUM_VALUES).astype("<f4")


class Server:
    """The server CLI in a child process (optionally with a kill point)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.tokens = {n: new_token() for n in ("server", "admin", *CLIENTS)}
        for name, token in self.tokens.items():
            write_secret_file(workdir / f"{name}.token", token)
        ids = [{"id": "admin", "role": "admin", "token_sha256": token_sha256(self.tokens["admin"])}]
        ids += [
            {"id": c, "role": "client", "token_sha256": token_sha256(self.tokens[c])}
            for c in CLIENTS
        ]
        self.config = workdir / "server.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "listen": "127.0.0.1:0",
                    "insecure": True,
                    "state_dir": str(workdir / "state"),
                    "keyauth": {
                        "address": "127.0.0.1:9",  # plaintext job: never called
                        "token_file": str(workdir / "server.token"),
                        "insecure": True,
                    },
                    "identities": ids,
                }
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, point: str | None) -> None:
        port_file = self.workdir / "port"
        port_file.unlink(missing_ok=True)
        if point:
            args = [sys.executable, "-m", "tests.faults.kill_server", point]
        else:
            args = [sys.executable, "-c", "from fedhe_server.cli import main; main()"]
        log = open(self.workdir / "server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*args, "serve", "--config", str(self.config), "--port-file", str(port_file)],
            cwd=ROOT,
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = aggregation_pb2_grpc.AggregationServiceStub(channel)

    def log(self) -> str:
        return (self.workdir / "server.log").read_text()[-3000:]

    def md(self, name: str) -> tuple[tuple[str, str], ...]:
        return call_metadata(self.tokens[name])

    def upload(self, client: str, number: int) -> None:
        """One client's whole (idempotent) upload of round ``number``."""
        x = _update(client)
        manifest = pb.UploadManifest(
            job_id="crash",
            round=number,
            client_id=client,
            layout_id="L" * 64,
            plaintext_chunks=1,
            num_values=NUM_VALUES,
            sample_count=CLIENTS[client],
        )
        begun = self.stub.BeginUpload(
            pb.BeginUploadRequest(manifest=manifest), metadata=self.md(client), timeout=10
        )
        if not begun.committed:
            payload = x.tobytes()
            chunk = pb.Chunk(
                upload_id=begun.upload_id,
                stream=pb.STREAM_KIND_PLAINTEXT,
                index=0,
                num_values=NUM_VALUES,
                payload=payload,
                sha256=hashlib.sha256(payload).digest(),
            )
            self.stub.UploadChunks(
                iter([pb.UploadChunksRequest(chunk=chunk)]), metadata=self.md(client), timeout=10
            )
        self.stub.CommitUpload(
            pb.CommitUploadRequest(upload_id=begun.upload_id), metadata=self.md(client), timeout=10
        )

    def status(self) -> pb.GetJobStatusResponse:
        return self.stub.GetJobStatus(
            pb.GetJobStatusRequest(job_id="crash"), metadata=self.md("admin"), timeout=10
        )

    def aggregate(self, number: int) -> tuple[int, np.ndarray]:
        replies = list(
            self.stub.GetAggregate(
                pb.GetAggregateRequest(job_id="crash", round=number),
                metadata=self.md("c1"),
                timeout=10,
            )
        )
        header = replies[0].header
        values = np.frombuffer(replies[1].chunk.payload, dtype="<f4").astype(np.float64)
        return header.weight_sum, values / header.weight_sum


def _exact_fedavg() -> np.ndarray:
    total = sum(CLIENTS.values())
    return sum(n * _update(c).astype(np.float64) for c, n in CLIENTS.items()) / total


@pytest.mark.parametrize("point", ["commit.after_transaction", *PUBLISH_POINTS])
def test_sigkill_at_each_transition_point_resumes_with_exact_fedavg(
    tmp_path: Path, point: str
) -> None:
    server = Server(tmp_path)
    server.start(point)
    try:
        server.stub.SubmitJob(
            pb.SubmitJobRequest(job_yaml=JOB), metadata=server.md("admin"), timeout=10
        )
        for c in CLIENTS:
            server.stub.RegisterClient(
                pb.RegisterClientRequest(client_id=c, job_id="crash"),
                metadata=server.md(c),
                timeout=10,
            )
        with pytest.raises(grpc.RpcError):  # the server dies mid-way
            for c in CLIENTS:
                server.upload(c, 1)
            deadline = time.monotonic() + 10  # the round keeper publishes (and dies)
            while time.monotonic() < deadline:
                server.status()
                time.sleep(0.05)
        assert server.proc is not None
        assert server.proc.wait(timeout=20) == -signal.SIGKILL, server.log()

        server.start(None)
        deadline = time.monotonic() + 30
        while True:
            status = server.status()
            states = {r.round: r.state for r in status.history}
            if states.get(1) == pb.ROUND_STATE_PUBLISHED:
                break
            assert time.monotonic() < deadline, (states, server.log())
            for c in CLIENTS:  # clients retry: already committed uploads are no-ops
                server.upload(c, 1)
            time.sleep(0.3)
        assert states.get(2) == pb.ROUND_STATE_OPEN, (states, server.log())  # not wedged
        assert status.state == pb.JOB_STATE_RUNNING
        weight_sum, model = server.aggregate(1)
        assert weight_sum == sum(CLIENTS.values())  # counted once each
        assert np.abs(model - _exact_fedavg()).max() <= 1e-6
        # The job goes on: round 2 publishes and the job finishes.
        for c in CLIENTS:
            server.upload(c, 2)
        deadline = time.monotonic() + 20
        while server.status().state != pb.JOB_STATE_FINISHED:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
            server.proc.wait(timeout=20)
