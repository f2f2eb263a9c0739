"""One running job: upload intake, the encryption mask and streaming accumulation.

Uploads are validated chunk by chunk, staged on disk, and added into the open
round's sums on commit. The accumulators (record files next to the staged
uploads, one chunk in memory at a time) are derived state, rebuilt from committed
uploads on disk after a restart. Round transitions live in
:mod:`fedhe_server.rounds` (mixed in).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.models import JobConfig
from fedhe_common.crypto.provenance import manifest_digest, verify_upload
from fedhe_common.errors import (
    ConflictError,
    ContextMismatchError,
    FedHEError,
    IncompleteUploadError,
    InvalidArgumentError,
    ManifestMismatchError,
    NotFoundError,
    PermissionDeniedError,
    RoundClosedError,
    WrongRoundError,
)
from fedhe_common.mlbridge.accumulate import PlainAccumulator, decode_float32
from fedhe_common.mlbridge.chunking import ChunkPlan
from fedhe_common.mlbridge.compact_accumulate import CompactAccumulator
from fedhe_common.mlbridge.masks import EncryptionMask
from fedhe_common.mlbridge.streams import encrypted_count, stream_plans
from fedhe_common.rpc.states import upload_state
from fedhe_common.storage.atomic import atomic_write
from fedhe_server.idempotency import is_repeat, verified_digest
from fedhe_server.keymodes import AggregationMode, Compact, Fast, SingleKey, Threshold
from fedhe_server.limits import check_num_values, check_sample_count
from fedhe_server.metrics import ServerMetrics
from fedhe_server.parallel_aggregate import ParallelAdder
from fedhe_server.rounds import Clock, Faults, RoundAccumulators, RoundStateMachine, no_faults
from fedhe_server.staging import JobFiles
from fedhe_server.store import RoundState, StateDB, UploadRow, UploadState, now

logger = logging.getLogger(__name__)
CT = pb.STREAM_KIND_CIPHERTEXT
PT = pb.STREAM_KIND_PLAINTEXT


class JobRun(RoundStateMachine):
    """All server logic of one job; the servicer only translates RPCs to these calls."""

    def __init__(
        self,
        db: StateDB,
        files: JobFiles,
        job_id: str,
        config: JobConfig,
        mode: AggregationMode,
        changed: threading.Condition,
        metrics: ServerMetrics,
        clock: Clock = now,
        faults: Faults = no_faults,
    ) -> None:
        self.clock = clock
        self.faults = faults
        self.db = db
        self.files = files
        self.job_id = job_id
        self.config = config
        self.mode = mode
        self.changed = changed
        self.metrics = metrics
        self.lock = threading.RLock()
        self._acc: RoundAccumulators | None = None
        self._mask: EncryptionMask | None = None
        self._adder: ParallelAdder | None = None
        if self._in_process_only():
            logger.warning(
                "job %s: aggregation.workers %d ignored: single-key-compact sums are made "
                "in the server process (each chunk publishes every contributor's shift)",
                job_id,
                config.aggregation.workers,
            )

    @property
    def fingerprint(self) -> bytes:
        """The job's CKKS context fingerprint (empty for plaintext jobs)."""
        return self.mode.fingerprint

    @property
    def values_per_chunk(self) -> int:
        """Values per chunk of either stream."""
        return self.mode.values_per_chunk

    # ------------------------------------------------------------------ layout
    def _layout(self) -> tuple[str, int] | None:
        job = self.db.job(self.job_id)
        assert job is not None
        if job.layout_id is None or job.num_values is None:
            return None
        return job.layout_id, job.num_values

    @property
    def selective(self) -> bool:
        """True when the job agrees an encryption mask in round 0."""
        return self.config.encryption.mode == "ckks" and self.config.selective.enabled

    def encrypted_count(self, num_values: int, number: int) -> int:
        """How many values of an upload in round ``number`` travel encrypted."""
        mask_count = None
        if self.selective and number > 0:  # round 0 (the sensitivity sum) is all encrypted
            mask = self.mask()
            if mask is None:
                raise IncompleteUploadError("the job's encryption mask is not agreed yet")
            mask_count = mask.count
        return encrypted_count(num_values, self.mode.encrypts, mask_count)

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
            if job.mask is not None:
                self._mask = EncryptionMask.from_bytes(bytes(job.mask))  # type: ignore[arg-type]
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
            if round0 is None or round0.state != RoundState.PUBLISHED:
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
            self.db.record_mask(self.job_id, mask_id, mask.to_bytes())
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
            # On disk: memory stays O(one chunk) whatever the model size (issue 12).
            self._acc = RoundAccumulators(
                number,
                self.mode.accumulator(ct_plan, self.files.accumulator_path(number, CT)),
                PlainAccumulator(pt_plan, self.files.accumulator_path(number, PT))
                if pt_plan.count
                else None,
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
                raise PermissionDeniedError(
                    f"client {m.client_id!r} is not registered for this job"
                )
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
            self._check_manifest(m, number)
            manifest = m.SerializeToString(deterministic=True)
            upload_id = hashlib.sha256(manifest).hexdigest()[:32]
            committed = self.db.committed_upload_of(self.job_id, number, m.client_id)
            if committed is not None and committed != upload_id:
                raise ConflictError(f"client {m.client_id!r} already committed round {number}")
            if self.db.upload(upload_id) is None:
                # Everything is checked: this is the manifest's first and only write.
                self.db.add_upload(
                    upload_id,
                    self.job_id,
                    number,
                    m.client_id,
                    manifest,
                    int(m.sample_count),
                    self.clock(),
                )
            return self._status_response(upload_id)

    def _check_manifest(self, m: pb.UploadManifest, number: int) -> None:
        """Every check of a manifest, before anything is written."""
        if m.sample_count < 1 or m.num_values < 1:
            raise InvalidArgumentError("sample_count and num_values must be positive")
        if not m.layout_id or len(m.layout_id) > 128:
            raise InvalidArgumentError("layout_id must be 1-128 characters")
        check_sample_count(self.config, int(m.sample_count))
        layout = self._layout()
        if layout is None:
            check_num_values(self.config, int(m.num_values))
        elif layout != (m.layout_id, int(m.num_values)):
            raise ManifestMismatchError(
                f"upload layout ({m.layout_id[:12]}..., {m.num_values} values) differs from "
                f"the job's model layout ({layout[0][:12]}..., {layout[1]} values)"
            )
        ct_plan, pt_plan = self.plans(int(m.num_values), number)
        if m.ciphertext_chunks != ct_plan.count or m.plaintext_chunks != pt_plan.count:
            raise ManifestMismatchError(
                f"manifest declares {m.ciphertext_chunks}+{m.plaintext_chunks} chunks; "
                f"the layout needs {ct_plan.count}+{pt_plan.count}"
            )
        if self.mode.encrypts:
            committed = self.db.committed_weight(self.job_id, number)
            try:
                self.mode.check_weight_sum(committed + m.sample_count)
            except FedHEError as exc:
                raise type(exc)(
                    f"round {number}: clients already committed weight {committed}; adding "
                    f"sample_count {m.sample_count}: {exc}"
                ) from None

    def _pin_layout(self, layout_id: str, num_values: int) -> None:
        """Pin the job's model layout at its first commit (never at a mere manifest)."""
        layout = self._layout()
        if layout is None:
            with self.db.transaction() as tx:
                self.db.pin_layout(tx, self.job_id, layout_id, num_values)
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
            missing_ciphertext_ranges=_ranges(missing_ct),
            missing_plaintext_ranges=_ranges(missing_pt),
            committed=row.state == UploadState.COMMITTED,
        )

    def _missing(self, row: object) -> tuple[list[int], list[int]]:
        m = pb.UploadManifest.FromString(row.manifest)  # type: ignore[attr-defined]
        have = self.db.chunk_hashes(row.upload_id)  # type: ignore[attr-defined]
        return (
            [k for k in range(m.ciphertext_chunks) if (CT, k) not in have],
            [k for k in range(m.plaintext_chunks) if (PT, k) not in have],
        )

    def upload_status(self, upload_id: str, client_id: str) -> pb.GetUploadStatusResponse:
        """State and missing chunks of one of ``client_id``'s uploads."""
        row = self.db.upload(upload_id)
        if row is None or row.job_id != self.job_id or row.client_id != client_id:
            raise NotFoundError("unknown upload")  # another client's upload: not revealed
        missing_ct, missing_pt = self._missing(row)
        return pb.GetUploadStatusResponse(
            upload_id=upload_id,
            state=upload_state(row.state),
            missing_ciphertext=missing_ct,
            missing_plaintext=missing_pt,
            missing_ciphertext_ranges=_ranges(missing_ct),
            missing_plaintext_ranges=_ranges(missing_pt),
        )

    def put_chunk(self, chunk: pb.Chunk, client_id: str) -> bool:
        """Validate and stage one chunk; return True if it was a duplicate."""
        row = self.db.upload(chunk.upload_id)
        if row is None or row.job_id != self.job_id:
            raise NotFoundError("unknown upload")
        if row.client_id != client_id:
            raise ConflictError("upload belongs to another client")
        if row.state != UploadState.RECEIVING:
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
        digest = verified_digest(chunk.payload, chunk.sha256, "chunk")
        have = self.db.chunk_hash(chunk.upload_id, chunk.stream, chunk.index)
        if is_repeat(have, digest, f"chunk {chunk.index}"):
            return True
        if chunk.stream == CT:
            self.mode.check_ciphertext(chunk.payload)
        else:
            decode_float32(chunk.payload, chunk.num_values)
        path = self.files.chunk_path(row.round, chunk.upload_id, chunk.stream, chunk.index)
        self.files.write_chunk(path, chunk.payload)
        self.db.add_chunk(chunk.upload_id, chunk.stream, chunk.index, digest, len(chunk.payload))
        return False

    def commit(
        self, upload_id: str, client_id: str, statement: bytes = b"", signature: bytes = b""
    ) -> bytes:
        """Add a complete upload into the round's sums; idempotent (same receipt).

        Threshold jobs: the client's signed statement must match the upload."""
        with self.lock:
            row = self.db.upload(upload_id)
            if row is None or row.job_id != self.job_id:
                raise NotFoundError("unknown upload")
            if row.client_id != client_id:
                raise ConflictError("upload belongs to another client")
            if row.state == UploadState.COMMITTED:
                assert row.receipt is not None
                return row.receipt
            if row.state != UploadState.RECEIVING:
                raise ConflictError(f"upload is {row.state.lower()}")
            if row.round != self.open_round_number():
                raise RoundClosedError(f"round {row.round} is closed")
            missing_ct, missing_pt = self._missing(row)
            if missing_ct or missing_pt:
                raise IncompleteUploadError(
                    f"{len(missing_ct) + len(missing_pt)} chunks still missing"
                )
            m = pb.UploadManifest.FromString(row.manifest)
            if isinstance(self.mode, Threshold):
                self._check_signed(row, m, statement, signature)
            self._pin_layout(m.layout_id, int(m.num_values))
            acc = self._accumulators(row.round)
            t_agg = time.perf_counter()
            try:
                with self.metrics.aggregate_seconds.time():
                    self._add_upload(acc, row)
            except FedHEError:
                with self.db.transaction() as tx:
                    self.db.set_upload_state(tx, upload_id, UploadState.REJECTED)
                self.rebuild()
                raise
            aggregate_s = time.perf_counter() - t_agg
            receipt = self._receipt(row)
            committed_count = len(self.db.committed_uploads(self.job_id, row.round)) + 1
            with self.db.transaction() as tx:
                self.db.commit_upload(tx, upload_id, receipt)
                # the server's step of this client's round, shown by `fedhe job history`
                self.db.put_metric(
                    tx, self.job_id, row.round, client_id, "aggregate_s", aggregate_s
                )
                if committed_count >= self.config.participants.min_clients:
                    self.db.mark_min_reached(tx, self.job_id, row.round, self.clock())
            logger.info(
                "job %s round %d: committed %s (n=%d), %d committed",
                self.job_id,
                row.round,
                client_id,
                row.sample_count,
                committed_count,
            )
            self.faults("commit.after_transaction")
        with self.changed:
            self.changed.notify_all()
        return receipt

    def _add_upload(self, acc: RoundAccumulators, row: object) -> None:
        m = pb.UploadManifest.FromString(row.manifest)  # type: ignore[attr-defined]
        weight = int(m.sample_count)
        self.mode.check_weight_sum(acc.weight_sum + weight)
        adder = self.adder()
        if adder is not None:  # chunk ranges in worker processes (issue 15)
            adder.add_upload(
                acc, self.files, row.round, row.upload_id,  # type: ignore[attr-defined]
                m.ciphertext_chunks, m.plaintext_chunks, weight,
            )  # fmt: skip
        else:
            self._add_chunks(acc, row, m, weight)
        acc.weight_sum += weight
        if acc.encrypted is not None:
            acc.encrypted.weight_sum += weight

    def _add_chunks(
        self, acc: RoundAccumulators, row: object, m: pb.UploadManifest, weight: int
    ) -> None:
        """Add every staged chunk of one upload in this process."""
        coefficient = acc.encrypted if isinstance(acc.encrypted, CompactAccumulator) else None
        if coefficient is not None and m.ciphertext_chunks:  # one seed id in every chunk
            first = self.files.chunk_path(row.round, row.upload_id, CT, 0)  # type: ignore[attr-defined]
            coefficient.expect(*coefficient.claim_upload(first.read_bytes(), weight))
        try:
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
        finally:
            if coefficient is not None:
                coefficient.expect(None)

    def adder(self) -> ParallelAdder | None:
        """The job's chunk-range workers (``aggregation.workers`` > 1), made on first use
        (SEAL single-key and threshold, single-key-fast, plaintext streams)."""
        if self.config.aggregation.workers <= 1 or self._in_process_only():
            return None
        if self._adder is None:
            params = self.mode.ctx.params.to_json() if isinstance(self.mode, SingleKey) else None
            agg = self.config.aggregation
            self._adder = ParallelAdder(agg.workers, agg.backend, params)
        return self._adder

    def _in_process_only(self) -> bool:
        """single-key-compact keeps per-contributor shifts per chunk in this process."""
        return self.config.aggregation.workers > 1 and (
            isinstance(self.mode, Compact) and not isinstance(self.mode, Fast)
        )

    def close(self) -> None:
        """Stop the job's aggregation workers, if any."""
        if self._adder is not None:
            self._adder.close()
            self._adder = None

    def _check_signed(
        self, row: UploadRow, m: pb.UploadManifest, statement: bytes, signature: bytes
    ) -> None:
        """The statement names this upload and verifies under its client's identity key;
        it is kept next to the chunks for the decrypting parties (issue 10, finding 3)."""
        key = self.files.identity_keys().get(row.client_id)
        if key is None:
            raise PermissionDeniedError(f"client {row.client_id!r} has no identity key")
        st = verify_upload(key, statement, signature)
        hashes = self.db.chunk_hashes(row.upload_id)
        want = (
            self.job_id,
            row.round,
            row.client_id,
            int(m.sample_count),
            bytes(m.context_fingerprint),
            tuple(hashes[(CT, k)] for k in range(m.ciphertext_chunks)),
            manifest_digest(m),
        )
        got = (
            st.job_id,
            st.round,
            st.client_id,
            st.sample_count,
            st.fingerprint,
            st.ciphertext_sha256,
            st.manifest_sha256,
        )
        if got != want:
            raise ManifestMismatchError("the signed upload statement does not match the upload")
        statement_path, signature_path = self.files.signature_paths(row.round, row.upload_id)
        atomic_write(statement_path, statement)
        atomic_write(signature_path, signature)

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
            uploads = self.db.committed_uploads(self.job_id, row.round)
            if not uploads:
                return
            acc = self._accumulators(row.round)  # a fresh (truncated) file: any half-write goes
            for upload in uploads:
                self._add_upload(acc, upload)
            if uploads:
                logger.info(
                    "job %s round %d: rebuilt sums from %d committed uploads",
                    self.job_id,
                    row.round,
                    len(uploads),
                )


def _ranges(indices: list[int]) -> list[pb.IndexRange]:
    """Sorted indices as [start, stop) ranges."""
    ranges: list[pb.IndexRange] = []
    for k in indices:
        if ranges and ranges[-1].stop == k:
            ranges[-1].stop = k + 1
        else:
            ranges.append(pb.IndexRange(start=k, stop=k + 1))
    return ranges
