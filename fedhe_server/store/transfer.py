"""Transfer jobs (HETAL): phase, data-set manifest and training progress, one row a job.

Composed over the server's :class:`~fedhe_server.store.base.StoreBase` (same database,
same lock); the table is created on first use. Every state change is one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from fedhe_common.errors import ConflictError, NotFoundError
from fedhe_server.store.base import StoreBase

SCHEMA = """
CREATE TABLE IF NOT EXISTS transfer_jobs (
    job_id TEXT PRIMARY KEY,
    phase TEXT NOT NULL,
    mode TEXT NOT NULL,
    owner TEXT,
    manifest TEXT,
    params_json TEXT,
    receipt BLOB,
    answered INTEGER NOT NULL DEFAULT 0,
    epoch INTEGER NOT NULL DEFAULT 0,
    step INTEGER NOT NULL DEFAULT 0,
    epochs_run INTEGER NOT NULL DEFAULT 0,
    best_epoch INTEGER NOT NULL DEFAULT -1,
    error TEXT,
    updated REAL NOT NULL
);
"""
COLUMNS = (
    "job_id, phase, mode, owner, manifest, params_json, receipt, answered, epoch, step, "
    "epochs_run, best_epoch, error"
)


class TransferPhase(StrEnum):
    """A transfer job's life: keys -> upload -> training -> finished (or failed)."""

    KEYS = "keys"
    UPLOAD = "upload"
    TRAINING = "training"
    FINISHED = "finished"
    FAILED = "failed"


@dataclass(frozen=True)
class TransferRow:
    """One transfer job's row."""

    job_id: str
    phase: TransferPhase
    mode: str
    owner: str | None
    manifest: str | None
    params_json: str | None
    receipt: bytes | None
    answered: int
    epoch: int
    step: int
    epochs_run: int
    best_epoch: int
    error: str | None


@dataclass(frozen=True)
class Progress:
    """What the trainer reached after a reply (for status; the state file is the truth)."""

    answered: int
    epoch: int
    step: int
    epochs_run: int
    best_epoch: int


class TransferStore:
    """SQL of the transfer tables."""

    def __init__(self, db: StoreBase) -> None:
        self.db = db
        db.query(SCHEMA.strip().rstrip(";"))  # one statement, autocommitted

    def row(self, job_id: str) -> TransferRow | None:
        """A transfer job's row, or None (not a transfer job)."""
        rows = self.db.query(
            f"SELECT {COLUMNS} FROM transfer_jobs WHERE job_id=?",  # noqa: S608
            (job_id,),
        )
        if not rows:
            return None
        r = rows[0]
        return TransferRow(
            str(r[0]), TransferPhase(str(r[1])), str(r[2]), r[3], r[4], r[5],
            bytes(r[6]) if r[6] is not None else None, int(r[7]), int(r[8]), int(r[9]),
            int(r[10]), int(r[11]), r[12],
        )  # fmt: skip

    def require(self, job_id: str) -> TransferRow:
        """The row, or :class:`NotFoundError`."""
        row = self.row(job_id)
        if row is None:
            raise NotFoundError(f"job {job_id!r} is not a transfer job")
        return row

    def insert(self, job_id: str, mode: str, t: float) -> None:
        """A new transfer job waits for the owner's keys (repeat: no change)."""
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT OR IGNORE INTO transfer_jobs (job_id, phase, mode, updated) "
                "VALUES (?,?,?,?)",
                (job_id, TransferPhase.KEYS.value, mode, t),
            )

    def keys_in(self, job_id: str, t: float) -> None:
        """KEYS -> UPLOAD."""
        self._move(job_id, TransferPhase.KEYS, TransferPhase.UPLOAD, t)

    def begin_upload(
        self, job_id: str, owner: str, manifest: str, params_json: str, t: float
    ) -> None:
        """Record the owner and its manifest (a repeat must be identical)."""
        with self.db.transaction() as tx:
            r = tx.execute(
                "SELECT owner, manifest FROM transfer_jobs WHERE job_id=?", (job_id,)
            ).fetchone()
            if r is None:
                raise NotFoundError(f"job {job_id!r} is not a transfer job")
            if r[0] is not None and r[0] != owner:
                raise ConflictError(f"job {job_id!r} has another data owner")
            if r[1] is not None and r[1] != manifest:
                raise ConflictError("the data set was begun with another manifest")
            tx.execute(
                "UPDATE transfer_jobs SET owner=?, manifest=?, params_json=?, updated=? "
                "WHERE job_id=?",
                (owner, manifest, params_json, t, job_id),
            )

    def committed(self, job_id: str, receipt: bytes, t: float) -> None:
        """UPLOAD -> TRAINING with the upload's receipt."""
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE transfer_jobs SET phase=?, receipt=?, updated=? WHERE job_id=? AND phase=?",
                (TransferPhase.TRAINING.value, receipt, t, job_id, TransferPhase.UPLOAD.value),
            )

    def progress(self, job_id: str, p: Progress, t: float) -> None:
        """The trainer applied a reply (or a repair re-derived its progress)."""
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE transfer_jobs SET answered=?, epoch=?, step=?, epochs_run=?, "
                "best_epoch=?, updated=? WHERE job_id=?",
                (p.answered, p.epoch, p.step, p.epochs_run, p.best_epoch, t, job_id),
            )

    def finish(self, job_id: str, t: float, job_state: str) -> None:
        """TRAINING -> FINISHED, and the job's own state, in one transaction."""
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE transfer_jobs SET phase=?, updated=? WHERE job_id=?",
                (TransferPhase.FINISHED.value, t, job_id),
            )
            tx.execute("UPDATE jobs SET state=? WHERE job_id=?", (job_state, job_id))

    def fail(self, job_id: str, error: str, t: float, job_state: str | None) -> None:
        """Any phase -> FAILED with the reason, and the job's own state (None: as it is,
        e.g. already CANCELLED)."""
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE transfer_jobs SET phase=?, error=?, updated=? WHERE job_id=?",
                (TransferPhase.FAILED.value, error[:2000], t, job_id),
            )
            if job_state is not None:
                tx.execute("UPDATE jobs SET state=? WHERE job_id=?", (job_state, job_id))

    def _move(self, job_id: str, old: TransferPhase, new: TransferPhase, t: float) -> None:
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE transfer_jobs SET phase=?, updated=? WHERE job_id=? AND phase=?",
                (new.value, t, job_id, old.value),
            )
