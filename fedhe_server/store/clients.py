"""Registered clients, liveness and reported metrics."""

from __future__ import annotations

from fedhe_common.errors import InvalidArgumentError
from fedhe_server.store.base import StoreBase
from fedhe_server.store.model import ClientRow


class ClientsStore(StoreBase):
    """Registered clients, liveness and reported metrics. queries of the state database."""

    def register_client(self, job_id: str, client_id: str, t: float) -> None:
        """Record a client's registration (idempotent); it counts as seen at ``t``."""
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO clients VALUES (?,?,?,?) ON CONFLICT (job_id, client_id) "
                "DO UPDATE SET last_seen=excluded.last_seen",
                (job_id, client_id, t, t),
            )

    def touch_client(self, job_id: str, client_id: str, t: float) -> bool:
        """Record a heartbeat; False when the client is not registered for the job."""
        with self.transaction() as tx:
            cursor = tx.execute(
                "UPDATE clients SET last_seen=? WHERE job_id=? AND client_id=?",
                (t, job_id, client_id),
            )
            return cursor.rowcount == 1

    def live_clients(self, job_id: str, since: float) -> set[str]:
        """Registered clients seen (registration or heartbeat) at or after ``since``."""
        rows = self.query(
            "SELECT client_id FROM clients WHERE job_id=? AND COALESCE(last_seen, registered) >= ?",
            (job_id, since),
        )
        return {str(r[0]) for r in rows}

    def registered_clients(self, job_id: str) -> list[str]:
        """Client ids registered for a job."""
        return [
            str(r[0])
            for r in self.query(
                "SELECT client_id FROM clients WHERE job_id=? ORDER BY client_id", (job_id,)
            )
        ]

    def is_registered(self, job_id: str, client_id: str) -> bool:
        """True when the client registered for the job."""
        return bool(
            self.query(
                "SELECT 1 FROM clients WHERE job_id=? AND client_id=?", (job_id, client_id)
            )
        )

    def round_metrics(self, job_id: str, number: int, limit: int = 1000) -> dict[str, float]:
        """Mean of each metric reported by clients for a round (first ``limit`` names)."""
        rows = self.query(
            "SELECT name, AVG(value) FROM metrics WHERE job_id=? AND round=? GROUP BY name "
            "ORDER BY name LIMIT ?",
            (job_id, number, limit),
        )
        return {str(n): float(v) for n, v in rows}  # type: ignore[arg-type]

    def report_metrics(
        self, job_id: str, number: int, client_id: str, metrics: dict[str, float], max_names: int
    ) -> None:
        """Store a client's metrics for a round; at most ``max_names`` distinct names."""
        with self.transaction() as tx:
            have = {
                str(r[0])
                for r in tx.execute(
                    "SELECT name FROM metrics WHERE job_id=? AND round=? AND client_id=?",
                    (job_id, number, client_id),
                )
            }
            if len(have | set(metrics)) > max_names:
                raise InvalidArgumentError(
                    f"at most {max_names} metric names per client and round"
                )
            for name, value in metrics.items():
                tx.execute(
                    "INSERT OR REPLACE INTO metrics VALUES (?,?,?,?,?)",
                    (job_id, number, client_id, name, value),
                )

    def report_client_error(
        self, job_id: str, client_id: str, number: int, phase: str, message: str, t: float
    ) -> None:
        """Keep a client's latest error for a job (and count them)."""
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO client_errors VALUES (?,?,?,?,?,?,1) "
                "ON CONFLICT (job_id, client_id) DO UPDATE SET round=excluded.round, "
                "phase=excluded.phase, message=excluded.message, t=excluded.t, count=count+1",
                (job_id, client_id, number, phase, message, t),
            )

    def client_rows(self, job_id: str, limit: int) -> list[ClientRow]:
        """A job's registered clients with their last error (first ``limit`` by id)."""
        rows = self.query(
            "SELECT c.client_id, COALESCE(c.last_seen, c.registered), e.round, e.phase, "
            "e.message, e.t, COALESCE(e.count, 0) FROM clients c LEFT JOIN client_errors e "
            "ON e.job_id = c.job_id AND e.client_id = c.client_id WHERE c.job_id=? "
            "ORDER BY c.client_id LIMIT ?",
            (job_id, limit),
        )
        return [
            ClientRow(
                str(cid),
                None if seen is None else float(seen),
                None if rnd is None else int(rnd),
                None if phase is None else str(phase),
                None if msg is None else str(msg),
                None if t is None else float(t),
                int(count),
            )
            for cid, seen, rnd, phase, msg, t, count in rows
        ]
