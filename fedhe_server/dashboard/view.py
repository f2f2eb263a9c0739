"""The dashboard's JSON, built from the state database alone (no HTTP, no gRPC).

Everything here is bounded (devices, jobs, rounds, per-client rows) so one poll stays
small however long the server runs, and nothing secret is included: no tokens, no job
YAML, no key material; only ids, states, counts, seconds, bytes and reported metrics.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fedhe_server.store import JobState, RoundRow, StateDB
from fedhe_server.store.devices import DeviceRow
from fedhe_server.store.history import JobListRow

STEPS = ("train_s", "encrypt_s", "upload_s", "aggregate_s", "download_s", "decrypt_s")
CHART_METRICS = ("accuracy", "loss")
MAX_DEVICES = 500
MAX_JOBS = 200
MAX_ROUNDS = 50  # the newest rounds of the selected job
MAX_ROUND_METRICS = 16
MAX_CLIENT_ROWS = 5_000  # per-client metric rows read for the overhead chart
MAX_ERRORS = 200
JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

HeartbeatInterval = Callable[[str], float]


def _ms(t: float | None) -> int:
    return int((t or 0) * 1000)


def device_json(row: DeviceRow, now: float, interval_s: float) -> dict[str, Any]:
    """One device: online when seen within two heartbeat intervals (the server's rule)."""
    host: dict[str, Any] | None = None
    if row.host is not None:
        h = row.host
        gpu = None
        if h.gpu_name:
            gpu = {
                "name": h.gpu_name,
                "memory_used_bytes": h.gpu_memory_used,
                "memory_total_bytes": h.gpu_memory_total,
                "utilization_percent": None if h.gpu_util < 0 else h.gpu_util,
            }
        host = {
            "cpu_percent": h.cpu_percent,
            "ram_used_bytes": h.ram_used,
            "ram_total_bytes": h.ram_total,
            "gpu": gpu,
            "unix_ms": _ms(row.host_t),
        }
    return {
        "client_id": row.client_id,
        "online": now - row.last_seen <= 2 * interval_s,
        "last_seen_unix_ms": _ms(row.last_seen),
        "last_job": row.last_job,
        "jobs": row.jobs,
        "host": host,
    }


def job_json(row: JobListRow) -> dict[str, Any]:
    """One job of the job list, with its progress (published rounds / rounds)."""
    return {
        "job_id": row.job_id,
        "state": row.state,
        "rounds": row.rounds,
        "published": row.published,
        "open_round": row.open_round,
        "clients": row.clients,
        "created_unix_ms": _ms(row.created),
        "progress": min(1.0, row.published / row.rounds) if row.rounds else 0.0,
    }


def pick_job(jobs: list[JobListRow], wanted: str | None) -> str | None:
    """The wanted job if listed, else the newest running job, else the newest job."""
    ids = {j.job_id for j in jobs}
    if wanted in ids:
        return wanted
    running = [j for j in jobs if j.state in (JobState.RUNNING, JobState.KEYGEN)]
    pool = running or jobs
    return max(pool, key=lambda j: (j.created, j.job_id)).job_id if pool else None


def _round_json(db: StateDB, job_id: str, r: RoundRow, now: float) -> dict[str, Any]:
    return {
        "round": r.round,
        "state": r.state,
        "contributors": r.contributors or 0,
        "seconds": (r.closed or now) - r.opened,
        "upload_bytes": r.upload_bytes or 0,
        "deadline_unix_ms": _ms(r.deadline),
        "metrics": db.round_metrics(job_id, r.round, MAX_ROUND_METRICS),
    }


def overhead(per_round: dict[int, dict[str, dict[str, float]]]) -> dict[str, Any] | None:
    """Each client's seconds per step (Fig. 13) in the newest complete round.

    Complete: every client with step times there also sent its own report (``train_s``);
    the server's ``aggregate_s`` lands first. Without one, the newest round with any.
    """
    found: list[dict[str, Any]] = []
    for number in sorted(per_round, reverse=True):
        reported = {
            cid: m for cid, m in sorted(per_round[number].items()) if any(s in m for s in STEPS)
        }
        if not reported:
            continue
        clients = [
            {"client_id": cid, "steps": {s: float(m.get(s, 0.0)) for s in STEPS}}
            for cid, m in reported.items()
        ]
        entry = {"round": number, "steps": list(STEPS), "clients": clients}
        if all("train_s" in m for m in reported.values()):
            return entry
        found.append(entry)
    return found[0] if found else None


def job_detail(db: StateDB, job_id: str, now: float) -> dict[str, Any]:
    """The selected job: its newest rounds, metrics per round, overheads, client errors."""
    page, truncated = db.rounds_page(job_id, MAX_ROUNDS)
    per_client = (
        db.client_metrics(job_id, page[0].round, page[-1].round, MAX_CLIENT_ROWS) if page else {}
    )
    errors = [
        {
            "client_id": c.client_id,
            "round": c.error_round,
            "phase": c.error_phase,
            "message": c.error_message,
            "count": c.error_count,
            "unix_ms": _ms(c.error_t),
        }
        for c in db.client_rows(job_id, MAX_ERRORS)
        if c.error_phase is not None
    ]
    return {
        "job_id": job_id,
        "rounds": [_round_json(db, job_id, r, now) for r in page],
        "rounds_truncated": truncated,
        "chart_metrics": list(CHART_METRICS),
        "overhead": overhead(per_client),
        "errors": errors,
    }


def dashboard_state(
    db: StateDB,
    now: float,
    heartbeat_interval_s: HeartbeatInterval,
    job_id: str | None = None,
    poll_interval_s: float = 3.0,
) -> dict[str, Any]:
    """Everything the page shows, as plain JSON-able data.

    ``now`` is the server's clock; ``heartbeat_interval_s(job_id)`` the job's interval
    (a device is online when seen within two intervals of its newest job).
    """
    jobs, _ = db.jobs_page(MAX_JOBS)
    devices = [
        device_json(row, now, heartbeat_interval_s(row.last_job)) for row in db.devices(MAX_DEVICES)
    ]
    selected = pick_job(jobs, job_id)
    return {
        "server_time_unix_ms": _ms(now),
        "poll_interval_s": poll_interval_s,
        "devices": devices,
        "jobs": [job_json(j) for j in jobs],
        "job": job_detail(db, selected, now) if selected is not None else None,
    }
