"""Job list and per-client round metrics for ``fedhe job list|history`` (read-only)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from fedhe_server.store.base import StoreBase


@dataclass(frozen=True)
class JobListRow:
    """One job's progress for the job list."""

    job_id: str
    state: str
    rounds: int
    published: int
    open_round: int | None
    clients: int
    created: float


class HistoryStore(StoreBase):
    """Job list and per-client round metrics. queries of the state database."""

    def jobs_page(self, limit: int, after: str = "") -> tuple[list[JobListRow], bool]:
        """Up to ``limit`` jobs with ids after ``after``, by id; True when more exist."""
        rows = self.query(
            "SELECT j.job_id, j.state, j.rounds, j.published, "
            "(SELECT MAX(round) FROM rounds r WHERE r.job_id = j.job_id AND r.state = 'OPEN'), "
            "(SELECT COUNT(*) FROM clients c WHERE c.job_id = j.job_id), j.created "
            "FROM jobs j WHERE j.job_id > ? ORDER BY j.job_id LIMIT ?",
            (after, limit + 1),
        )
        page = [
            JobListRow(
                str(j), str(st), int(n), int(p), None if o is None else int(o), int(c), float(t)
            )
            for j, st, n, p, o, c, t in rows[:limit]
        ]
        return page, len(rows) > limit

    def client_metrics(
        self, job_id: str, first: int, last: int, limit: int
    ) -> dict[int, dict[str, dict[str, float]]]:
        """round -> client -> metrics for rounds ``first..last`` (at most ``limit`` rows)."""
        rows = self.query(
            "SELECT round, client_id, name, value FROM metrics WHERE job_id=? AND round BETWEEN "
            "? AND ? ORDER BY round, client_id, name LIMIT ?",
            (job_id, first, last, limit),
        )
        out: dict[int, dict[str, dict[str, float]]] = {}
        for rnd, cid, name, value in rows:
            out.setdefault(int(rnd), {}).setdefault(str(cid), {})[str(name)] = float(value)
        return out

    def metric_counts(self, job_id: str, first: int, last: int) -> dict[int, int]:
        """round -> number of per-client metric rows, for rounds ``first..last``."""
        rows = self.query(
            "SELECT round, COUNT(*) FROM metrics WHERE job_id=? AND round BETWEEN ? AND ? "
            "GROUP BY round",
            (job_id, first, last),
        )
        return {int(r): int(n) for r, n in rows}

    def put_metric(
        self, tx: sqlite3.Connection, job_id: str, number: int, client_id: str, name: str,
        value: float,
    ) -> None:  # fmt: skip
        """Record one server-measured metric of a client's round (e.g. ``aggregate_s``)."""
        tx.execute(
            "INSERT OR REPLACE INTO metrics VALUES (?,?,?,?,?)",
            (job_id, number, client_id, name, value),
        )
