"""Scrape-time counts for the Prometheus collector."""

from __future__ import annotations

from fedhe_server.store.base import StoreBase


class TelemetryStore(StoreBase):
    """Scrape-time counts for the Prometheus collector. queries of the state database."""

    def latest_rounds(self) -> list[tuple[str, int]]:
        """(job, latest round) of every job with rounds."""
        rows = self.query("SELECT job_id, MAX(round) FROM rounds GROUP BY job_id")
        return [(str(j), int(n)) for j, n in rows]  # type: ignore[call-overload]

    def round_state_counts(self) -> list[tuple[str, int]]:
        """(round state, count) over all jobs."""
        rows = self.query("SELECT state, COUNT(*) FROM rounds GROUP BY state")
        return [(str(st), int(n)) for st, n in rows]  # type: ignore[call-overload]

    def bytes_by_stream(self) -> dict[int, int]:
        """Accepted chunk bytes per stream kind."""
        rows = self.query("SELECT stream, SUM(nbytes) FROM chunks GROUP BY stream")
        return {int(k): int(v or 0) for k, v in rows}  # type: ignore[call-overload]

    def upload_round_state_counts(self) -> list[tuple[str, str, int]]:
        """(upload state, its round's state, count)."""
        rows = self.query(
            "SELECT u.state, r.state, COUNT(*) FROM uploads u JOIN rounds r "
            "ON r.job_id = u.job_id AND r.round = u.round GROUP BY u.state, r.state"
        )
        return [(str(a), str(b), int(n)) for a, b, n in rows]  # type: ignore[call-overload]

    def round_durations(self) -> list[float]:
        """Seconds from opening to closing of every closed round."""
        rows = self.query("SELECT closed - opened FROM rounds WHERE closed IS NOT NULL")
        return [float(d) for (d,) in rows]  # type: ignore[arg-type]
