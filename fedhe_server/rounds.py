"""The round state machine of a job: close, publish, decrypt (threshold) or abort.

Rounds go OPEN -> PUBLISHED, OPEN -> DECRYPTING -> PUBLISHED (threshold keys) or
OPEN/DECRYPTING -> ABORTED at the deadline. Each transition is ONE SQLite
transaction (close the round, count it, open the next round or finish the job);
files it refers to are written before it, files it retires are deleted after it.
:meth:`RoundStateMachine.repair` puts right every state a crash between those
steps can leave. Time comes from an injected clock and crash points are named
through an injected fault hook, so the machine is testable without sleeping.
:class:`RoundStateMachine` is the base of :class:`fedhe_server.jobrun.JobRun`.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.models import JobConfig
from fedhe_common.mlbridge.accumulate import EncryptedAccumulator, PlainAccumulator
from fedhe_server.keymodes import AggregationMode
from fedhe_server.staging import JobFiles
from fedhe_server.store import JobState, RoundRow, RoundState, StateDB, UploadRow

logger = logging.getLogger(__name__)
CT = pb.STREAM_KIND_CIPHERTEXT
PT = pb.STREAM_KIND_PLAINTEXT
MAX_CONSECUTIVE_ABORTS = 3
Clock = Callable[[], float]
Faults = Callable[[str], None]
# Named crash points of the publish transition, in order (tests kill the server at each).
PUBLISH_POINTS = (
    "publish.before_aggregate",
    "publish.after_aggregate",
    "publish.after_transaction",
    "publish.after_cleanup",
)
ABORT_POINTS = ("abort.after_transaction",)
DECRYPT_POINTS = ("decrypt.after_transaction",)


@dataclass
class RoundAccumulators:
    """Sums of the open round (on disk, one chunk in memory; any client count)."""

    number: int
    encrypted: EncryptedAccumulator | None
    plain: PlainAccumulator | None
    weight_sum: int = 0


def _aggregate_chunks(acc: RoundAccumulators) -> Iterator[tuple[tuple[int, int], bytes]]:
    """Serialized sums chunk by chunk; plaintext sums travel as float32 like uploads."""
    if acc.encrypted is not None:
        for k in range(acc.encrypted.plan.count):
            yield (CT, k), acc.encrypted.chunk_blob(k)
    if acc.plain is not None:
        for k in range(acc.plain.plan.count):
            yield (PT, k), acc.plain.chunk_values(k).astype("<f4").tobytes()


def no_faults(point: str) -> None:
    """The production fault hook: does nothing."""


class RoundStateMachine:
    """Round transitions; the base of JobRun."""

    db: StateDB
    files: JobFiles
    config: JobConfig
    mode: AggregationMode
    job_id: str
    lock: threading.RLock
    changed: threading.Condition
    clock: Clock
    faults: Faults
    _acc: RoundAccumulators | None
    # JobRun provides _accumulators(number), _layout(), selective and rebuild().

    # ------------------------------------------------------------------ rounds
    def tick(self) -> None:
        """Close, publish or abort the open round when its rule says so."""
        with self.lock:
            t = self.clock()
            decrypting = self.decrypting_round()
            if decrypting is not None and t >= decrypting.deadline:
                self._abort(decrypting.round, decrypting.contributors or 0, "decryption shares")
                decrypting = None
            row = self.db.open_round(self.job_id)
            if row is None:
                return
            p = self.config.participants
            uploads = self.db.committed_uploads(self.job_id, row.round)
            committed = len(uploads)
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

    def _aggregate_files(
        self, number: int
    ) -> tuple[Iterator[tuple[tuple[int, int], bytes]], dict]:
        """The round's aggregate chunks (a generator: one chunk in memory at a time) and
        header, from the accumulators."""
        acc = self._accumulators(number)  # type: ignore[attr-defined]
        uploads = self.db.committed_uploads(self.job_id, number)
        layout = self._layout()  # type: ignore[attr-defined]
        assert layout is not None
        header = {
            "round": number,
            "weight_sum": acc.weight_sum,
            "contributors": len(uploads),
            "clients": [u.client_id for u in uploads],
            "layout_id": layout[0],
            "num_values": layout[1],
            "ciphertext_chunks": acc.encrypted.plan.count if acc.encrypted is not None else 0,
            "plaintext_chunks": acc.plain.plan.count if acc.plain is not None else 0,
        }
        return _aggregate_chunks(acc), header

    def _publish(self, number: int) -> None:
        """OPEN -> PUBLISHED (+ next round) or OPEN -> DECRYPTING, in one transaction."""
        self.faults("publish.before_aggregate")
        chunks, header = self._aggregate_files(number)
        self.files.write_aggregate(number, chunks, header)
        self.faults("publish.after_aggregate")
        t = self.clock()
        contributors = int(header["contributors"])
        upload_bytes = self.db.committed_bytes(self.job_id, number)
        with self.db.transaction() as tx:
            self.db.close_round(
                tx,
                self.job_id,
                number,
                self.mode.closed_state,
                t,
                int(header["weight_sum"]),
                contributors,
                upload_bytes,
                t + self.config.participants.round_timeout_s,
            )
            finished = False
            if self.mode.closed_state == RoundState.PUBLISHED:
                finished = self._count_and_advance(tx, number, t)
        self.faults("publish.after_transaction")
        self._acc = None
        # A decrypting round keeps its uploads: parties verify the aggregate against them.
        self._cleanup_after(number, keep_uploads=self.mode.closed_state == RoundState.DECRYPTING)
        self.faults("publish.after_cleanup")
        if self.mode.closed_state == RoundState.DECRYPTING:
            logger.info(
                "job %s round %d closed with %d clients; waiting for %d decryption shares",
                self.job_id,
                number,
                contributors,
                self.config.keys.threshold,
            )
            return
        self._log_published(number, contributors, int(header["weight_sum"]), finished)

    def _count_and_advance(self, tx: sqlite3.Connection, number: int, t: float) -> bool:
        """Inside a transaction: count published rounds, open the next or finish the job."""
        published = self.db.count_published(tx, self.job_id)
        finished = published >= self.config.job.rounds
        self.db.set_job_progress(
            tx, self.job_id, published, JobState.FINISHED if finished else JobState.RUNNING
        )
        if not finished:
            self._insert_round(tx, number + 1, t)
        return finished

    def _cleanup_after(self, number: int, keep_uploads: bool = False) -> None:
        """Delete what a closed round no longer needs (after its transaction)."""
        if not keep_uploads:
            self.files.drop_uploads(number)
        if number - 2 >= 1:  # round 0 (the mask's sensitivity sum) stays for late joiners
            self.files.drop_round(number - 2)

    def _log_published(self, number: int, contributors: int, weight: int, done: bool) -> None:
        logger.info(
            "job %s round %d published: %d clients, weight sum %d%s",
            self.job_id,
            number,
            contributors,
            weight,
            " (job finished)" if done else "",
        )

    def decrypting_round(self) -> RoundRow | None:
        """The round whose aggregate waits for threshold decryption shares, if any."""
        return self.db.round_in_state(self.job_id, RoundState.DECRYPTING)

    def mark_published(self, number: int) -> None:
        """DECRYPTING -> PUBLISHED (threshold): count it and open the next round, atomically."""
        t = self.clock()
        with self.db.transaction() as tx:
            self.db.set_round_state(tx, self.job_id, number, RoundState.PUBLISHED)
            finished = self._count_and_advance(tx, number, t)
        self.faults("decrypt.after_transaction")
        row = self.db.round(self.job_id, number)
        assert row is not None
        self._cleanup_after(number)
        self._log_published(number, row.contributors or 0, row.weight_sum or 0, finished)

    def _consecutive_aborts(self, before: int) -> int:
        aborts = 0
        for r in reversed(self.db.rounds(self.job_id)):
            if r.round >= before:
                continue
            if r.state != RoundState.ABORTED:
                break
            aborts += 1
        return aborts

    def _abort(self, number: int, committed: int, missing: str = "commits") -> None:
        failed = self._consecutive_aborts(number) + 1 >= MAX_CONSECUTIVE_ABORTS
        t = self.clock()
        with self.db.transaction() as tx:
            self.db.close_round(tx, self.job_id, number, RoundState.ABORTED, t, None, committed)
            if failed:
                self.db.set_job_state(tx, self.job_id, JobState.FAILED)
            else:
                self._insert_round(tx, number + 1, t)
        self.faults("abort.after_transaction")
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

    def _insert_round(self, tx: sqlite3.Connection, number: int, t: float) -> None:
        self.db.insert_round(
            tx, self.job_id, number, t, t + self.config.participants.round_timeout_s
        )

    # ----------------------------------------------------------------- start-up
    def start(self) -> None:
        """Open the first round of a new job, or repair and resume after a restart."""
        with self.lock:
            if not self.db.rounds(self.job_id):
                with self.db.transaction() as tx:
                    self._insert_round(tx, 0 if self.selective else 1, self.clock())  # type: ignore[attr-defined]
                return
            self.repair()
            row = self.db.open_round(self.job_id)
            if row is not None:
                grace = min(self.config.participants.round_timeout_s, 30.0)
                with self.db.transaction() as tx:
                    self.db.extend_deadline(tx, self.job_id, row.round, self.clock() + grace)
            self.rebuild()  # type: ignore[attr-defined]

    def repair(self) -> list[str]:
        """Put right what a crash between the steps of a transition can leave; say what."""
        fixed: list[str] = []
        job = self.db.job(self.job_id)
        assert job is not None
        if job.state not in (JobState.RUNNING,):
            return fixed
        rounds = self.db.rounds(self.job_id)
        closed = (RoundState.PUBLISHED, RoundState.DECRYPTING)
        for r in rounds:
            if r.state in closed and self.files.read_aggregate_header(r.round) is None:
                fixed.append(self._repair_missing_aggregate(r))
        live = {RoundState.OPEN, RoundState.DECRYPTING}
        rounds = self.db.rounds(self.job_id)
        if rounds and not any(r.state in live for r in rounds):
            last = rounds[-1]
            t = self.clock()
            with self.db.transaction() as tx:
                if last.state == RoundState.ABORTED and (
                    self._consecutive_aborts(last.round) + 1 >= MAX_CONSECUTIVE_ABORTS
                ):
                    self.db.set_job_state(tx, self.job_id, JobState.FAILED)
                    fixed.append(f"round {last.round} aborted a third time: job failed")
                elif last.state == RoundState.ABORTED:
                    self._insert_round(tx, last.round + 1, t)
                    fixed.append(f"opened round {last.round + 1} after aborted {last.round}")
                elif self._count_and_advance(tx, last.round, t):
                    fixed.append(f"job finished at round {last.round}")
                else:
                    fixed.append(f"opened round {last.round + 1} after published {last.round}")
        open_rounds = {r.round for r in self.db.rounds(self.job_id) if r.state in live}
        for number in self.files.staged_rounds():
            if number not in open_rounds:
                self.files.drop_uploads(number)
                fixed.append(f"dropped leftover staging of round {number}")
        for number in self.files.summed_rounds():
            if number not in open_rounds:
                self.files.drop_uploads(number)  # and the round's running sums
        self.files.drop_temporaries()
        for line in fixed:
            logger.warning("job %s repaired after a crash: %s", self.job_id, line)
        return fixed

    def _repair_missing_aggregate(self, r: RoundRow) -> str:
        """A closed round without aggregate files (state from before one-transaction
        publishing): rebuild them from the staged uploads, or abort the round."""
        uploads = self.db.committed_uploads(self.job_id, r.round)
        staged = all(
            self.files.chunk_path(r.round, u.upload_id, stream, k).exists()
            for u in uploads
            for stream, k in self.db.chunk_hashes(u.upload_id)
        )
        if uploads and staged and self._layout() is not None:  # type: ignore[attr-defined]
            self._acc = None
            acc = self._accumulators(r.round)  # type: ignore[attr-defined]
            for upload in uploads:
                self._add_upload(acc, upload)  # type: ignore[attr-defined]
            chunks, header = self._aggregate_files(r.round)
            self.files.write_aggregate(r.round, chunks, header)
            self._acc = None
            return f"rebuilt the missing aggregate of round {r.round}"
        with self.db.transaction() as tx:
            self.db.set_round_state(tx, self.job_id, r.round, RoundState.ABORTED)
        return f"round {r.round} had no aggregate and no uploads left: aborted"
