"""Long-lived agents' RPCs over real gRPC: ListJobs, ReportError, CancelJob (issue 14)."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from click.testing import CliRunner

from fedhe_cli.app import cli
from fedhe_client.daemon import EdgeDaemon
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.models import SiteDataSection
from tests.integration.conftest import Services

JOB = "job: {name: NAME, rounds: 2}\nmodel: {name: mlp, hidden: 8}\n"


def _submit(services: Services, name: str, extra: str = "participants: {min_clients: 2}\n") -> None:
    services.agg_stub().SubmitJob(
        pb.SubmitJobRequest(job_yaml=JOB.replace("NAME", name) + extra),
        metadata=services.metadata("admin"),
    )


def _register(services: Services, client: str, job: str) -> None:
    services.agg_stub().RegisterClient(
        pb.RegisterClientRequest(client_id=client, job_id=job), metadata=services.metadata(client)
    )


def _status(services: Services, job: str) -> pb.GetJobStatusResponse:
    return services.agg_stub().GetJobStatus(
        pb.GetJobStatusRequest(job_id=job), metadata=services.metadata("admin")
    )


def _admin_cli(services: Services, *args: str) -> str:
    common = ["--server", f"127.0.0.1:{services.server_port}", "--token-file",
              str(services.token_path("admin")), "--insecure"]  # fmt: skip
    result = CliRunner().invoke(cli, ["job", *args, *common])
    assert result.exit_code == 0, result.output
    return result.output


def test_list_jobs_waits_for_a_job_and_honours_skips_and_enrolment(services: Services) -> None:
    stub = services.agg_stub()
    t0 = time.monotonic()
    empty = stub.ListJobs(
        pb.ListJobsRequest(client_id="c1", wait_s=1), metadata=services.metadata("c1")
    )
    assert list(empty.jobs) == [] and time.monotonic() - t0 >= 0.9
    holder: dict[str, pb.ListJobsResponse] = {}

    def wait() -> None:
        holder["reply"] = stub.ListJobs(
            pb.ListJobsRequest(client_id="c1", wait_s=20), metadata=services.metadata("c1")
        )

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.5)
    _submit(services, "a")
    waiter.join(timeout=10)
    assert [o.job_id for o in holder["reply"].jobs] == ["a"]  # woken by the submission
    assert holder["reply"].jobs[0].state == pb.JOB_STATE_RUNNING
    _submit(services, "b", "task: {name: tabular}\n")
    _submit(services, "only-c2", "participants: {min_clients: 1, clients: [c2]}\n")
    offers = stub.ListJobs(
        pb.ListJobsRequest(client_id="c1", skip_job_ids=["a"]), metadata=services.metadata("c1")
    )
    assert [(o.job_id, o.task) for o in offers.jobs] == [("b", "tabular")]  # c1 not enrolled
    offers = stub.ListJobs(pb.ListJobsRequest(client_id="c2"), metadata=services.metadata("c2"))
    assert [o.job_id for o in offers.jobs] == ["a", "b", "only-c2"]
    with pytest.raises(grpc.RpcError) as caught:  # a client asks only for itself
        stub.ListJobs(pb.ListJobsRequest(client_id="c2"), metadata=services.metadata("c1"))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_report_error_is_validated_and_shown_per_client(services: Services) -> None:
    stub = services.agg_stub()
    _submit(services, "e")
    _register(services, "c1", "e")
    _register(services, "c2", "e")

    def report(client: str, phase: str, message: str, job: str = "e") -> None:
        stub.ReportError(
            pb.ReportErrorRequest(job_id=job, client_id=client, round=1, phase=phase,
                                  message=message),
            metadata=services.metadata(client),
        )  # fmt: skip

    for phase, message, code in [
        ("Train Phase", "x", grpc.StatusCode.INVALID_ARGUMENT),
        ("train", "", grpc.StatusCode.INVALID_ARGUMENT),
        ("train", "x" * 2001, grpc.StatusCode.INVALID_ARGUMENT),
        ("train", "bell\x07", grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            report("c1", phase, message)
        assert caught.value.code() == code
    with pytest.raises(grpc.RpcError) as caught:  # c3 never registered for the job
        report("c3", "train", "boom")
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    status = _status(services, "e")
    assert [c.error_count for c in status.clients] == [0, 0]  # refused reports changed nothing
    report("c1", "data", "first")
    report("c1", "train", "CUDA error: out of memory")
    status = _status(services, "e")
    by_id = {c.client_id: c for c in status.clients}
    assert by_id["c1"].error_count == 2 and by_id["c1"].error.phase == "train"
    assert by_id["c1"].error.message == "CUDA error: out of memory"
    assert by_id["c2"].error_count == 0 and not by_id["c2"].error.phase
    assert by_id["c2"].last_seen_unix_ms > 0
    shown = _admin_cli(services, "status", "e")
    assert "CUDA error: out of memory" in shown and "c2" in shown


def test_cancel_aborts_the_open_round_and_clients_see_cancelled(services: Services) -> None:
    stub = services.agg_stub()
    _submit(services, "k")
    _register(services, "c1", "k")
    with pytest.raises(grpc.RpcError) as caught:  # admins only
        stub.CancelJob(pb.CancelJobRequest(job_id="k"), metadata=services.metadata("c1"))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as caught:
        stub.CancelJob(pb.CancelJobRequest(job_id="nope"), metadata=services.metadata("admin"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    plan = stub.GetRoundPlan(
        pb.GetRoundPlanRequest(job_id="k", client_id="c1"), metadata=services.metadata("c1")
    )
    assert plan.phase == pb.ROUND_PHASE_TRAIN and plan.round == 1
    holder: dict[str, pb.GetRoundPlanResponse] = {}

    def poll() -> None:  # a client long-polling past round 1 is woken by the cancellation
        holder["plan"] = stub.GetRoundPlan(
            pb.GetRoundPlanRequest(job_id="k", client_id="c1", after_round=1, wait_s=20),
            metadata=services.metadata("c1"),
        )

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.5)
    shown = _admin_cli(services, "cancel", "k")
    assert "CANCELLED" in shown and "aborted rounds: 1" in shown
    poller.join(timeout=10)
    assert holder["plan"].phase == pb.ROUND_PHASE_JOB_FAILED
    assert holder["plan"].job_state == pb.JOB_STATE_CANCELLED
    status = _status(services, "k")
    assert status.state == pb.JOB_STATE_CANCELLED
    assert [(r.round, r.state) for r in status.history] == [(1, pb.ROUND_STATE_ABORTED)]
    again = stub.CancelJob(pb.CancelJobRequest(job_id="k"), metadata=services.metadata("admin"))
    assert again.state == pb.JOB_STATE_CANCELLED and list(again.aborted_rounds) == []
    offers = stub.ListJobs(pb.ListJobsRequest(client_id="c1"), metadata=services.metadata("c1"))
    assert list(offers.jobs) == []  # a cancelled job is offered to no one
    time.sleep(0.5)  # the round keeper opens no new round of a cancelled job
    assert services.server.db.open_round("k") is None


def test_agent_whose_data_is_missing_reports_it_and_waits_for_the_next_job(
    services: Services, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    _submit(services, "d")
    config = services.client_config("c1", 0, 3).model_copy(
        update={"data": SiteDataSection(format="npz", path=str(tmp_path / "missing.npz"))}
    )
    daemon = EdgeDaemon(config)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while daemon.skipped.get("d") != "failed" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert daemon.skipped.get("d") == "failed"
        assert thread.is_alive()  # it goes on waiting for the next job
    finally:
        daemon.stop.set()
        thread.join(timeout=40)
    shown = _admin_cli(services, "status", "d")
    assert "setup" in shown and "missing.npz" in shown, shown
