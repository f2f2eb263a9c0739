"""Stalled and idle calls cost the servers no thread (issue 9, defect 1).

A stalled call opens a unary method and never sends its request (no token either):
before grpc.aio, each held one of the synchronous server's 64 worker threads (16 on
the key authority), so a handful of them, or 48 idle long-polls plus 16 stalled
calls, froze every honest client. Here 64 stalled calls and 200 idle long-polls
are held open while an honest client uploads and commits. That is also 264 calls
in flight at once: the threaded server refused every call past 256 with
RESOURCE_EXHAUSTED (defect 8).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2_grpc as pb_grpc
from fedhe_common._proto.fedhe.keyauth.v1 import keyauth_pb2, keyauth_pb2_grpc
from tests.integration.conftest import Services

JOB = """
job: {name: stalljob, rounds: 2, seed: 0}
participants: {min_clients: 3, round_timeout_s: 120, wait_after_min_s: 60}
encryption: {mode: none}
"""
STALLED = 64
POLLERS = 200
NUM_VALUES = 1000


def _channel(port: int) -> grpc.Channel:
    """A channel with its own TCP connection (gRPC shares connections by default)."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=options)


def _stall(channel: grpc.Channel, method: str, release: threading.Event) -> list[grpc.Future]:
    """Open ``STALLED`` calls of a unary ``method`` whose request never arrives."""

    def never_sends() -> Iterator[bytes]:
        release.wait()
        return
        yield b""  # pragma: no cover - makes this a generator

    call = channel.stream_unary(method)
    return [call.future(never_sends(), timeout=120) for _ in range(STALLED)]


def _honest_upload(stub: pb_grpc.AggregationServiceStub, md: tuple) -> float:  # type: ignore[type-arg]
    """Begin, stream and commit a one-chunk plaintext upload; return its seconds."""
    payload = np.linspace(-1, 1, NUM_VALUES, dtype="<f4").tobytes()
    manifest = pb.UploadManifest(
        job_id="stalljob",
        round=1,
        client_id="c1",
        layout_id="L" * 64,
        plaintext_chunks=1,
        num_values=NUM_VALUES,
        sample_count=10,
    )
    t0 = time.monotonic()
    begin = stub.BeginUpload(pb.BeginUploadRequest(manifest=manifest), metadata=md, timeout=30)
    chunk = pb.Chunk(
        upload_id=begin.upload_id,
        stream=pb.STREAM_KIND_PLAINTEXT,
        index=0,
        num_values=NUM_VALUES,
        payload=payload,
        sha256=hashlib.sha256(payload).digest(),
    )
    stub.UploadChunks(iter([pb.UploadChunksRequest(chunk=chunk)]), metadata=md, timeout=30)
    stub.CommitUpload(pb.CommitUploadRequest(upload_id=begin.upload_id), metadata=md, timeout=30)
    return time.monotonic() - t0


def test_stalled_calls_and_idle_polls_do_not_starve_an_upload(services: Services) -> None:
    admin = services.agg_stub()
    admin.SubmitJob(pb.SubmitJobRequest(job_yaml=JOB), metadata=services.metadata("admin"))
    md = services.metadata("c1")
    honest = pb_grpc.AggregationServiceStub(_channel(services.server_port))
    honest.RegisterClient(pb.RegisterClientRequest(client_id="c1", job_id="stalljob"), metadata=md)

    release = threading.Event()
    stall_channel = _channel(services.server_port)
    method = "/fedhe.aggregation.v1.AggregationService/GetJobStatus"
    stalled = _stall(stall_channel, method, release)
    poll_channels = [_channel(services.server_port) for _ in range(4)]
    # Round 1 is open: "after round 1" has nothing new, so each poll waits its 20 s.
    request = pb.GetRoundPlanRequest(job_id="stalljob", client_id="c1", after_round=1, wait_s=20)
    polls = [
        pb_grpc.AggregationServiceStub(poll_channels[i % 4]).GetRoundPlan.future(
            request, metadata=md, timeout=60
        )
        for i in range(POLLERS)
    ]
    try:
        time.sleep(2.0)  # every stalled call and poll has reached the server
        assert not any(p.done() for p in polls), "idle polls must be held, not turned away"
        latencies = [_honest_upload(honest, md)]
        status = pb.GetJobStatusRequest(job_id="stalljob")
        t0 = time.monotonic()
        honest.GetJobStatus(status, metadata=md, timeout=30)
        latencies.append(time.monotonic() - t0)
        print(f"honest upload {latencies[0]:.3f} s, status {latencies[1]:.3f} s")
        assert max(latencies) < 1.0, f"honest calls took {latencies} s"
    finally:
        release.set()
        for p in polls:
            p.cancel()
        for channel in (stall_channel, *poll_channels):
            channel.close()
    # The stalled calls (no token) end as unauthenticated once their stream closes.
    codes = {f.exception().code() for f in stalled if f.exception() is not None}  # type: ignore[union-attr]
    assert codes <= {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
    }


def test_key_authority_answers_beside_stalled_calls(services: Services) -> None:
    release = threading.Event()
    channel = _channel(services.keyauth_port)
    _stall(channel, "/fedhe.keyauth.v1.KeyAuthorityService/FetchClientKey", release)
    try:
        time.sleep(1.0)
        stub = keyauth_pb2_grpc.KeyAuthorityServiceStub(_channel(services.keyauth_port))
        t0 = time.monotonic()
        reply = stub.CreateJobKeys(
            keyauth_pb2.CreateJobKeysRequest(job_id="ka-stall", preset="single-key"),
            metadata=services.metadata("server"),
            timeout=30,
        )
        assert len(reply.context_fingerprint) == 32
        assert time.monotonic() - t0 < 5.0
    finally:
        release.set()
        channel.close()


def test_malformed_request_is_invalid_argument(services: Services) -> None:
    channel = _channel(services.server_port)
    call = channel.unary_unary("/fedhe.aggregation.v1.AggregationService/GetJobStatus")
    try:
        call(b"\xff\xff\xff", metadata=services.metadata("admin"), timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()
    else:
        raise AssertionError("a malformed request was accepted")
    finally:
        channel.close()
