"""Selective encryption over gRPC (ratio 0.1): exact FedAvg, masked values only as ciphertext."""

from __future__ import annotations

import math
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedhe_cli.cluster import ClientSpec, LocalCluster
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2_grpc as pb_grpc
from fedhe_common.mlbridge.masks import EncryptionMask
from fedhe_common.rpc.auth import call_metadata
from tests.e2e.helpers import exported_global, plain_fedavg, server_db

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

JOB = """
version: 1
job: {name: sel, rounds: 2, seed: 5}
participants: {min_clients: 3, round_timeout_s: 120, wait_after_min_s: 1}
selective: {ratio: 0.1, sensitivity: exact, samples: 32}
model: {name: mlp, hidden: 64}
training: {local_epochs: 1, lr: 0.1}
"""


def _wait_for_open_round(stub, md, number: int) -> pb.GetRoundPlanResponse:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        plan = stub.GetRoundPlan(
            pb.GetRoundPlanRequest(
                job_id="sel", client_id="rogue", after_round=number - 1, wait_s=5
            ),
            metadata=md,
            timeout=30,
        )
        if not plan.retry and plan.round == number and plan.mask_id:
            return plan
    raise TimeoutError("round did not open")


def test_selective_ratio_01_end_to_end(tmp_path: Path) -> None:
    specs = [ClientSpec(f"c{i}", i, 3, n) for i, n in enumerate((150, 200, 250))]
    rogue = ClientSpec("rogue", 0, 3)
    with LocalCluster(tmp_path, [*specs, rogue], export=True) as cluster:
        cluster.start_keyauth()
        cluster.start_server(JOB)
        stub = pb_grpc.AggregationServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{cluster.server_port}")
        )
        md = call_metadata(cluster.tokens["rogue"])
        stub.RegisterClient(pb.RegisterClientRequest(client_id="rogue", job_id="sel"), metadata=md)
        for s in specs:
            cluster.start_client(s.client_id)
        plan = _wait_for_open_round(stub, md, 1)
        # A client sending another mask_id is refused.
        with pytest.raises(grpc.RpcError) as exc:
            stub.BeginUpload(
                pb.BeginUploadRequest(
                    manifest=pb.UploadManifest(
                        job_id="sel",
                        round=1,
                        client_id="rogue",
                        layout_id=plan.layout_id,
                        mask_id="f" * 64,
                        context_fingerprint=plan.context_fingerprint,
                        num_values=4810,
                        sample_count=10,
                    )
                ),
                metadata=md,
            )
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "mask_id" in exc.value.details()
        for s in specs:
            assert cluster.wait(s.client_id, 180) == 0, cluster.log_tail(s.client_id)

        names = [s.client_id for s in specs]
        for number in (1, 2):
            expected = plain_fedavg(cluster, names, number)
            got = exported_global(cluster, "c0", number)
            assert np.abs(got - expected).max() <= 1e-6

        db = server_db(cluster)
        mask_id, mask_bytes, total = db.execute(
            "SELECT mask_id, mask, num_values FROM jobs WHERE job_id='sel'"
        ).fetchone()
        mask = EncryptionMask.from_bytes(mask_bytes)
        assert mask.mask_id == mask_id and mask.count == math.ceil(0.1 * total)
        # Every training upload: masked values only as ciphertext chunks, and the
        # plaintext stream holds exactly the unmasked count of float32 values.
        rows = db.execute(
            "SELECT u.round, u.client_id, c.stream, COUNT(*), SUM(c.nbytes) FROM uploads u "
            "JOIN chunks c ON c.upload_id = u.upload_id WHERE u.state='COMMITTED' "
            "GROUP BY u.upload_id, c.stream"
        ).fetchall()
        training = [r for r in rows if r[0] >= 1]
        assert len(training) == 2 * 3 * 2
        for number, client, stream, count, nbytes in training:
            if stream == pb.STREAM_KIND_PLAINTEXT:
                assert nbytes == 4 * (total - mask.count), (number, client)
            else:
                assert count == math.ceil(mask.count / 4096), (number, client)
        # Round 0 (sensitivity) was fully encrypted.
        assert {r[2] for r in rows if r[0] == 0} == {pb.STREAM_KIND_CIPHERTEXT}
