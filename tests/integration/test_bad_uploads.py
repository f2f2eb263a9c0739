"""Bad input over real gRPC gets a clear status and changes nothing."""

from __future__ import annotations

import hashlib

import grpc
import numpy as np
import pytest

from fedhe_client.keymodes import fetch_secret_key
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.crypto.secret import SecretKeyHolder
from fedhe_common.mlbridge.chunking import ChunkPlan
from tests.conftest import MetricSamples, holder_for, scrape_metrics
from tests.integration.conftest import Services

JOB = """
job: {name: badjob, rounds: 1, seed: 0}
participants: {min_clients: 2, round_timeout_s: 120, wait_after_min_s: 60}
encryption: {mode: ckks, preset: single-key}  # SEAL blobs (the default's: test_fast_preset)
"""
NUM_VALUES = 10_000


def _code(exc: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return exc.value.code()


def _setup(services: Services) -> tuple[object, SecretKeyHolder]:
    stub = services.agg_stub()
    reply = stub.SubmitJob(pb.SubmitJobRequest(job_yaml=JOB), metadata=services.metadata("admin"))
    assert reply.created
    for c in ("c1", "c2"):
        stub.RegisterClient(
            pb.RegisterClientRequest(client_id=c, job_id="badjob"), metadata=services.metadata(c)
        )
    from fedhe_common.config.models import ClientConfig, PartitionSection

    cfg = ClientConfig(
        client_id="c1",
        server=services.peer("c1", services.server_port),
        keyauth=services.peer("c1", services.keyauth_port),
        partition=PartitionSection(index=0, count=1),
    )
    return stub, fetch_secret_key(cfg, "badjob")


def _manifest(holder: SecretKeyHolder, client: str, **over: object) -> pb.UploadManifest:
    plan = ChunkPlan(NUM_VALUES, holder.preset.values_per_ciphertext)
    fields = dict(
        job_id="badjob",
        round=1,
        client_id=client,
        layout_id="L" * 64,
        context_fingerprint=holder.fingerprint,
        ciphertext_chunks=plan.count,
        num_values=NUM_VALUES,
        sample_count=10,
    )
    fields.update(over)
    return pb.UploadManifest(**fields)  # type: ignore[arg-type]


def _chunk(
    upload_id: str, index: int, payload: bytes, num_values: int = 4096
) -> pb.UploadChunksRequest:
    return pb.UploadChunksRequest(
        chunk=pb.Chunk(
            upload_id=upload_id,
            stream=pb.STREAM_KIND_CIPHERTEXT,
            index=index,
            num_values=num_values,
            payload=payload,
            sha256=hashlib.sha256(payload).digest(),
        )
    )


def _upload(stub, services, holder, client, x, sample_count=10):  # type: ignore[no-untyped-def]
    plan = ChunkPlan(NUM_VALUES, holder.preset.values_per_ciphertext)
    begin = stub.BeginUpload(
        pb.BeginUploadRequest(manifest=_manifest(holder, client, sample_count=sample_count)),
        metadata=services.metadata(client),
    )
    blobs = [holder.encrypt(c) for c in plan.split(x)]
    stub.UploadChunks(
        iter([_chunk(begin.upload_id, k, b, plan.length(k)) for k, b in enumerate(blobs)]),
        metadata=services.metadata(client),
    )
    return begin.upload_id, stub.CommitUpload(
        pb.CommitUploadRequest(upload_id=begin.upload_id), metadata=services.metadata(client)
    )


def test_bad_input_is_refused_with_clear_status_and_changes_nothing(services: Services) -> None:
    stub, holder = _setup(services)
    md = services.metadata("c1")
    begin = stub.BeginUpload(pb.BeginUploadRequest(manifest=_manifest(holder, "c1")), metadata=md)
    uid = begin.upload_id
    good = holder.encrypt(np.zeros(4096))

    cases: list[tuple[str, object, grpc.StatusCode]] = [
        (
            "malformed ciphertext",
            lambda: stub.UploadChunks(iter([_chunk(uid, 0, good[:-10])]), metadata=md),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "foreign-context ciphertext",
            lambda: stub.UploadChunks(
                iter([_chunk(uid, 0, holder_for("single-key").encrypt(np.zeros(8)))]), metadata=md
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "sha256 mismatch",
            lambda: stub.UploadChunks(
                iter(
                    [
                        pb.UploadChunksRequest(
                            chunk=pb.Chunk(
                                upload_id=uid,
                                stream=pb.STREAM_KIND_CIPHERTEXT,
                                index=0,
                                num_values=4096,
                                payload=good,
                                sha256=b"\0" * 32,
                            )
                        )
                    ]
                ),
                metadata=md,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "index beyond declared count",
            lambda: stub.UploadChunks(iter([_chunk(uid, 3, good)]), metadata=md),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "wrong value count",
            lambda: stub.UploadChunks(iter([_chunk(uid, 0, good, 100)]), metadata=md),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "wrong round",
            lambda: stub.BeginUpload(
                pb.BeginUploadRequest(manifest=_manifest(holder, "c1", round=2)), metadata=md
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (
            "wrong fingerprint",
            lambda: stub.BeginUpload(
                pb.BeginUploadRequest(
                    manifest=_manifest(holder, "c1", context_fingerprint=b"x" * 32)
                ),
                metadata=md,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "wrong chunk count",
            lambda: stub.BeginUpload(
                pb.BeginUploadRequest(manifest=_manifest(holder, "c1", ciphertext_chunks=5)),
                metadata=md,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "unknown token",
            lambda: stub.BeginUpload(
                pb.BeginUploadRequest(manifest=_manifest(holder, "c1")),
                metadata=(("authorization", "Bearer nope"),),
            ),
            grpc.StatusCode.UNAUTHENTICATED,
        ),
        (
            "identity mismatch",
            lambda: stub.BeginUpload(
                pb.BeginUploadRequest(manifest=_manifest(holder, "c2")), metadata=md
            ),
            grpc.StatusCode.UNAUTHENTICATED,
        ),
        (
            "unregistered client",
            lambda: stub.BeginUpload(
                pb.BeginUploadRequest(manifest=_manifest(holder, "c3")),
                metadata=services.metadata("c3"),
            ),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
        (
            "commit before all chunks",
            lambda: stub.CommitUpload(pb.CommitUploadRequest(upload_id=uid), metadata=md),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (
            "weight sum that would wrap",
            lambda: stub.BeginUpload(
                pb.BeginUploadRequest(manifest=_manifest(holder, "c1", sample_count=2**40)),
                metadata=md,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "oversized message",
            lambda: stub.UploadChunks(iter([_chunk(uid, 0, b"\0" * (16 << 20))]), metadata=md),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
        (
            "heartbeat from an unregistered client",
            lambda: stub.SendHeartbeat(
                pb.SendHeartbeatRequest(job_id="badjob", client_id="c3"),
                metadata=services.metadata("c3"),
            ),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            "client asks for another job",
            lambda: stub.RegisterClient(
                pb.RegisterClientRequest(client_id="c1", job_id="nope"), metadata=md
            ),
            grpc.StatusCode.NOT_FOUND,
        ),
    ]
    for name, call, expected in cases:
        with pytest.raises(grpc.RpcError) as exc:
            call()  # type: ignore[operator]
        assert _code(exc) == expected, f"{name}: {_code(exc)} {exc.value.details()}"
        assert exc.value.details(), name

    # A registered client's heartbeat is taken and tells the job's interval.
    beat = stub.SendHeartbeat(pb.SendHeartbeatRequest(job_id="badjob", client_id="c1"), metadata=md)
    assert beat.heartbeat_interval_s == 30.0

    # Nothing was staged by the refused calls.
    assert services.server.db.query("SELECT COUNT(*) FROM chunks")[0][0] == 0
    # A duplicate chunk with another hash is refused once the first is in.
    stub.UploadChunks(iter([_chunk(uid, 0, good)]), metadata=md)
    with pytest.raises(grpc.RpcError) as exc:
        stub.UploadChunks(iter([_chunk(uid, 0, holder.encrypt(np.ones(4096)))]), metadata=md)
    assert _code(exc) == grpc.StatusCode.ALREADY_EXISTS
    # The identical chunk again is an idempotent no-op.
    assert stub.UploadChunks(iter([_chunk(uid, 0, good)]), metadata=md).duplicates == 1

    # Honest uploads still aggregate exactly.
    rng = np.random.default_rng(0)
    x1, x2 = rng.uniform(-5, 5, NUM_VALUES), rng.uniform(-5, 5, NUM_VALUES)
    uid1, r1 = _upload(stub, services, holder, "c1", x1, 3)
    again = stub.CommitUpload(pb.CommitUploadRequest(upload_id=uid1), metadata=md)
    assert again.receipt_sha256 == r1.receipt_sha256  # idempotent commit
    with pytest.raises(grpc.RpcError) as exc:  # a second, different upload for the round
        stub.BeginUpload(
            pb.BeginUploadRequest(manifest=_manifest(holder, "c1", sample_count=4)), metadata=md
        )
    assert _code(exc) == grpc.StatusCode.ALREADY_EXISTS
    _upload(stub, services, holder, "c2", x2, 5)
    services.server.runs["badjob"].tick()
    items = list(stub.GetAggregate(pb.GetAggregateRequest(job_id="badjob", round=1), metadata=md))
    header = items[0].header
    assert header.weight_sum == 8 and header.contributors == 2
    plan = ChunkPlan(NUM_VALUES, holder.preset.values_per_ciphertext)
    got = (
        np.concatenate(
            [holder.decrypt(i.chunk.payload)[: plan.length(i.chunk.index)] for i in items[1:]]
        )
        / 8
    )
    assert np.abs(got - (3 * x1 + 5 * x2) / 8).max() < 1e-6

    # /metrics over real HTTP tells the same story.
    metrics = _scrape(services)
    rejected = {k: v for k, v in metrics.items() if k[0] == "fedhe_chunks_rejected_total"}
    assert sum(rejected.values()) == 6  # five bad chunks and one conflicting duplicate
    assert rejected[("fedhe_chunks_rejected_total", (("reason", "conflict"),))] == 1
    assert metrics[("fedhe_clients_accepted_total", ())] == 2
    assert metrics[("fedhe_rounds", (("state", "published"),))] == 1
    assert metrics[("fedhe_round_current", (("job", "badjob"),))] == 1
    assert metrics[("fedhe_round_duration_seconds_count", ())] == 1
    assert metrics[("fedhe_aggregate_seconds_count", ())] == 2
    assert metrics[("fedhe_inflight_uploads", ())] == 0
    staged = services.server.db.query("SELECT COUNT(*) FROM chunks")[0][0]
    assert metrics[("fedhe_upload_bytes_total", (("kind", "ciphertext"),))] == staged * len(good)
    assert metrics[("fedhe_upload_bytes_total", (("kind", "plaintext"),))] == 0


def _scrape(services: Services) -> MetricSamples:
    httpd, _ = services.server.metrics.serve("127.0.0.1", 0)
    try:
        return scrape_metrics(httpd.server_port)
    finally:
        httpd.shutdown()
