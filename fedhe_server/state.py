"""Job, round, upload and chunk state in SQLite (WAL); the source of truth after a crash."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  job_id TEXT PRIMARY KEY, config_yaml TEXT NOT NULL, state TEXT NOT NULL,
  params_json TEXT, public_key BLOB, fingerprint BLOB, layout_id TEXT, num_values INTEGER,
  mask_id TEXT, mask BLOB, parties_json TEXT,
  rounds INTEGER NOT NULL, published INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS clients (
  job_id TEXT NOT NULL, client_id TEXT NOT NULL, registered REAL NOT NULL, last_seen REAL,
  PRIMARY KEY (job_id, client_id));
CREATE TABLE IF NOT EXISTS rounds (
  job_id TEXT NOT NULL, round INTEGER NOT NULL, state TEXT NOT NULL, opened REAL NOT NULL,
  deadline REAL NOT NULL, min_reached REAL, closed REAL, weight_sum INTEGER,
  contributors INTEGER, upload_bytes INTEGER, PRIMARY KEY (job_id, round));
CREATE TABLE IF NOT EXISTS uploads (
  upload_id TEXT PRIMARY KEY, job_id TEXT NOT NULL, round INTEGER NOT NULL,
  client_id TEXT NOT NULL, manifest BLOB NOT NULL, state TEXT NOT NULL,
  sample_count INTEGER NOT NULL, receipt BLOB, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS uploads_round ON uploads (job_id, round, state);
CREATE TABLE IF NOT EXISTS chunks (
  upload_id TEXT NOT NULL, stream INTEGER NOT NULL, idx INTEGER NOT NULL,
  sha256 BLOB NOT NULL, nbytes INTEGER NOT NULL, PRIMARY KEY (upload_id, stream, idx));
CREATE TABLE IF NOT EXISTS decryptions (
  job_id TEXT NOT NULL, round INTEGER NOT NULL, alpha INTEGER NOT NULL, client_id TEXT NOT NULL,
  volunteered REAL NOT NULL, active INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (job_id, round, alpha));
CREATE TABLE IF NOT EXISTS shares (
  job_id TEXT NOT NULL, round INTEGER NOT NULL, alpha INTEGER NOT NULL, idx INTEGER NOT NULL,
  sha256 BLOB NOT NULL, PRIMARY KEY (job_id, round, alpha, idx));
CREATE TABLE IF NOT EXISTS metrics (
  job_id TEXT NOT NULL, round INTEGER NOT NULL, client_id TEXT NOT NULL, name TEXT NOT NULL,
  value REAL NOT NULL, PRIMARY KEY (job_id, round, client_id, name));
"""


@dataclass(frozen=True)
class RoundRow:
    """One round's persisted state."""

    job_id: str
    round: int
    state: str
    opened: float
    deadline: float
    min_reached: float | None
    closed: float | None
    weight_sum: int | None
    contributors: int | None
    upload_bytes: int | None


@dataclass(frozen=True)
class UploadRow:
    """One upload attempt."""

    upload_id: str
    job_id: str
    round: int
    client_id: str
    manifest: bytes
    state: str
    sample_count: int
    receipt: bytes | None


class StateDB:
    """Thread-safe access to the server's SQLite database."""

    def __init__(self, path: str | Path) -> None:
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(SCHEMA)
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(clients)")}
        if "last_seen" not in columns:  # state made before heartbeats existed
            self._conn.execute("ALTER TABLE clients ADD COLUMN last_seen REAL")
        self._lock = threading.RLock()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An immediate transaction, committed on success and rolled back on error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """Run a read query."""
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    # ----------------------------------------------------------------------- jobs
    def job(self, job_id: str) -> dict[str, object] | None:
        """A job row as a dict, or None."""
        rows = self.query(
            "SELECT job_id, config_yaml, state, params_json, public_key, fingerprint, "
            "layout_id, num_values, rounds, published, mask_id, mask, parties_json "
            "FROM jobs WHERE job_id=?",
            (job_id,),
        )
        if not rows:
            return None
        keys = (
            "job_id",
            "config_yaml",
            "state",
            "params_json",
            "public_key",
            "fingerprint",
            "layout_id",
            "num_values",
            "rounds",
            "published",
            "mask_id",
            "mask",
            "parties_json",
        )
        return dict(zip(keys, rows[0], strict=True))

    def running_jobs(self) -> list[str]:
        """Ids of jobs that are not finished."""
        return [str(r[0]) for r in self.query("SELECT job_id FROM jobs WHERE state='RUNNING'")]

    # --------------------------------------------------------------------- rounds
    def round(self, job_id: str, number: int) -> RoundRow | None:
        """One round, or None."""
        rows = self.query("SELECT * FROM rounds WHERE job_id=? AND round=?", (job_id, number))
        return RoundRow(*rows[0]) if rows else None  # type: ignore[arg-type]

    def open_round(self, job_id: str) -> RoundRow | None:
        """The job's open round, if any."""
        rows = self.query("SELECT * FROM rounds WHERE job_id=? AND state='OPEN'", (job_id,))
        return RoundRow(*rows[0]) if rows else None  # type: ignore[arg-type]

    def rounds(self, job_id: str) -> list[RoundRow]:
        """All rounds of a job in order."""
        rows = self.query("SELECT * FROM rounds WHERE job_id=? ORDER BY round", (job_id,))
        return [RoundRow(*r) for r in rows]  # type: ignore[arg-type]

    def last_published(self, job_id: str) -> int:
        """Latest published training round (0 if none; round 0 is a mask round)."""
        rows = self.query(
            "SELECT MAX(round) FROM rounds WHERE job_id=? AND state='PUBLISHED' AND round >= 1",
            (job_id,),
        )
        return int(rows[0][0] or 0)  # type: ignore[arg-type]

    # -------------------------------------------------------------------- uploads
    def upload(self, upload_id: str) -> UploadRow | None:
        """One upload, or None."""
        rows = self.query(
            "SELECT upload_id, job_id, round, client_id, manifest, state, "
            "sample_count, receipt FROM uploads WHERE upload_id=?",
            (upload_id,),
        )
        return UploadRow(*rows[0]) if rows else None  # type: ignore[arg-type]

    def committed_uploads(self, job_id: str, number: int) -> list[UploadRow]:
        """Committed uploads of a round, oldest first."""
        rows = self.query(
            "SELECT upload_id, job_id, round, client_id, manifest, state, "
            "sample_count, receipt FROM uploads WHERE job_id=? AND round=? AND "
            "state='COMMITTED' ORDER BY created, upload_id",
            (job_id, number),
        )
        return [UploadRow(*r) for r in rows]  # type: ignore[arg-type]

    def chunk_hashes(self, upload_id: str) -> dict[tuple[int, int], bytes]:
        """(stream, index) -> sha256 of the chunks received for an upload."""
        rows = self.query("SELECT stream, idx, sha256 FROM chunks WHERE upload_id=?", (upload_id,))
        return {(int(s), int(i)): bytes(h) for s, i, h in rows}  # type: ignore[arg-type]

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

    def round_metrics(self, job_id: str, number: int) -> dict[str, float]:
        """Mean of each metric reported by clients for a round."""
        rows = self.query(
            "SELECT name, AVG(value) FROM metrics WHERE job_id=? AND round=? GROUP BY name",
            (job_id, number),
        )
        return {str(n): float(v) for n, v in rows}  # type: ignore[arg-type]


def now() -> float:
    """Wall-clock seconds (persisted deadlines must survive a restart)."""
    return time.time()
