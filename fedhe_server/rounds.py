"""The round state machine of a job: close, publish, decrypt (threshold) or abort.

Rounds go OPEN -> PUBLISHED, OPEN -> DECRYPTING -> PUBLISHED (threshold keys) or
OPEN/DECRYPTING -> ABORTED at the deadline. Every transition is persisted in
SQLite before it takes effect. :class:`RoundStateMachine` is a mixin of
:class:`fedhe_server.jobrun.JobRun`, whose state (db, files, config, lock,
accumulators) it uses.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.models import JobConfig
from fedhe_server.staging import JobFiles
from fedhe_server.state import RoundRow, StateDB, UploadRow, now

if TYPE_CHECKING:
    from fedhe_server.jobrun import RoundAccumulators

logger = logging.getLogger(__name__)
CT = pb.STREAM_KIND_CIPHERTEXT
PT = pb.STREAM_KIND_PLAINTEXT
MAX_CONSECUTIVE_ABORTS = 3


class RoundStateMachine:
    """Round transitions; mixed into JobRun."""

    db: StateDB
    files: JobFiles
    config: JobConfig
    job_id: str
    lock: threading.RLock
    changed: threading.Condition
    _acc: RoundAccumulators | None
    # JobRun also provides _accumulators(number), _layout() and rebuild().

    # ------------------------------------------------------------------ rounds
    def tick(self) -> None:
        """Close, publish or abort the open round when its rule says so."""
        with self.lock:
            decrypting = self.decrypting_round()
            if decrypting is not None and now() >= decrypting.deadline:
                self._abort(decrypting.round, decrypting.contributors or 0, "decryption shares")
                decrypting = None
            row = self.db.open_round(self.job_id)
            if row is None:
                return
            p = self.config.participants
            uploads = self.db.committed_uploads(self.job_id, row.round)
            committed = len(uploads)
            t = now()
            expected = p.expected_clients or self._clients_to_wait_for(uploads, t)
            if committed >= p.min_clients and (
                committed >= expected
                or (row.min_reached is not None and t >= row.min_reached + p.wait_after_min_s)
                or t >= row.deadline
            ):
                self._publish(row.round)
            elif t >= row.deadline:
                self._abort(row.round, committed)
            else:
                return
        with self.changed:
            self.changed.notify_all()

    def _clients_to_wait_for(self, committed: list[UploadRow], t: float) -> int:
        """Clients that committed this round plus live ones (seen within 2 heartbeats)."""
        patience = 2 * self.config.participants.heartbeat_interval_s
        live = self.db.live_clients(self.job_id, t - patience)
        return len(live | {u.client_id for u in committed})

    def _publish(self, number: int) -> None:
        acc = self._accumulators(number)
        uploads = self.db.committed_uploads(self.job_id, number)
        layout = self._layout()
        assert layout is not None
        chunks: dict[tuple[int, int], bytes] = {}
        if acc.encrypted is not None:
            for k in range(acc.encrypted.plan.count):
                chunks[(CT, k)] = acc.encrypted.chunk_blob(k)
        if acc.plain is not None:
            for k, part in enumerate(acc.plain.plan.split(acc.plain.sum)):
                chunks[(PT, k)] = part.astype("<f4").tobytes()  # like uploads: float32
        upload_bytes = sum(
            int(r[0] or 0)
            for r in self.db.query(
                "SELECT SUM(c.nbytes) FROM chunks c JOIN uploads u ON c.upload_id=u.upload_id "
                "WHERE u.job_id=? AND u.round=? AND u.state='COMMITTED'",
                (self.job_id, number),
            )
        )
        header = {
            "round": number,
            "weight_sum": acc.weight_sum,
            "contributors": len(uploads),
            "clients": [u.client_id for u in uploads],
            "layout_id": layout[0],
            "num_values": layout[1],
            "ciphertext_chunks": sum(1 for s, _ in chunks if s == CT),
            "plaintext_chunks": sum(1 for s, _ in chunks if s == PT),
        }
        self.files.write_aggregate(number, chunks, header)
        t = now()
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE rounds SET state=?, closed=?, weight_sum=?, contributors=?, "
                "upload_bytes=?, deadline=? WHERE job_id=? AND round=?",
                (
                    "DECRYPTING" if self.config.threshold_keys else "PUBLISHED",
                    t,
                    acc.weight_sum,
                    len(uploads),
                    upload_bytes,
                    t + self.config.participants.round_timeout_s,
                    self.job_id,
                    number,
                ),
            )
        self._acc = None
        self.files.drop_uploads(number)
        if self.config.threshold_keys:
            logger.info(
                "job %s round %d closed with %d clients; waiting for %d decryption shares",
                self.job_id,
                number,
                len(uploads),
                self.config.keys.threshold,
            )
            return
        self.mark_published(number)

    def decrypting_round(self) -> RoundRow | None:
        """The round whose aggregate waits for threshold decryption shares, if any."""
        rows = [r for r in self.db.rounds(self.job_id) if r.state == "DECRYPTING"]
        return rows[0] if rows else None

    def mark_published(self, number: int) -> None:
        """The round's model is available to clients: count it, open the next round."""
        job = self.db.job(self.job_id)
        row = self.db.round(self.job_id, number)
        assert job is not None and row is not None
        published = int(job["published"]) + (1 if number > 0 else 0)  # type: ignore[call-overload]
        finished = published >= int(job["rounds"])  # type: ignore[call-overload]
        t = now()
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE rounds SET state='PUBLISHED' WHERE job_id=? AND round=?",
                (self.job_id, number),
            )
            tx.execute(
                "UPDATE jobs SET published=?, state=? WHERE job_id=?",
                (published, "FINISHED" if finished else "RUNNING", self.job_id),
            )
            if not finished:
                self._insert_round(tx, number + 1, t)
        if number - 2 >= 1:  # round 0 (the mask's sensitivity sum) stays for late joiners
            self.files.drop_round(number - 2)
        logger.info(
            "job %s round %d published: %d clients, weight sum %d%s",
            self.job_id,
            number,
            row.contributors or 0,
            row.weight_sum or 0,
            " (job finished)" if finished else "",
        )

    def _abort(self, number: int, committed: int, missing: str = "commits") -> None:
        aborts = 1
        for r in reversed(self.db.rounds(self.job_id)[:-1]):
            if r.state != "ABORTED":
                break
            aborts += 1
        failed = aborts >= MAX_CONSECUTIVE_ABORTS
        t = now()
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE rounds SET state='ABORTED', closed=?, contributors=? "
                "WHERE job_id=? AND round=?",
                (t, committed, self.job_id, number),
            )
            if failed:
                tx.execute("UPDATE jobs SET state='FAILED' WHERE job_id=?", (self.job_id,))
            else:
                self._insert_round(tx, number + 1, t)
        self._acc = None
        self.files.drop_uploads(number)
        logger.warning(
            "job %s round %d aborted: not enough %s by the deadline (%d commits)%s",
            self.job_id,
            number,
            missing,
            committed,
            "; job failed" if failed else "",
        )

    def _insert_round(self, tx: object, number: int, t: float) -> None:
        tx.execute(
            "INSERT INTO rounds (job_id, round, state, opened, deadline) "  # type: ignore[attr-defined]
            "VALUES (?,?,?,?,?)",
            (self.job_id, number, "OPEN", t, t + self.config.participants.round_timeout_s),
        )

    def start(self) -> None:
        """Open round 1 for a new job, or resume after a restart."""
        with self.lock:
            if not self.db.rounds(self.job_id):
                with self.db.transaction() as tx:
                    self._insert_round(tx, 0 if self.selective else 1, now())
                return
            row = self.db.open_round(self.job_id)
            if row is not None:
                grace = min(self.config.participants.round_timeout_s, 30.0)
                with self.db.transaction() as tx:
                    tx.execute(
                        "UPDATE rounds SET deadline=MAX(deadline, ?) WHERE job_id=? AND round=?",
                        (now() + grace, self.job_id, row.round),
                    )
            self.rebuild()
