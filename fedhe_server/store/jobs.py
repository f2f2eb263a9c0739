"""Jobs: creation, state, pinned layout and mask."""

from __future__ import annotations

import sqlite3

from fedhe_common.errors import ConflictError, NotFoundError
from fedhe_server.store.base import StoreBase
from fedhe_server.store.model import JOB_COLUMNS, JobRow, JobState, RoundState


class JobsStore(StoreBase):
    """Jobs queries of the state database."""

    def job(self, job_id: str) -> JobRow | None:
        """A job's row, or None."""
        rows = self.query(f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id=?", (job_id,))  # noqa: S608
        return JobRow.from_sql(rows[0]) if rows else None

    def insert_job(
        self,
        job_id: str,
        config_yaml: str,
        state: JobState,
        params_json: str | None,
        fingerprint: bytes,
        rounds: int,
        t: float,
    ) -> None:
        """Create a job."""
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO jobs (job_id, config_yaml, state, params_json, fingerprint, "
                "rounds, created) VALUES (?,?,?,?,?,?,?)",
                (job_id, config_yaml, state.value, params_json, fingerprint, rounds, t),
            )

    def jobs_in_state(self, *states: JobState) -> list[str]:
        """Ids of the jobs in any of ``states``."""
        marks = ",".join("?" * len(states))
        rows = self.query(
            f"SELECT job_id FROM jobs WHERE state IN ({marks}) ORDER BY job_id",  # noqa: S608
            tuple(s.value for s in states),
        )
        return [str(r[0]) for r in rows]

    def keys_ready(self, job_id: str, params_json: str, fingerprint: bytes, parties: str) -> None:
        """A threshold job's collective key is in: KEYGEN -> RUNNING."""
        with self.transaction() as tx:
            tx.execute(
                "UPDATE jobs SET params_json=?, fingerprint=?, parties_json=?, state=? "
                "WHERE job_id=?",
                (params_json, fingerprint, parties, JobState.RUNNING.value, job_id),
            )

    def running_jobs(self) -> list[str]:
        """Ids of jobs that are not finished."""
        rows = self.query("SELECT job_id FROM jobs WHERE state=?", (JobState.RUNNING.value,))
        return [str(r[0]) for r in rows]

    def set_job_progress(
        self, tx: sqlite3.Connection, job_id: str, published: int, state: JobState
    ) -> None:
        """Record a job's published-round count and state."""
        tx.execute(
            "UPDATE jobs SET published=?, state=? WHERE job_id=?", (published, state.value, job_id)
        )

    def set_job_state(self, tx: sqlite3.Connection, job_id: str, state: JobState) -> None:
        """Move a job to ``state``."""
        tx.execute("UPDATE jobs SET state=? WHERE job_id=?", (state.value, job_id))

    def pin_layout(self, tx: sqlite3.Connection, job_id: str, layout_id: str, n: int) -> None:
        """Fix the job's model layout."""
        tx.execute(
            "UPDATE jobs SET layout_id=?, num_values=? WHERE job_id=?", (layout_id, n, job_id)
        )

    def record_mask(self, job_id: str, mask_id: str, mask: bytes) -> None:
        """Record the encryption mask a selective job's clients agreed on."""
        with self.transaction() as tx:
            tx.execute("UPDATE jobs SET mask_id=?, mask=? WHERE job_id=?", (mask_id, mask, job_id))

    def cancel_job(self, job_id: str, t: float) -> tuple[bool, list[int]]:
        """RUNNING/KEYGEN -> CANCELLED with its open or decrypting rounds ABORTED, in one
        transaction; (changed, aborted rounds). Cancelling a cancelled job changes nothing."""
        live = (RoundState.OPEN.value, RoundState.DECRYPTING.value)
        with self.transaction() as tx:
            row = tx.execute("SELECT state FROM jobs WHERE job_id=?", (job_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"unknown job {job_id!r}")
            state = JobState(str(row[0]))
            if state == JobState.CANCELLED:
                return False, []
            if state not in (JobState.RUNNING, JobState.KEYGEN):
                raise ConflictError(f"job {job_id!r} is {state.value}; only a running job stops")
            aborted = [
                int(r[0])
                for r in tx.execute(
                    "SELECT round FROM rounds WHERE job_id=? AND state IN (?,?) ORDER BY round",
                    (job_id, *live),
                )
            ]
            tx.execute(
                "UPDATE rounds SET state=?, closed=? WHERE job_id=? AND state IN (?,?)",
                (RoundState.ABORTED.value, t, job_id, *live),
            )
            self.set_job_state(tx, job_id, JobState.CANCELLED)
        return True, aborted
