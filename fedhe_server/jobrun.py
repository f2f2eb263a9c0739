"""One running job: upload intake, streaming accumulation and the round state machine.

Rounds go OPEN -> PUBLISHED (enough commits by the close rule) or OPEN -> ABORTED
(deadline with fewer than ``min_clients``). Every transition is persisted in
SQLite before it takes effect; the in-memory accumulators are derived state,
rebuilt from committed uploads on disk after a restart.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import signal
import threading
from dataclasses import dataclass

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.models import JobConfig
from fedhe_common.crypto.aggregate import CiphertextAggregator
from fedhe_common.errors import (
    ConflictError,
    ContextMismatchError,
    FedHEError,
    IncompleteUploadError,
    InvalidArgumentError,
    ManifestMismatchError,
    NotFoundError,
    RoundClosedError,
    WrongRoundError,
)
from fedhe_common.mlbridge.accumulate import EncryptedAccumulator, PlainAccumulator, decode_float32
from fedhe_common.mlbridge.chunking import ChunkPlan
from fedhe_common.mlbridge.masks import EncryptionMask
from fedhe_common.mlbridge.streams import stream_plans
from fedhe_server.staging import JobFiles
from fedhe_server.state import RoundRow, StateDB, now

logger = logging.getLogger(__name__)
CT = pb.STREAM_KIND_CIPHERTEXT
PT = pb.STREAM_KIND_PLAINTEXT
MAX_CONSECUTIVE_ABORTS = 3


@dataclass
class RoundAccumulators:
    """In-memory sums of the open round (one model, whatever the client count)."""

    number: int
    encrypted: EncryptedAccumulator | None
    plain: PlainAccumulator | None
    weight_sum: int = 0


class JobRun:
    """All server logic of one job; the servicer only translates RPCs to these calls."""

    def __init__(
        self,
        db: StateDB,
        files: JobFiles,
        job_id: str,
        config: JobConfig,
        aggregator: CiphertextAggregator | None,
        fingerprint: bytes,
        values_per_chunk: int,
        changed: threading.Condition,
    ) -> None:
        self.db = db
        self.files = files
        self.job_id = job_id
        self.config = config
        self.aggregator = aggregator
        self.fingerprint = fingerprint
        self.values_per_chunk = values_per_chunk
        self.changed = changed
        self.lock = threading.RLock()
        self._acc: RoundAccumulators | None = None
        self._mask: EncryptionMask | None = None
        self._commits_in_process = 0

    # ------------------------------------------------------------------ layout
    def _layout(self) -> tuple[str, int] | None:
        job = self.db.job(self.job_id)
        assert job is not None
        if job["layout_id"] is None:
            return None
        return str(job["layout_id"]), int(job["num_values"])  # type: ignore[call-overload]

    @property
    def selective(self) -> bool:
        """True when the job agrees an encryption mask in round 0."""
        return self.config.encryption.mode == "ckks" and self.config.selective.enabled

    def encrypted_count(self, num_values: int, number: int) -> int:
        """How many values of an upload in round ``number`` travel encrypted."""
        if self.config.encryption.mode != "ckks":
            return 0
        if not self.selective or number == 0:
            return num_values
        mask = self.mask()
        if mask is None:
            raise IncompleteUploadError("the job's encryption mask is not agreed yet")
        return mask.count

    def plans(self, num_values: int, number: int) -> tuple[ChunkPlan, ChunkPlan]:
        """Chunk plans of the ciphertext and plaintext streams of round ``number``."""
        return stream_plans(
            num_values, self.values_per_chunk, self.encrypted_count(num_values, number)
        )

    def mask(self) -> EncryptionMask | None:
        """The recorded encryption mask (selective jobs, after round 0)."""
        if self._mask is None:
            job = self.db.job(self.job_id)
            assert job is not None
            if job["mask"] is not None:
                self._mask = EncryptionMask.from_bytes(bytes(job["mask"]))  # type: ignore[arg-type]
        return self._mask

    def mask_id(self) -> str:
        """The recorded mask id, or "" when none applies (yet)."""
        mask = self.mask()
        return mask.mask_id if mask is not None else ""

    def submit_mask(self, mask_id: str, mask_bytes: bytes) -> bool:
        """Record the mask clients agreed on; return True if this call recorded it."""
        with self.lock:
            if not self.selective:
                raise ManifestMismatchError("this job does not use selective encryption")
            round0 = self.db.round(self.job_id, 0)
            if round0 is None or round0.state != "PUBLISHED":
                raise IncompleteUploadError("the sensitivity round is not published yet")
            mask = EncryptionMask.from_bytes(mask_bytes)
            if mask.mask_id != mask_id:
                raise InvalidArgumentError("mask_id is not the sha256 of the mask")
            layout = self._layout()
            assert layout is not None
            minimum = math.ceil(self.config.selective.ratio * layout[1] - 1e-9)
            if mask.total != layout[1] or mask.count < minimum:
                raise InvalidArgumentError(
                    f"mask covers {mask.count} of {mask.total} values; the job needs "
                    f">= {minimum} of {layout[1]}"
                )
            current = self.mask()
            if current is not None:
                if current.mask_id != mask_id:
                    raise ConflictError("a different mask was already recorded for this job")
                return False
            with self.db.transaction() as tx:
                tx.execute(
                    "UPDATE jobs SET mask_id=?, mask=? WHERE job_id=?",
                    (mask_id, mask.to_bytes(), self.job_id),
                )
            self._mask = mask
            logger.info(
                "job %s: mask %s... recorded (%d of %d values encrypted)",
                self.job_id,
                mask_id[:12],
                mask.count,
                mask.total,
            )
            return True

    def _accumulators(self, number: int) -> RoundAccumulators:
        if self._acc is None or self._acc.number != number:
            layout = self._layout()
            assert layout is not None
            ct_plan, pt_plan = self.plans(layout[1], number)
            enc = (
                EncryptedAccumulator(self.aggregator, ct_plan)
                if self.aggregator is not None and ct_plan.count
                else None
            )
            self._acc = RoundAccumulators(
                number, enc, PlainAccumulator(pt_plan) if pt_plan.count else None
            )
        return self._acc

    # ------------------------------------------------------------------ uploads
    def open_round_number(self) -> int:
        """The open round, or raise if the job is not accepting uploads."""
        row = self.db.open_round(self.job_id)
        if row is None:
            raise RoundClosedError(f"job {self.job_id!r} has no open round")
        return row.round

    def begin_upload(self, m: pb.UploadManifest) -> pb.BeginUploadResponse:
        """Validate a manifest and return the upload id plus the chunks still missing."""
        with self.lock:
            number = self.open_round_number()
            if m.round != number:
                cls = RoundClosedError if m.round < number else WrongRoundError
                raise cls(f"round {m.round} is not open (open round: {number})")
            if m.client_id not in self.db.registered_clients(self.job_id):
                raise NotFoundError(f"client {m.client_id!r} is not registered for this job")
            if bytes(m.context_fingerprint) != self.fingerprint:
                raise ContextMismatchError("upload made under another CKKS context")
            expected_mask = self.mask_id() if number > 0 else ""
            if self.selective and number > 0 and not expected_mask:
                raise IncompleteUploadError("the job's encryption mask is not agreed yet")
            if m.mask_id != expected_mask:
                raise ManifestMismatchError(
                    f"upload mask_id {m.mask_id[:12] or '(none)'} differs from the job's "
                    f"{expected_mask[:12] or '(none)'}"
                )
            if m.sample_count < 1 or m.num_values < 1:
                raise InvalidArgumentError("sample_count and num_values must be positive")
            self._pin_layout(m.layout_id, int(m.num_values))
            ct_plan, pt_plan = self.plans(int(m.num_values), number)
            if m.ciphertext_chunks != ct_plan.count or m.plaintext_chunks != pt_plan.count:
                raise ManifestMismatchError(
                    f"manifest declares {m.ciphertext_chunks}+{m.plaintext_chunks} chunks; "
                    f"the layout needs {ct_plan.count}+{pt_plan.count}"
                )
            if self.aggregator is not None:
                acc = self._accumulators(number)
                self.aggregator.preset.check_weight_sum(acc.weight_sum + m.sample_count)
            manifest = m.SerializeToString(deterministic=True)
            upload_id = hashlib.sha256(manifest).hexdigest()[:32]
            committed = self.db.query(
                "SELECT upload_id FROM uploads WHERE job_id=? AND round=? AND client_id=? "
                "AND state='COMMITTED'",
                (self.job_id, number, m.client_id),
            )
            if committed and committed[0][0] != upload_id:
                raise ConflictError(f"client {m.client_id!r} already committed round {number}")
            if self.db.upload(upload_id) is None:
                with self.db.transaction() as tx:
                    tx.execute(
                        "UPDATE uploads SET state='SUPERSEDED' WHERE job_id=? AND round=? "
                        "AND client_id=? AND state='RECEIVING'",
                        (self.job_id, number, m.client_id),
                    )
                    tx.execute(
                        "INSERT INTO uploads VALUES (?,?,?,?,?,?,?,?,?)",
                        (
                            upload_id,
                            self.job_id,
                            number,
                            m.client_id,
                            manifest,
                            "RECEIVING",
                            int(m.sample_count),
                            None,
                            now(),
                        ),
                    )
            return self._status_response(upload_id)

    def _pin_layout(self, layout_id: str, num_values: int) -> None:
        layout = self._layout()
        if layout is None:
            with self.db.transaction() as tx:
                tx.execute(
                    "UPDATE jobs SET layout_id=?, num_values=? WHERE job_id=?",
                    (layout_id, num_values, self.job_id),
                )
            logger.info(
                "job %s: model layout %s..., %d values", self.job_id, layout_id[:12], num_values
            )
        elif layout != (layout_id, num_values):
            raise ManifestMismatchError("upload layout differs from the job's model layout")

    def _status_response(self, upload_id: str) -> pb.BeginUploadResponse:
        row = self.db.upload(upload_id)
        assert row is not None
        missing_ct, missing_pt = self._missing(row)
        return pb.BeginUploadResponse(
            upload_id=upload_id,
            missing_ciphertext=missing_ct,
            missing_plaintext=missing_pt,
            committed=row.state == "COMMITTED",
        )

    def _missing(self, row: object) -> tuple[list[int], list[int]]:
        m = pb.UploadManifest.FromString(row.manifest)  # type: ignore[attr-defined]
        have = self.db.chunk_hashes(row.upload_id)  # type: ignore[attr-defined]
        return (
            [k for k in range(m.ciphertext_chunks) if (CT, k) not in have],
            [k for k in range(m.plaintext_chunks) if (PT, k) not in have],
        )

    def upload_status(self, upload_id: str) -> pb.GetUploadStatusResponse:
        """State and missing chunks of an upload."""
        row = self.db.upload(upload_id)
        if row is None or row.job_id != self.job_id:
            raise NotFoundError("unknown upload")
        missing_ct, missing_pt = self._missing(row)
        return pb.GetUploadStatusResponse(
            upload_id=upload_id,
            state=row.state,
            missing_ciphertext=missing_ct,
            missing_plaintext=missing_pt,
        )

    def put_chunk(self, chunk: pb.Chunk, client_id: str) -> bool:
        """Validate and stage one chunk; return True if it was a duplicate."""
        row = self.db.upload(chunk.upload_id)
        if row is None or row.job_id != self.job_id:
            raise NotFoundError("unknown upload")
        if row.client_id != client_id:
            raise ConflictError("upload belongs to another client")
        if row.state != "RECEIVING":
            raise ConflictError(f"upload is {row.state.lower()}, not receiving")
        if row.round != self.open_round_number():
            raise RoundClosedError(f"round {row.round} is closed")
        m = pb.UploadManifest.FromString(row.manifest)
        ct_plan, pt_plan = self.plans(int(m.num_values), row.round)
        plan = {CT: ct_plan, PT: pt_plan}.get(chunk.stream)
        if plan is None:
            raise InvalidArgumentError("unknown chunk stream")
        if not 0 <= chunk.index < plan.count:
            raise ManifestMismatchError(
                f"chunk index {chunk.index} beyond the declared {plan.count} chunks of this stream"
            )
        if chunk.num_values != plan.length(chunk.index):
            raise ManifestMismatchError("chunk value count differs from the layout")
        digest = hashlib.sha256(chunk.payload).digest()
        if digest != bytes(chunk.sha256):
            raise InvalidArgumentError("chunk sha256 does not match its payload")
        have = self.db.query(
            "SELECT sha256 FROM chunks WHERE upload_id=? AND stream=? AND idx=?",
            (chunk.upload_id, chunk.stream, chunk.index),
        )
        if have:
            if bytes(have[0][0]) != digest:  # type: ignore[arg-type]
                raise ConflictError(f"chunk {chunk.index} was already received with another hash")
            return True
        if chunk.stream == CT:
            assert self.aggregator is not None
            self.aggregator.check_upload(chunk.payload)
        else:
            decode_float32(chunk.payload, chunk.num_values)
        path = self.files.chunk_path(row.round, chunk.upload_id, chunk.stream, chunk.index)
        self.files.write_chunk(path, chunk.payload)
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT OR IGNORE INTO chunks VALUES (?,?,?,?,?)",
                (chunk.upload_id, chunk.stream, chunk.index, digest, len(chunk.payload)),
            )
        return False

    def commit(self, upload_id: str, client_id: str) -> bytes:
        """Add a complete upload into the round's sums; idempotent (same receipt)."""
        with self.lock:
            row = self.db.upload(upload_id)
            if row is None or row.job_id != self.job_id:
                raise NotFoundError("unknown upload")
            if row.client_id != client_id:
                raise ConflictError("upload belongs to another client")
            if row.state == "COMMITTED":
                assert row.receipt is not None
                return row.receipt
            if row.state != "RECEIVING":
                raise ConflictError(f"upload is {row.state.lower()}")
            if row.round != self.open_round_number():
                raise RoundClosedError(f"round {row.round} is closed")
            missing_ct, missing_pt = self._missing(row)
            if missing_ct or missing_pt:
                raise IncompleteUploadError(
                    f"{len(missing_ct) + len(missing_pt)} chunks still missing"
                )
            acc = self._accumulators(row.round)
            try:
                self._add_upload(acc, row)
            except FedHEError:
                with self.db.transaction() as tx:
                    tx.execute(
                        "UPDATE uploads SET state='REJECTED' WHERE upload_id=?", (upload_id,)
                    )
                self.rebuild()
                raise
            receipt = self._receipt(row)
            committed_count = len(self.db.committed_uploads(self.job_id, row.round)) + 1
            with self.db.transaction() as tx:
                tx.execute(
                    "UPDATE uploads SET state='COMMITTED', receipt=? WHERE upload_id=?",
                    (receipt, upload_id),
                )
                if committed_count >= self.config.participants.min_clients:
                    tx.execute(
                        "UPDATE rounds SET min_reached=COALESCE(min_reached, ?) "
                        "WHERE job_id=? AND round=?",
                        (now(), self.job_id, row.round),
                    )
            logger.info(
                "job %s round %d: committed %s (n=%d), %d committed",
                self.job_id,
                row.round,
                client_id,
                row.sample_count,
                committed_count,
            )
            self._commits_in_process += 1
            _fault_after_commit(self._commits_in_process)
        with self.changed:
            self.changed.notify_all()
        return receipt

    def _add_upload(self, acc: RoundAccumulators, row: object) -> None:
        m = pb.UploadManifest.FromString(row.manifest)  # type: ignore[attr-defined]
        weight = int(m.sample_count)
        if acc.encrypted is not None:
            acc.encrypted.aggregator.preset.check_weight_sum(acc.weight_sum + weight)
        for stream, count in ((CT, m.ciphertext_chunks), (PT, m.plaintext_chunks)):
            for k in range(count):
                path = self.files.chunk_path(row.round, row.upload_id, stream, k)  # type: ignore[attr-defined]
                payload = path.read_bytes()
                if stream == CT:
                    assert acc.encrypted is not None
                    acc.encrypted.add(k, payload, weight)
                else:
                    assert acc.plain is not None
                    acc.plain.add(k, payload, weight)
        acc.weight_sum += weight
        if acc.encrypted is not None:
            acc.encrypted.weight_sum += weight

    def _receipt(self, row: object) -> bytes:
        h = hashlib.sha256(row.manifest)  # type: ignore[attr-defined]
        for key, digest in sorted(self.db.chunk_hashes(row.upload_id).items()):  # type: ignore[attr-defined]
            h.update(f"{key[0]}:{key[1]}:".encode() + digest)
        return h.digest()

    def rebuild(self) -> None:
        """Recompute the open round's sums from its committed uploads on disk."""
        with self.lock:
            self._acc = None
            row = self.db.open_round(self.job_id)
            if row is None or self._layout() is None:
                return
            acc = self._accumulators(row.round)
            uploads = self.db.committed_uploads(self.job_id, row.round)
            for upload in uploads:
                self._add_upload(acc, upload)
            if uploads:
                logger.info(
                    "job %s round %d: rebuilt sums from %d committed uploads",
                    self.job_id,
                    row.round,
                    len(uploads),
                )

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
            committed = len(self.db.committed_uploads(self.job_id, row.round))
            expected = p.expected_clients or len(self.db.registered_clients(self.job_id))
            t = now()
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


def _fault_after_commit(count: int) -> None:
    """Test hook: ``FEDHE_FAULT=server_kill_after_commits:N`` SIGKILLs this process."""
    fault = os.environ.get("FEDHE_FAULT", "")
    if fault.startswith("server_kill_after_commits:") and count >= int(fault.split(":")[1]):
        logger.warning("fault injection: killing the server after %d commits", count)
        os.kill(os.getpid(), signal.SIGKILL)
