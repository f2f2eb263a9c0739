"""Job, round, upload and chunk state in SQLite (WAL); the source of truth after a crash."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from fedhe_common.errors import InvalidArgumentError


class JobState(StrEnum):
    """Life of a job (stored as its value)."""

    KEYGEN = "KEYGEN"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"


class RoundState(StrEnum):
    """Life of a round (stored as its value)."""

    OPEN = "OPEN"
    DECRYPTING = "DECRYPTING"
    PUBLISHED = "PUBLISHED"
    ABORTED = "ABORTED"


class UploadState(StrEnum):
    """Life of an upload attempt (stored as its value)."""

    RECEIVING = "RECEIVING"
    COMMITTED = "COMMITTED"
    SUPERSEDED = "SUPERSEDED"
    REJECTED = "REJECTED"

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

    # --------------------------------------------------------------------- rounds
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
            "state=? ORDER BY created, upload_id",
            (job_id, number, UploadState.COMMITTED.value),
        )
        return [UploadRow(*r) for r in rows]  # type: ignore[arg-type]

    def chunk_hashes(self, upload_id: str) -> dict[tuple[int, int], bytes]:
        """(stream, index) -> sha256 of the chunks received for an upload."""
        rows = self.query("SELECT stream, idx, sha256 FROM chunks WHERE upload_id=?", (upload_id,))
        return {(int(s), int(i)): bytes(h) for s, i, h in rows}  # type: ignore[arg-type]

    def chunk_hash(self, upload_id: str, stream: int, index: int) -> list[tuple[object, ...]]:
        """The stored hash of one chunk as rows (empty if not received)."""
        return self.query(
            "SELECT sha256 FROM chunks WHERE upload_id=? AND stream=? AND idx=?",
            (upload_id, stream, index),
        )

    def add_chunk(self, upload_id: str, stream: int, index: int, digest: bytes, n: int) -> None:
        """Record a received chunk (its file is already durable)."""
        with self.transaction() as tx:
            tx.execute(
                "INSERT OR IGNORE INTO chunks VALUES (?,?,?,?,?)",
                (upload_id, stream, index, digest, n),
            )

    def committed_upload_of(self, job_id: str, number: int, client_id: str) -> str | None:
        """The upload id a client committed in a round, if any."""
        rows = self.query(
            "SELECT upload_id FROM uploads WHERE job_id=? AND round=? AND client_id=? "
            "AND state=?",
            (job_id, number, client_id, UploadState.COMMITTED.value),
        )
        return str(rows[0][0]) if rows else None

    def committed_weight(self, job_id: str, number: int) -> int:
        """Sum of the sample counts committed in a round."""
        rows = self.query(
            "SELECT SUM(sample_count) FROM uploads WHERE job_id=? AND round=? AND state=?",
            (job_id, number, UploadState.COMMITTED.value),
        )
        return int(rows[0][0] or 0)  # type: ignore[call-overload]

    def add_upload(
        self,
        upload_id: str,
        job_id: str,
        number: int,
        client_id: str,
        manifest: bytes,
        sample_count: int,
        t: float,
    ) -> None:
        """A new upload attempt; the client's earlier unfinished attempt is superseded."""
        with self.transaction() as tx:
            tx.execute(
                "UPDATE uploads SET state=? WHERE job_id=? AND round=? AND client_id=? AND state=?",
                (
                    UploadState.SUPERSEDED.value,
                    job_id,
                    number,
                    client_id,
                    UploadState.RECEIVING.value,
                ),
            )
            tx.execute(
                "INSERT INTO uploads VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    upload_id,
                    job_id,
                    number,
                    client_id,
                    manifest,
                    UploadState.RECEIVING.value,
                    sample_count,
                    None,
                    t,
                ),
            )

    def set_upload_state(self, tx: sqlite3.Connection, upload_id: str, state: UploadState) -> None:
        """Move an upload to ``state``."""
        tx.execute("UPDATE uploads SET state=? WHERE upload_id=?", (state.value, upload_id))

    def commit_upload(self, tx: sqlite3.Connection, upload_id: str, receipt: bytes) -> None:
        """An upload counted in its round's sums, with its receipt."""
        tx.execute(
            "UPDATE uploads SET state=?, receipt=? WHERE upload_id=?",
            (UploadState.COMMITTED.value, receipt, upload_id),
        )

    def mark_min_reached(self, tx: sqlite3.Connection, job_id: str, number: int, t: float) -> None:
        """Record when a round first had min_clients commits."""
        tx.execute(
            "UPDATE rounds SET min_reached=COALESCE(min_reached, ?) WHERE job_id=? AND round=?",
            (t, job_id, number),
        )

    def record_mask(self, job_id: str, mask_id: str, mask: bytes) -> None:
        """Record the encryption mask a selective job's clients agreed on."""
        with self.transaction() as tx:
            tx.execute("UPDATE jobs SET mask_id=?, mask=? WHERE job_id=?", (mask_id, mask, job_id))

    def pin_layout(self, tx: sqlite3.Connection, job_id: str, layout_id: str, n: int) -> None:
        """Fix the job's model layout."""
        tx.execute(
            "UPDATE jobs SET layout_id=?, num_values=? WHERE job_id=?", (layout_id, n, job_id)
        )

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

    # ---------------------------------------------------------- transitions
    # Each takes the caller's open transaction, so one state change is one commit.
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

    def round_in_state(self, job_id: str, state: RoundState) -> RoundRow | None:
        """The job's (first) round in ``state``, if any."""
        rows = self.query(
            "SELECT * FROM rounds WHERE job_id=? AND state=? ORDER BY round LIMIT 1",
            (job_id, state.value),
        )
        return RoundRow(*rows[0]) if rows else None  # type: ignore[arg-type]

    def committed_bytes(self, job_id: str, number: int) -> int:
        """Bytes of the chunks of a round's committed uploads."""
        rows = self.query(
            "SELECT SUM(c.nbytes) FROM chunks c JOIN uploads u ON c.upload_id=u.upload_id "
            "WHERE u.job_id=? AND u.round=? AND u.state=?",
            (job_id, number, UploadState.COMMITTED.value),
        )
        return int(rows[0][0] or 0)  # type: ignore[call-overload]

    # ------------------------------------------------------- scrape-time metrics
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

    # -------------------------------------------------------- threshold decryption
    def active_parties(self, job_id: str, number: int) -> list[int]:
        """The fixed active set of a round's decryption (empty until fixed)."""
        rows = self.query(
            "SELECT alpha FROM decryptions WHERE job_id=? AND round=? AND active=1 ORDER BY alpha",
            (job_id, number),
        )
        return [int(r[0]) for r in rows]  # type: ignore[call-overload]

    def volunteer(
        self, job_id: str, number: int, alpha: int, client_id: str, t: float, threshold: int
    ) -> list[int]:
        """Record an offer to decrypt; the active set it fixed now (else empty)."""
        with self.transaction() as tx:
            tx.execute(
                "INSERT OR IGNORE INTO decryptions VALUES (?,?,?,?,?,0)",
                (job_id, number, alpha, client_id, t),
            )
            fixed = tx.execute(
                "SELECT COUNT(*) FROM decryptions WHERE job_id=? AND round=? AND active=1",
                (job_id, number),
            ).fetchone()[0]
            offers = tx.execute(
                "SELECT alpha FROM decryptions WHERE job_id=? AND round=? "
                "ORDER BY volunteered, alpha",
                (job_id, number),
            ).fetchall()
            if fixed or len(offers) < threshold:
                return []
            chosen = [int(a) for (a,) in offers[:threshold]]
            tx.executemany(
                "UPDATE decryptions SET active=1 WHERE job_id=? AND round=? AND alpha=?",
                [(job_id, number, a) for a in chosen],
            )
            return chosen

    def has_volunteered(self, job_id: str, number: int, alpha: int) -> bool:
        """True when party ``alpha`` offered to decrypt the round."""
        return bool(
            self.query(
                "SELECT 1 FROM decryptions WHERE job_id=? AND round=? AND alpha=?",
                (job_id, number, alpha),
            )
        )

    def share_hash(
        self, job_id: str, number: int, alpha: int, index: int
    ) -> list[tuple[object, ...]]:
        """The stored hash of one decryption share as rows (empty if not received)."""
        return self.query(
            "SELECT sha256 FROM shares WHERE job_id=? AND round=? AND alpha=? AND idx=?",
            (job_id, number, alpha, index),
        )

    def add_share(self, job_id: str, number: int, alpha: int, index: int, digest: bytes) -> None:
        """Record a relayed share (its file is already durable)."""
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO shares VALUES (?,?,?,?,?)", (job_id, number, alpha, index, digest)
            )

    def share_count(self, job_id: str, number: int, alpha: int | None = None) -> int:
        """Shares received for a round (of one party, or of all)."""
        if alpha is None:
            rows = self.query(
                "SELECT COUNT(*) FROM shares WHERE job_id=? AND round=?", (job_id, number)
            )
        else:
            rows = self.query(
                "SELECT COUNT(*) FROM shares WHERE job_id=? AND round=? AND alpha=?",
                (job_id, number, alpha),
            )
        return int(rows[0][0])  # type: ignore[call-overload]

    def is_registered(self, job_id: str, client_id: str) -> bool:
        """True when the client registered for the job."""
        return bool(
            self.query(
                "SELECT 1 FROM clients WHERE job_id=? AND client_id=?", (job_id, client_id)
            )
        )

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


def now() -> float:
    """Wall-clock seconds (persisted deadlines must survive a restart)."""
    return time.time()
