"""Rounds: reads and the transition helpers (each inside the caller's transaction)."""

from __future__ import annotations

import sqlite3

from fedhe_server.store.base import StoreBase
from fedhe_server.store.model import RoundRow, RoundState


class RoundsStore(StoreBase):
    """Rounds queries of the state database."""

    def round(self, job_id: str, number: int) -> RoundRow | None:
        """One round, or None."""
        rows = self.query("SELECT * FROM rounds WHERE job_id=? AND round=?", (job_id, number))
        return RoundRow(*rows[0]) if rows else None  # type: ignore[arg-type]

    def open_round(self, job_id: str) -> RoundRow | None:
        """The job's open round, if any."""
        rows = self.query(
            "SELECT * FROM rounds WHERE job_id=? AND state=?", (job_id, RoundState.OPEN.value)
        )
        return RoundRow(*rows[0]) if rows else None  # type: ignore[arg-type]

    def rounds(self, job_id: str) -> list[RoundRow]:
        """All rounds of a job in order."""
        rows = self.query("SELECT * FROM rounds WHERE job_id=? ORDER BY round", (job_id,))
        return [RoundRow(*r) for r in rows]  # type: ignore[arg-type]

    def last_published(self, job_id: str) -> int:
        """Latest published training round (0 if none; round 0 is a mask round)."""
        rows = self.query(
            "SELECT MAX(round) FROM rounds WHERE job_id=? AND state=? AND round >= 1",
            (job_id, RoundState.PUBLISHED.value),
        )
        return int(rows[0][0] or 0)  # type: ignore[arg-type]

    def insert_round(
        self, tx: sqlite3.Connection, job_id: str, number: int, opened: float, deadline: float
    ) -> None:
        """Open a round."""
        tx.execute(
            "INSERT INTO rounds (job_id, round, state, opened, deadline) VALUES (?,?,?,?,?)",
            (job_id, number, RoundState.OPEN.value, opened, deadline),
        )

    def close_round(
        self,
        tx: sqlite3.Connection,
        job_id: str,
        number: int,
        state: RoundState,
        closed: float,
        weight_sum: int | None,
        contributors: int,
        upload_bytes: int | None = None,
        deadline: float | None = None,
    ) -> None:
        """Close a round with its counts (deadline: of the decryption that follows)."""
        tx.execute(
            "UPDATE rounds SET state=?, closed=?, weight_sum=COALESCE(?, weight_sum), "
            "contributors=?, upload_bytes=COALESCE(?, upload_bytes), "
            "deadline=COALESCE(?, deadline) WHERE job_id=? AND round=?",
            (state.value, closed, weight_sum, contributors, upload_bytes, deadline, job_id, number),
        )

    def set_round_state(
        self, tx: sqlite3.Connection, job_id: str, number: int, state: RoundState
    ) -> None:
        """Move a round to ``state``."""
        tx.execute(
            "UPDATE rounds SET state=? WHERE job_id=? AND round=?", (state.value, job_id, number)
        )

    def extend_deadline(
        self, tx: sqlite3.Connection, job_id: str, number: int, at_least: float
    ) -> None:
        """Push a round's deadline to at least ``at_least`` (grace after a restart)."""
        tx.execute(
            "UPDATE rounds SET deadline=MAX(deadline, ?) WHERE job_id=? AND round=?",
            (at_least, job_id, number),
        )

    def count_published(self, tx: sqlite3.Connection, job_id: str) -> int:
        """Published training rounds (round 0, the mask round, does not count)."""
        row = tx.execute(
            "SELECT COUNT(*) FROM rounds WHERE job_id=? AND state=? AND round >= 1",
            (job_id, RoundState.PUBLISHED.value),
        ).fetchone()
        return int(row[0])

    def round_in_state(self, job_id: str, state: RoundState) -> RoundRow | None:
        """The job's (first) round in ``state``, if any."""
        rows = self.query(
            "SELECT * FROM rounds WHERE job_id=? AND state=? ORDER BY round LIMIT 1",
            (job_id, state.value),
        )
        return RoundRow(*rows[0]) if rows else None  # type: ignore[arg-type]

    def rounds_page(
        self, job_id: str, limit: int, before: int | None = None
    ) -> tuple[list[RoundRow], bool]:
        """Up to ``limit`` newest rounds below ``before``, oldest first; True if more exist."""
        rows = self.query(
            "SELECT * FROM rounds WHERE job_id=? AND round < ? ORDER BY round DESC LIMIT ?",
            (job_id, 2**62 if before is None else before, limit + 1),
        )
        page = [RoundRow(*r) for r in rows[:limit]]  # type: ignore[arg-type]
        return page[::-1], len(rows) > limit

    def round_totals(self, job_id: str) -> dict[str, int]:
        """Round count per state."""
        rows = self.query(
            "SELECT state, COUNT(*) FROM rounds WHERE job_id=? GROUP BY state", (job_id,)
        )
        return {str(s): int(n) for s, n in rows}  # type: ignore[call-overload]

    def mark_min_reached(self, tx: sqlite3.Connection, job_id: str, number: int, t: float) -> None:
        """Record when a round first had min_clients commits."""
        tx.execute(
            "UPDATE rounds SET min_reached=COALESCE(min_reached, ?) WHERE job_id=? AND round=?",
            (t, job_id, number),
        )
