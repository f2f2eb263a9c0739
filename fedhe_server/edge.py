"""Long-lived client agents: the jobs a client may take, and the errors it reports."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.errors import FedHEError, InvalidArgumentError
from fedhe_common.rpc.states import job_state
from fedhe_server.store import JobState

if TYPE_CHECKING:
    from fedhe_server.service import AggregationServer

MAX_ERROR_MESSAGE = 2000
MAX_SKIP_IDS = 1000
MAX_OFFERS = 100
_PHASE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def validated_error(phase: str, message: str) -> tuple[str, str]:
    """A client error's phase (a short lower-case word) and message (bounded, printable)."""
    if not _PHASE.match(phase):
        raise InvalidArgumentError("phase must be 1-32 characters of a-z, 0-9, '_', '-'")
    if not message or len(message) > MAX_ERROR_MESSAGE:
        raise InvalidArgumentError(f"message must be 1-{MAX_ERROR_MESSAGE} characters")
    if not all(c.isprintable() or c in "\n\t" for c in message):
        raise InvalidArgumentError("message must be printable text")
    return phase, message


def job_offers(server: AggregationServer, client_id: str, skip: list[str]) -> pb.ListJobsResponse:
    """Running (or key-generating) jobs the client is enrolled in and did not skip."""
    from fedhe_server.views import ensure_may_register

    if len(skip) > MAX_SKIP_IDS:
        raise InvalidArgumentError(f"at most {MAX_SKIP_IDS} skip_job_ids")
    skipped = set(skip)
    offers = []
    for job_id in server.db.jobs_in_state(JobState.RUNNING, JobState.KEYGEN):
        if job_id in skipped:
            continue
        try:
            ensure_may_register(server, job_id, client_id)
        except FedHEError:
            continue
        job = server.db.job(job_id)
        if job is None:
            continue
        config = server.job_config(job_id)
        offers.append(
            pb.JobOffer(
                job_id=job_id,
                task=config.task.name if config.task else "",
                state=job_state(str(job.state)),
            )
        )
        if len(offers) >= MAX_OFFERS:
            break
    return pb.ListJobsResponse(jobs=offers)
