"""A site with more samples than the job's per-client weight bound is capped, not refused.

Before, the server refused the upload and the agent exited ("Lower the clip bound or the
weights"); a federation whose sites together hold more samples than the preset's
weight budget could not run at all (issue 9, defect 4).
"""

from __future__ import annotations

import threading

from fedhe_client.agent import ClientAgent
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from tests.integration.conftest import CLIENTS, Services

JOB = """
job: {name: capjob, rounds: 1, seed: 0}
participants: {min_clients: 3, round_timeout_s: 20, wait_after_min_s: 30, max_sample_count: 50}
model: {name: mlp, hidden: 8}
training: {local_epochs: 1}
"""


def test_weights_above_the_bound_are_capped(services: Services) -> None:
    services.agg_stub().SubmitJob(
        pb.SubmitJobRequest(job_yaml=JOB), metadata=services.metadata("admin")
    )
    results: dict[str, dict[str, float]] = {}
    errors: list[BaseException] = []

    def run(name: str, index: int) -> None:
        try:
            config = services.client_config(name, index, len(CLIENTS))
            agent = ClientAgent(config.model_copy(update={"job_id": "capjob"}))
            assert agent.learner.sample_count > 50  # digits: ~480 samples per site
            results[name] = agent.run()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c, i)) for i, c in enumerate(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors, errors
    assert set(results) == set(CLIENTS)
    row = services.server.db.round("capjob", 1)
    assert row is not None and row.weight_sum == 50 * len(CLIENTS)
    assert row.contributors == len(CLIENTS)
