"""Typed rows and states of the server's state database, and its schema."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    """Life of a job (stored as its value)."""

    KEYGEN = "KEYGEN"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


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
CREATE TABLE IF NOT EXISTS client_errors (
  job_id TEXT NOT NULL, client_id TEXT NOT NULL, round INTEGER NOT NULL, phase TEXT NOT NULL,
  message TEXT NOT NULL, t REAL NOT NULL, count INTEGER NOT NULL DEFAULT 1,
  PRIMARY KEY (job_id, client_id));
CREATE TABLE IF NOT EXISTS hosts (
  client_id TEXT PRIMARY KEY, t REAL NOT NULL, cpu_percent REAL NOT NULL,
  ram_used INTEGER NOT NULL, ram_total INTEGER NOT NULL, gpu_name TEXT NOT NULL,
  gpu_memory_used INTEGER NOT NULL, gpu_memory_total INTEGER NOT NULL, gpu_util REAL NOT NULL);
"""


@dataclass(frozen=True)
class JobRow:
    """One job's persisted state."""

    job_id: str
    config_yaml: str
    state: JobState
    params_json: str | None
    public_key: bytes | None
    fingerprint: bytes
    layout_id: str | None
    num_values: int | None
    rounds: int
    published: int
    mask_id: str | None
    mask: bytes | None
    parties_json: str | None

    @classmethod
    def from_sql(cls, row: tuple[Any, ...]) -> JobRow:
        """Build from a ``SELECT`` of :data:`JOB_COLUMNS`, in that order."""
        (job_id, config_yaml, state, params_json, public_key, fingerprint, layout_id,
         num_values, rounds, published, mask_id, mask, parties_json) = row
        return cls(
            str(job_id),
            str(config_yaml),
            JobState(str(state)),
            None if params_json is None else str(params_json),
            None if public_key is None else bytes(public_key),
            bytes(fingerprint or b""),
            None if layout_id is None else str(layout_id),
            None if num_values is None else int(num_values),
            int(rounds),
            int(published),
            None if mask_id is None else str(mask_id),
            None if mask is None else bytes(mask),
            None if parties_json is None else str(parties_json),
        )


JOB_COLUMNS = (
    "job_id, config_yaml, state, params_json, public_key, fingerprint, layout_id, "
    "num_values, rounds, published, mask_id, mask, parties_json"
)


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


@dataclass(frozen=True)
class ClientRow:
    """A registered client of a job and the last error it reported (if any)."""

    client_id: str
    last_seen: float | None
    error_round: int | None
    error_phase: str | None
    error_message: str | None
    error_t: float | None
    error_count: int


def now() -> float:
    """Wall-clock seconds (persisted deadlines must survive a restart)."""
    return time.time()
