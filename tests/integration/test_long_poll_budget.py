"""Many idle clients long-polling must not starve the calls that do the work."""

from __future__ import annotations

import threading
import time

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from tests.integration.conftest import Services

JOB = """
job: {name: polljob, rounds: 2, seed: 0}
participants: {min_clients: 3, round_timeout_s: 120, wait_after_min_s: 60}
"""
POLLERS = 80


def test_idle_long_polls_leave_workers_for_uploads(services: Services) -> None:
    stub = services.agg_stub()
    stub.SubmitJob(pb.SubmitJobRequest(job_yaml=JOB), metadata=services.metadata("admin"))
    md = services.metadata("c1")
    stub.RegisterClient(pb.RegisterClientRequest(client_id="c1", job_id="polljob"), metadata=md)

    # Round 1 is open; "after round 1" polls have nothing new and would wait 8 s each.
    replies: list[pb.GetRoundPlanResponse] = []
    started = threading.Barrier(POLLERS + 1)

    def poll() -> None:
        started.wait()
        request = pb.GetRoundPlanRequest(job_id="polljob", client_id="c1", after_round=1, wait_s=8)
        replies.append(stub.GetRoundPlan(request, metadata=md, timeout=60))

    threads = [threading.Thread(target=poll) for _ in range(POLLERS)]
    for t in threads:
        t.start()
    started.wait()
    time.sleep(1.0)  # let the polls occupy the server

    t0 = time.monotonic()
    status = stub.GetJobStatus(pb.GetJobStatusRequest(job_id="polljob"), metadata=md, timeout=60)
    waited = time.monotonic() - t0
    assert status.job_id == "polljob"
    assert waited < 4.0, f"a work call waited {waited:.1f} s behind idle long-polls"

    for t in threads:
        t.join(timeout=60)
    assert len(replies) == POLLERS and all(r.retry for r in replies)
    # Polls beyond the server's budget were answered at once, with a back-off hint.
    turned_away = [r for r in replies if r.retry_after_ms > 0]
    assert 0 < len(turned_away) < POLLERS
