"""Threshold decryption bookkeeping: volunteers, the active set, shares."""

from __future__ import annotations

from fedhe_server.store.base import StoreBase


class DecryptionsStore(StoreBase):
    """Threshold decryption bookkeeping queries of the state database."""

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
