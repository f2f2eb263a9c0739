"""Uploads and their chunks."""

from __future__ import annotations

import sqlite3

from fedhe_server.store.base import StoreBase
from fedhe_server.store.model import UploadRow, UploadState


class UploadsStore(StoreBase):
    """Uploads and their chunks. queries of the state database."""

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

    def committed_bytes(self, job_id: str, number: int) -> int:
        """Bytes of the chunks of a round's committed uploads."""
        rows = self.query(
            "SELECT SUM(c.nbytes) FROM chunks c JOIN uploads u ON c.upload_id=u.upload_id "
            "WHERE u.job_id=? AND u.round=? AND u.state=?",
            (job_id, number, UploadState.COMMITTED.value),
        )
        return int(rows[0][0] or 0)  # type: ignore[call-overload]
