"""A job's history as plain rows: ``fedhe job history|logs`` and ``fedhe plot`` read these.

Everything here works on the server's replies (GetJobHistory, GetJobStatus) already
fetched; nothing imports SEAL, torch or plotting libraries.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from typing import Any

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.rpc.states import round_state_name

# The per-step overheads, in the order they happen in a round (FedML-HE Fig. 13).
STEPS = ("train_s", "encrypt_s", "upload_s", "aggregate_s", "download_s", "decrypt_s")
COLUMNS = (
    "round", "state", "client", "accuracy", "loss", "samples", *STEPS,
    "upload_bytes", "download_bytes",
)  # fmt: skip
MAX_PAGES = 1000  # GetJobHistory pages fetched for one command (50 rounds each at most)


def fetch_history(
    call: Callable[[pb.GetJobHistoryRequest], pb.GetJobHistoryResponse], job_id: str, last: int
) -> list[pb.RoundHistory]:
    """Every round of the job (or the ``last`` ones), oldest first, page by page."""
    rounds: list[pb.RoundHistory] = []
    before = 0
    for _ in range(MAX_PAGES):
        want = max(0, last - len(rounds)) if last else 0
        reply = call(pb.GetJobHistoryRequest(job_id=job_id, limit=min(want, 50), before=before))
        rounds[:0] = list(reply.rounds)
        if not reply.truncated or not reply.rounds or (last and len(rounds) >= last):
            break
        before = reply.rounds[0].summary.round
    return rounds[-last:] if last else rounds


def history_rows(rounds: list[pb.RoundHistory]) -> list[dict[str, Any]]:
    """One row per round and client (a round no client reported for: one row, no client)."""
    rows: list[dict[str, Any]] = []
    for r in rounds:
        base = {"round": r.summary.round, "state": round_state_name(r.summary.state)}
        for c in r.clients or [None]:
            m = dict(c.metrics) if c is not None else {}
            row = {**base, "client": c.client_id if c is not None else ""}
            for name in COLUMNS[3:]:
                row[name] = m.get(name)
            rows.append(row)
    return rows


def history_document(job_id: str, rounds: list[pb.RoundHistory]) -> dict[str, Any]:
    """The JSON form of ``fedhe job history``."""
    return {
        "job_id": job_id,
        "rounds": [
            {
                "round": r.summary.round,
                "state": round_state_name(r.summary.state),
                "contributors": r.summary.contributors,
                "weight_sum": r.summary.weight_sum,
                "seconds": r.summary.seconds,
                "upload_bytes": r.summary.upload_bytes,
                "metrics": dict(r.summary.metrics),
                "events": {
                    "opened_unix_ms": r.opened_unix_ms,
                    "min_reached_unix_ms": r.min_reached_unix_ms,
                    "closed_unix_ms": r.closed_unix_ms,
                },
                "clients": {c.client_id: dict(c.metrics) for c in r.clients},
            }
            for r in rounds
        ],
    }


def history_csv(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV with a header line (empty cells for metrics not reported)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return out.getvalue()


def log_events(
    rounds: list[pb.RoundHistory], status: pb.GetJobStatusResponse
) -> list[dict[str, Any]]:
    """Round events and the clients' last error reports, oldest first."""
    events: list[dict[str, Any]] = []

    def add(t_ms: int, kind: str, number: int, client: str, message: str) -> None:
        if t_ms:
            events.append(
                {"unix_ms": t_ms, "kind": kind, "round": number, "client": client,
                 "message": message}
            )  # fmt: skip

    for r in rounds:
        n, s = r.summary.round, r.summary
        add(r.opened_unix_ms, "round_opened", n, "", f"round {n} opened")
        add(r.min_reached_unix_ms, "min_clients", n, "", f"round {n} reached min_clients")
        add(
            r.closed_unix_ms,
            "round_closed",
            n,
            "",
            f"round {n} {round_state_name(s.state)}: {s.contributors} contributors, "
            f"{s.upload_bytes} bytes",
        )
    for c in status.clients:
        if c.error.phase:
            add(
                c.error.unix_ms,
                "client_error",
                c.error.round,
                c.client_id,
                f"{c.error.phase}: {c.error.message} ({c.error_count} errors in all)",
            )
    return sorted(events, key=lambda e: (e["unix_ms"], e["kind"]))


def format_time(unix_ms: int) -> str:
    """Local wall-clock time of an event."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix_ms / 1000))
