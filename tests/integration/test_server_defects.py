"""Regression tests of the aggregation server's defects 3-7 and 10 (issue 9), over
real loopback gRPC against the in-process key authority and server."""

from __future__ import annotations

import time

import grpc
import pytest

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common._proto.fedhe.keyauth.v1 import keyauth_pb2 as kpb
from fedhe_common.crypto.presets import DEFAULT_PRESET, get_preset
from tests.integration.conftest import Services

PLAIN = """
job: {name: plain, rounds: 2, seed: 0}
encryption: {mode: none}
participants: {min_clients: 2, round_timeout_s: 120, wait_after_min_s: 60}
"""
ISOLATED = """
job: {name: %s, rounds: 1, seed: 0}
participants: {min_clients: %d, round_timeout_s: 120, clients: %s}
"""


def _code(exc: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return exc.value.code()


def _submit(services: Services, yaml_text: str, *clients: str) -> object:
    stub = services.agg_stub()
    stub.SubmitJob(pb.SubmitJobRequest(job_yaml=yaml_text), metadata=services.metadata("admin"))
    job_id = yaml_text.split("name:")[1].split(",")[0].strip()
    for c in clients:
        stub.RegisterClient(
            pb.RegisterClientRequest(client_id=c, job_id=job_id), metadata=services.metadata(c)
        )
    return stub


def _manifest(client: str = "c1", **over: object) -> pb.UploadManifest:
    fields: dict[str, object] = dict(
        job_id="plain",
        round=1,
        client_id=client,
        layout_id="L" * 64,
        plaintext_chunks=1,
        num_values=100,
        sample_count=10,
    )
    fields.update(over)
    return pb.UploadManifest(**fields)  # type: ignore[arg-type]


def _begin(stub, services: Services, m: pb.UploadManifest) -> pb.BeginUploadResponse:  # type: ignore[no-untyped-def]
    md = services.metadata(m.client_id)
    return stub.BeginUpload(pb.BeginUploadRequest(manifest=m), metadata=md)


def test_refused_first_manifest_does_not_pin_the_layout(services: Services) -> None:
    """Defect 3: a bad first manifest made every honest upload 'layout differs'."""
    stub = _submit(services, PLAIN, "c1", "c2")
    with pytest.raises(grpc.RpcError) as exc:  # wrong chunk count for its layout
        _begin(stub, services, _manifest(layout_id="EVIL", num_values=5, plaintext_chunks=7))
    assert _code(exc) == grpc.StatusCode.INVALID_ARGUMENT
    reply = _begin(stub, services, _manifest("c2", num_values=9000, plaintext_chunks=3))
    assert list(reply.missing_plaintext) == [0, 1, 2]
    assert [(r.start, r.stop) for r in reply.missing_plaintext_ranges] == [(0, 3)]
    assert services.server.db.job("plain").layout_id is None  # type: ignore[union-attr]


@pytest.mark.parametrize("num_values", [2**36, 2**40, 20_000_001])
def test_huge_num_values_is_refused_before_any_write(
    services: Services, num_values: int
) -> None:
    """Defect 3: 2^36..2^40 claimed values cost the server gigabytes."""
    stub = _submit(services, PLAIN, "c1", "c2")
    plan_chunks = -(-num_values // 4096)
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as exc:
        _begin(
            stub,
            services,
            _manifest(num_values=num_values, plaintext_chunks=min(plan_chunks, 2**32 - 1)),
        )
    assert time.monotonic() - start < 2
    assert _code(exc) == grpc.StatusCode.INVALID_ARGUMENT
    assert "job.max_values" in (exc.value.details() or "")
    assert services.server.db.query("SELECT COUNT(*) FROM uploads")[0][0] == 0


@pytest.mark.parametrize("sample_count", [10**9, 2**63 - 1, 1_000_001])
def test_plaintext_job_bounds_each_clients_weight(services: Services, sample_count: int) -> None:
    """Defect 5: 2^63-1 overflowed every publish; 10^9 silently took over the model."""
    stub = _submit(services, PLAIN, "c1", "c2")
    with pytest.raises(grpc.RpcError) as exc:
        _begin(stub, services, _manifest(sample_count=sample_count))
    assert _code(exc) == grpc.StatusCode.INVALID_ARGUMENT
    assert "participants.max_sample_count" in (exc.value.details() or "")
    assert services.server.db.query("SELECT COUNT(*) FROM uploads")[0][0] == 0
    _begin(stub, services, _manifest(sample_count=1_000_000))  # the bound itself is fine


def test_ckks_job_shares_the_weight_budget_among_clients(services: Services) -> None:
    """Defect 4: one client declaring n near the whole weight budget took all of it."""
    job = "job: {name: ck, rounds: 1}\nparticipants: {min_clients: 2, expected_clients: 4}\n"
    stub = _submit(services, job, "c1", "c2")
    fingerprint = services.server.run_for("ck").fingerprint
    m = pb.UploadManifest(
        job_id="ck",
        round=1,
        client_id="c1",
        layout_id="L",
        context_fingerprint=fingerprint,
        ciphertext_chunks=1,
        num_values=100,
        sample_count=2_000_000,
    )
    with pytest.raises(grpc.RpcError) as exc:
        _begin(stub, services, m)
    assert _code(exc) == grpc.StatusCode.INVALID_ARGUMENT
    bound = int(get_preset(DEFAULT_PRESET).max_weight_sum()) // 4  # budget / 4 clients
    assert f"per-client bound {bound}" in (exc.value.details() or "")
    m.sample_count = bound
    _begin(stub, services, m)


def test_jobs_are_isolated(services: Services) -> None:
    """Defect 6: any client fetched another job's secret key and aggregate."""
    stub = _submit(services, ISOLATED % ("ja", 2, "[c1, c2]"), "c1")
    _submit(services, ISOLATED % ("jb", 1, "[c3]"), "c3")
    ka = services.keyauth_stub()
    md3 = services.metadata("c3")
    calls = {
        "register in another job": lambda: stub.RegisterClient(
            pb.RegisterClientRequest(client_id="c3", job_id="ja"), metadata=md3
        ),
        "secret key of another job": lambda: ka.FetchClientKey(
            kpb.FetchClientKeyRequest(job_id="ja"), metadata=md3
        ),
        "aggregate of another job": lambda: list(
            stub.GetAggregate(pb.GetAggregateRequest(job_id="ja", round=1), metadata=md3)
        ),
        "plan of another job": lambda: stub.GetRoundPlan(
            pb.GetRoundPlanRequest(job_id="ja", client_id="c3"), metadata=md3
        ),
        "status of another job": lambda: stub.GetJobStatus(
            pb.GetJobStatusRequest(job_id="ja"), metadata=md3
        ),
        "metrics to another job": lambda: stub.ReportMetrics(
            pb.ReportMetricsRequest(job_id="ja", client_id="c3", round=1, metrics={"a": 1}),
            metadata=md3,
        ),
        # c2 is enrolled in ja but never registered.
        "aggregate, unregistered": lambda: list(
            stub.GetAggregate(
                pb.GetAggregateRequest(job_id="ja", round=1), metadata=services.metadata("c2")
            )
        ),
        "plan, unregistered": lambda: stub.GetRoundPlan(
            pb.GetRoundPlanRequest(job_id="ja", client_id="c2"),
            metadata=services.metadata("c2"),
        ),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as exc:
            call()
        assert _code(exc) == grpc.StatusCode.PERMISSION_DENIED, name
    assert not services.server.db.is_registered("ja", "c3")
    # The enrolled clients do get their job's key and plan.
    md1 = services.metadata("c1")
    key = ka.FetchClientKey(kpb.FetchClientKeyRequest(job_id="ja"), metadata=md1)
    assert key.secret_key
    plan = stub.GetRoundPlan(
        pb.GetRoundPlanRequest(job_id="ja", client_id="c1"), metadata=services.metadata("c1")
    )
    assert plan.round == 1


def test_metrics_are_validated_and_status_stays_bounded(services: Services) -> None:
    """Defect 7: 2 x 8000 names broke GetJobStatus; NaN was INTERNAL, 1e300 accepted."""
    stub = _submit(services, PLAIN, "c1", "c2")
    md = services.metadata("c1")

    def report(metrics: dict[str, float], client: str = "c1") -> None:
        stub.ReportMetrics(
            pb.ReportMetricsRequest(job_id="plain", client_id=client, round=1, metrics=metrics),
            metadata=services.metadata(client),
        )

    bad = [
        {f"m{i:05d}-{'x' * 20}": 0.5 for i in range(8000)},
        {"accuracy": float("nan")},
        {"accuracy": 1e300},
        {"accuracy": float("inf")},
        {"x" * 65: 1.0},
        {"": 1.0},
    ]
    for metrics in bad:
        with pytest.raises(grpc.RpcError) as exc:
            report(metrics)
        assert _code(exc) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as exc:  # c3 is not registered for the job
        report({"accuracy": 0.5}, "c3")
    assert _code(exc) == grpc.StatusCode.PERMISSION_DENIED
    for k in range(2):  # 32 names per client and round, in as many reports as it likes
        report({f"n{k}-{i}": float(i) for i in range(16)})
    with pytest.raises(grpc.RpcError) as exc:
        report({"one-too-many": 1.0})
    assert _code(exc) == grpc.StatusCode.INVALID_ARGUMENT
    report({"accuracy": 0.75}, "c2")
    status = stub.GetJobStatus(pb.GetJobStatusRequest(job_id="plain"), metadata=md)
    assert status.history[0].metrics["accuracy"] == 0.75
    assert len(status.history[0].metrics) == 32  # first names by name, bounded


def test_job_status_is_bounded_however_long_the_job(services: Services) -> None:
    """Defect 7: a long job pushed GetJobStatus past the send limit (round 2,855)."""
    _submit(services, PLAIN.replace("rounds: 2", "rounds: 5000"), "c1", "c2")
    db = services.server.db
    with db.transaction() as tx:  # 4,000 closed rounds, each with 32 metric names
        for r in range(2, 4002):
            tx.execute(
                "INSERT INTO rounds (job_id, round, state, opened, deadline, closed) "
                "VALUES ('plain', ?, 'ABORTED', 1, 2, 3)",
                (r,),
            )
            tx.executemany(
                "INSERT INTO metrics VALUES ('plain', ?, 'c1', ?, 1.0)",
                [(r, f"metric-{i:02d}-{'y' * 40}") for i in range(32)],
            )
    stub = services.agg_stub()
    status = stub.GetJobStatus(
        pb.GetJobStatusRequest(job_id="plain"), metadata=services.metadata("admin")
    )
    assert status.ByteSize() < 328_000
    assert len(status.history) == 50 and status.history[-1].round == 4001
    assert status.rounds_total == 4001 and status.rounds_aborted == 4000
    assert status.history_truncated
    page = stub.GetJobStatus(
        pb.GetJobStatusRequest(job_id="plain", history_limit=10, history_before=100),
        metadata=services.metadata("admin"),
    )
    assert [r.round for r in page.history] == list(range(90, 100))


def test_upload_status_of_another_client_is_not_revealed(services: Services) -> None:
    """Defect 10: a client could read another client's upload status."""
    stub = _submit(services, PLAIN, "c1", "c2")
    upload_id = _begin(stub, services, _manifest("c1")).upload_id
    with pytest.raises(grpc.RpcError) as exc:
        stub.GetUploadStatus(
            pb.GetUploadStatusRequest(upload_id=upload_id), metadata=services.metadata("c2")
        )
    assert _code(exc) == grpc.StatusCode.NOT_FOUND
    own = stub.GetUploadStatus(
        pb.GetUploadStatusRequest(upload_id=upload_id), metadata=services.metadata("c1")
    )
    assert own.state == pb.UPLOAD_STATE_RECEIVING
    assert [(r.start, r.stop) for r in own.missing_plaintext_ranges] == [(0, 1)]


def test_key_authority_refuses_baseline_preset_and_absurd_parties(services: Services) -> None:
    """Defect 10: the key authority accepted 'paper-default' and parties = 2^32-1."""
    ka = services.keyauth_stub()
    md = services.metadata("server")
    bad = [
        kpb.CreateJobKeysRequest(job_id="k1", preset="paper-default"),
        kpb.CreateJobKeysRequest(
            job_id="k2", preset="threshold-strict", mode="threshold", parties=2**32 - 1,
            threshold=3,
        ),
    ]
    for request in bad:
        with pytest.raises(grpc.RpcError) as exc:
            ka.CreateJobKeys(request, metadata=md)
        assert _code(exc) == grpc.StatusCode.INVALID_ARGUMENT
    assert not (services.workdir / "keyauth" / "jobs" / "k1" / "params.json").exists()
    assert not (services.workdir / "keyauth" / "jobs" / "k2" / "dkg").exists()


def test_job_submitted_while_key_authority_is_down_is_not_created_later(
    services: Services,
) -> None:
    """Defect 10: the admin saw a failure, but the server created the job later."""
    services._ka_server.stop(None)
    stub = services.agg_stub()
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as exc:
        stub.SubmitJob(
            pb.SubmitJobRequest(job_yaml="job: {name: late, rounds: 1}\n"),
            metadata=services.metadata("admin"),
            timeout=30,
        )
    assert _code(exc) == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - start < 15
    time.sleep(1.0)
    assert services.server.db.job("late") is None
