"""Read-only answers of the aggregation server, without gRPC: job status, round plans.

A read never starts, ticks or repairs a job run; it looks at the state database and
the runs the server already holds. Callers check the caller's identity first and
:func:`ensure_enrolled` decides whether a client may see a job at all.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.errors import NotFoundError, PermissionDeniedError
from fedhe_common.rpc.states import job_state, round_state
from fedhe_server.store import JobState, RoundRow, RoundState, StateDB
from fedhe_server.store.model import ClientRow

if TYPE_CHECKING:
    from fedhe_server.service import AggregationServer

# GetJobStatus history: the newest rounds only, so the reply stays far below the
# send limit however long the job runs (a round summary is < 3 KB with its metrics).
DEFAULT_HISTORY = 50
MAX_HISTORY = 100
MAX_STATUS_METRICS = 32  # metric names shown per round
MAX_STATUS_CLIENTS = 200  # clients listed in a job status
DEFAULT_JOBS = 100  # ListJobSummaries page
MAX_JOBS = 500
DEFAULT_HISTORY_ROUNDS = 20  # GetJobHistory page: rounds x clients x metrics stay bounded
MAX_HISTORY_ROUNDS = 50
# Per-client metric rows per history page: <= 77 bytes each (64-character names), so a
# page stays below the server's smallest send limit (~320 KB). A single round with more
# rows (over ~90 clients with 32 names each) lists its first clients by id only.
MAX_HISTORY_ROWS = 3_000


def ensure_enrolled(server: AggregationServer, job_id: str, client_id: str) -> None:
    """A client may act on (or read) a job only if it is enrolled and registered."""
    ensure_may_register(server, job_id, client_id)
    if not server.db.is_registered(job_id, client_id):
        raise PermissionDeniedError(f"client {client_id!r} is not registered for job {job_id!r}")


def ensure_may_register(server: AggregationServer, job_id: str, client_id: str) -> None:
    """The job's participant list (when it has one) must name the client."""
    config = server.job_config(job_id)
    enrolled = config.participants.clients
    if enrolled is not None and client_id not in enrolled:
        raise PermissionDeniedError(f"client {client_id!r} is not enrolled in job {job_id!r}")


def job_status(
    db: StateDB, job_id: str, limit: int = 0, before: int = 0
) -> pb.GetJobStatusResponse:
    """A job's state, totals and a bounded page of its round history."""
    job = db.job(job_id)
    if job is None:
        raise NotFoundError(f"unknown job {job_id!r}")
    limit = min(limit or DEFAULT_HISTORY, MAX_HISTORY)
    page, truncated = db.rounds_page(job_id, limit, before or None)
    totals = db.round_totals(job_id)
    now = time.time()
    history = [_summary(db, job_id, r, now) for r in page]
    open_row = db.open_round(job_id)
    return pb.GetJobStatusResponse(
        job_id=job_id,
        state=job_state(str(job.state)),
        current_round=open_row.round if open_row else db.last_published(job_id),
        rounds=int(job.rounds),  # type: ignore[call-overload]
        history=history,
        rounds_total=sum(totals.values()),
        rounds_published=totals.get(RoundState.PUBLISHED, 0),
        rounds_aborted=totals.get(RoundState.ABORTED, 0),
        history_truncated=truncated,
        clients=[_client_summary(c) for c in db.client_rows(job_id, MAX_STATUS_CLIENTS)],
        transfer=transfer_progress(db, job_id),
    )


def transfer_progress(db: StateDB, job_id: str) -> pb.TransferProgress | None:
    """A transfer job's phase, epoch, step and best epoch (None for other jobs)."""
    from fedhe_server.store.transfer import TransferStore
    from fedhe_server.transfer.rpc import PHASES

    row = TransferStore(db).row(job_id)
    if row is None:
        return None
    return pb.TransferProgress(
        phase=PHASES[row.phase],
        mode=row.mode,
        epoch=row.epoch,
        step=row.step,
        epochs_run=row.epochs_run,
        best_epoch=row.best_epoch,
        answered=row.answered,
        error=row.error or "",
    )


def job_list(db: StateDB, limit: int = 0, after: str = "") -> pb.ListJobSummariesResponse:
    """A page of every job's progress, by job id."""
    limit = min(limit or DEFAULT_JOBS, MAX_JOBS)
    page, more = db.jobs_page(limit, after)
    jobs = [
        pb.JobSummary(
            job_id=row.job_id,
            state=job_state(row.state),
            current_round=row.open_round
            if row.open_round is not None
            else db.last_published(row.job_id),
            rounds=row.rounds,
            clients=row.clients,
            created_unix_ms=int(row.created * 1000),
        )
        for row in page
    ]
    return pb.ListJobSummariesResponse(
        jobs=jobs, next_after_job_id=page[-1].job_id if more and page else ""
    )


def job_history(
    db: StateDB, job_id: str, limit: int = 0, before: int = 0
) -> pb.GetJobHistoryResponse:
    """A page of a job's rounds, each with every client's reported metrics and its events."""
    if db.job(job_id) is None:
        raise NotFoundError(f"unknown job {job_id!r}")
    limit = min(limit or DEFAULT_HISTORY_ROUNDS, MAX_HISTORY_ROUNDS)
    page, truncated = db.rounds_page(job_id, limit, before or None)
    if page:  # many clients: fewer rounds per page, so the reply stays bounded
        counts = db.metric_counts(job_id, page[0].round, page[-1].round)
        while len(page) > 1 and sum(counts.get(r.round, 0) for r in page) > MAX_HISTORY_ROWS:
            page, truncated = page[1:], True
    per_client = (
        db.client_metrics(job_id, page[0].round, page[-1].round, MAX_HISTORY_ROWS) if page else {}
    )
    now = time.time()

    def ms(t: float | None) -> int:
        return int((t or 0) * 1000)

    rounds = [
        pb.RoundHistory(
            summary=_summary(db, job_id, r, now),
            clients=[
                pb.ClientRoundMetrics(client_id=cid, metrics=m)
                for cid, m in sorted(per_client.get(r.round, {}).items())
            ],
            opened_unix_ms=ms(r.opened),
            min_reached_unix_ms=ms(r.min_reached),
            closed_unix_ms=ms(r.closed),
        )
        for r in page
    ]
    return pb.GetJobHistoryResponse(job_id=job_id, rounds=rounds, truncated=truncated)


def _client_summary(row: ClientRow) -> pb.ClientSummary:
    summary = pb.ClientSummary(
        client_id=row.client_id,
        last_seen_unix_ms=int((row.last_seen or 0) * 1000),
        error_count=row.error_count,
    )
    if row.error_phase is not None:
        summary.error.CopyFrom(
            pb.ClientError(
                round=row.error_round or 0,
                phase=row.error_phase,
                message=row.error_message or "",
                unix_ms=int((row.error_t or 0) * 1000),
            )
        )
    return summary


def round_plan(
    server: AggregationServer, job_id: str, after_round: int, client_id: str
) -> pb.GetRoundPlanResponse:
    """What the client should do next in a job (never starts anything)."""
    from fedhe_server.decryption import ThresholdDecryption  # server-side bookkeeping only

    db = server.db
    job = db.job(job_id)
    if job is None:
        raise NotFoundError(f"unknown job {job_id!r}")
    if job.state == JobState.KEYGEN:  # threshold keys not generated yet
        return pb.GetRoundPlanResponse(job_id=job_id, retry=True)
    config = server.job_config(job_id)
    run = server.runs.get(job_id)
    base = pb.GetRoundPlanResponse(
        job_id=job_id,
        aggregate_round=db.last_published(job_id),
        layout_id=job.layout_id or "",
        context_fingerprint=job.fingerprint,
        mask_required=config.encryption.mode == "ckks" and config.selective.enabled,
        mask_id=job.mask_id or "",
    )

    def plan(phase: pb.RoundPhase.ValueType, **fields: Any) -> pb.GetRoundPlanResponse:
        reply = pb.GetRoundPlanResponse(phase=phase, **fields)
        reply.MergeFrom(base)
        return reply

    if job.state == JobState.FINISHED:
        return plan(pb.ROUND_PHASE_JOB_FINISHED)
    if job.state != JobState.RUNNING or run is None:
        return plan(pb.ROUND_PHASE_JOB_FAILED, job_state=job_state(str(job.state)))
    decrypting = run.decrypting_round()
    if decrypting is not None:
        if ThresholdDecryption(run).pending_for(client_id, decrypting.round):
            return plan(pb.ROUND_PHASE_DECRYPT, round=decrypting.round)
        return plan(pb.ROUND_PHASE_TRAIN, retry=True)
    row = db.open_round(job_id)
    if row is None or not _is_new_for(db, row.round, after_round, job_id, client_id):
        return plan(pb.ROUND_PHASE_TRAIN, retry=True)
    phase = pb.ROUND_PHASE_MASK if row.round == 0 else pb.ROUND_PHASE_TRAIN
    return plan(phase, round=row.round, deadline_unix_ms=int(row.deadline * 1000))


def _is_new_for(db: StateDB, number: int, after_round: int, job_id: str, client_id: str) -> bool:
    if number > after_round:
        return True
    if number == 0:  # the mask round: new unless this client already committed it
        return db.committed_upload_of(job_id, 0, client_id) is None
    return False


def _summary(db: StateDB, job_id: str, r: RoundRow, now: float) -> pb.RoundSummary:
    """One round as the protocol shows it (state, counts, seconds, bytes, mean metrics)."""
    return pb.RoundSummary(
        round=r.round,
        state=round_state(r.state),
        contributors=r.contributors or 0,
        weight_sum=r.weight_sum or 0,
        seconds=(r.closed or now) - r.opened,
        upload_bytes=r.upload_bytes or 0,
        metrics=db.round_metrics(job_id, r.round, MAX_STATUS_METRICS),
    )
