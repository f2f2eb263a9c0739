"""One transfer job on the server: data-set intake, the trainer's worker, owner replies.

The worker thread fetches the owner's evaluation keys, then drives the trainer:
``pending()`` (CPU seconds, never on the event loop) publishes one request; the
owner's reply is applied by :meth:`TransferRun.answer` (on the RPC thread pool), and
the trainer's ``to_state()`` is written atomically before the progress row is updated.
A restart loads the last state file, repairs the progress row from it and asks the
pending request again (same ``seq``; the owner answers idempotently).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.models import JobConfig
from fedhe_common.errors import (
    ConflictError,
    FedHEError,
    IncompleteUploadError,
    InvalidArgumentError,
    PermissionDeniedError,
    UnavailableError,
    WrongRoundError,
)
from fedhe_common.hetal.protocol import (
    EncryptedDataset,
    OwnerReply,
    OwnerRequest,
    ProtocolError,
    RequestKind,
)
from fedhe_server.rounds import Clock, Faults, no_faults
from fedhe_server.store import JobState, now
from fedhe_server.store.transfer import Progress, TransferPhase, TransferRow, TransferStore
from fedhe_server.transfer.files import TransferFiles
from fedhe_server.transfer.manifest import DatasetManifest

logger = logging.getLogger(__name__)
KEYS_POLL_S = 1.0


class Trainer(Protocol):
    """What the run needs of ``fedhe_common.hetal.trainer.TransferTrainer``."""

    done: bool
    epochs_run: int
    best_epoch: int | None

    def pending(self) -> OwnerRequest | None: ...

    def apply(self, reply: OwnerReply) -> None: ...

    def to_state(self) -> bytes: ...


TrainerFactory = Callable[[str, bytes, EncryptedDataset, bytes | None], Trainer]
KeySource = Callable[[], bytes | None]


def hetal_trainer(
    params_json: str, eval_keys: bytes, data: EncryptedDataset, state: bytes | None
) -> Trainer:
    """The real trainer (imported on first use: the server loads it only for transfer jobs)."""
    from fedhe_common.hetal.params import TransferParams
    from fedhe_common.hetal.trainer import TransferTrainer

    trainer: Trainer = TransferTrainer(TransferParams.from_json(params_json), eval_keys, data,
                                       state)  # fmt: skip
    return trainer


def expected_params(config: JobConfig, features: int, classes: int) -> str:
    """The TransferParams JSON the job's config gives for the owner's shapes."""
    from fedhe_common.hetal.params import TransferParams

    try:
        return TransferParams.from_config(config.transfer, features, classes).to_json()
    except ValueError as exc:
        raise InvalidArgumentError(f"transfer parameters: {exc}") from None


class TransferRun:
    """All server logic of one transfer job; the servicer translates RPCs to these calls."""

    def __init__(
        self,
        store: TransferStore,
        files: TransferFiles,
        job_id: str,
        config: JobConfig,
        changed: threading.Condition,
        fetch_keys: KeySource,
        trainer_factory: TrainerFactory = hetal_trainer,
        clock: Clock = now,
        faults: Faults = no_faults,
    ) -> None:
        assert config.transfer is not None
        self.store = store
        self.files = files
        self.job_id = job_id
        self.config = config
        self.changed = changed
        self.fetch_keys = fetch_keys
        self.trainer_factory = trainer_factory
        self.clock = clock
        self.faults = faults
        self.lock = threading.RLock()
        self._trainer: Trainer | None = None
        self._request: OwnerRequest | None = None
        self._final: OwnerRequest | None = None
        self._answered = 0
        self._manifest: DatasetManifest | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ life
    def start(self) -> None:
        """Repair leftovers and start the worker thread."""
        stray = self.files.repair()
        if stray:
            logger.info("job %s: removed %d temp files left by a crash", self.job_id, stray)
        self._thread = threading.Thread(
            target=self._work, name=f"transfer-{self.job_id}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the worker (a pending() in progress finishes first)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def row(self) -> TransferRow:
        """The job's transfer row."""
        return self.store.require(self.job_id)

    def _notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    # ------------------------------------------------------------- worker
    def _work(self) -> None:
        try:
            self._work_loop()
        finally:  # stop the trainer's kernel workers (transfer.workers > 1), if any
            close = getattr(self._trainer, "close", None)
            if callable(close):
                close()

    def _work_loop(self) -> None:
        while not self._stop.is_set():
            try:
                phase = self.row.phase
                if phase == TransferPhase.KEYS:
                    self._poll_keys()
                elif phase == TransferPhase.UPLOAD:
                    self._wake.wait(KEYS_POLL_S)
                    self._wake.clear()
                elif phase == TransferPhase.TRAINING:
                    self._train()
                else:
                    return
            except Exception as exc:  # the job fails; the server goes on
                if self._stop.is_set():
                    return
                logger.exception("job %s: transfer training failed", self.job_id)
                text = (
                    exc.message if isinstance(exc, FedHEError) else f"{type(exc).__name__}: {exc}"
                )
                self.store.fail(self.job_id, text, self.clock(), JobState.FAILED.value)
                self._notify()
                return

    def _poll_keys(self) -> None:
        if self.files.eval_keys() is None:
            try:
                blob = self.fetch_keys()
            except FedHEError as exc:
                logger.debug("job %s: evaluation keys not available (%s)", self.job_id, exc)
                blob = None
            if blob is None:
                self._stop.wait(KEYS_POLL_S)
                return
            self.files.write_eval_keys(blob)
            logger.info("job %s: evaluation keys in (%d bytes)", self.job_id, len(blob))
        self.store.keys_in(self.job_id, self.clock())
        self._notify()

    def _train(self) -> None:
        if self._trainer is None:
            self._trainer = self._load_trainer(self.row)
        if self._request is not None:
            self._wake.wait(KEYS_POLL_S)
            self._wake.clear()
            return
        self.faults("before_pending")
        request = self._trainer.pending()  # CPU seconds, on this worker thread
        if request is None or request.kind == RequestKind.FINISHED:
            with self.lock:
                self._final = request
                self.store.finish(self.job_id, self.clock(), JobState.FINISHED.value)
            logger.info(
                "job %s: transfer training finished after %d epochs (best %s)",
                self.job_id, self._trainer.epochs_run, self._trainer.best_epoch,
            )  # fmt: skip
        else:
            with self.lock:
                self._request = request
        self._notify()

    def _load_trainer(self, row: TransferRow) -> Trainer:
        keys = self.files.eval_keys()
        if keys is None or row.manifest is None or row.params_json is None:
            raise IncompleteUploadError("training needs keys, the data set and parameters")
        manifest = DatasetManifest.from_json(row.manifest)
        data = manifest.dataset(self.files.read_item)
        saved = self.files.read_state()
        answered, state = saved if saved is not None else (0, None)
        trainer = self.trainer_factory(row.params_json, keys, data, state)
        self._answered = answered
        if row.answered != answered:  # crashed between the state file and the row: repair
            logger.warning(
                "job %s: progress row said %d replies, state file %d; repaired",
                self.job_id, row.answered, answered,
            )  # fmt: skip
            self.store.progress(self.job_id, self._progress(trainer, None), self.clock())
        elif saved is not None:
            logger.info("job %s: resumed after %d replies", self.job_id, answered)
        return trainer

    def _progress(self, trainer: Trainer, request: OwnerRequest | None) -> Progress:
        row = self.row
        best = trainer.best_epoch
        return Progress(
            answered=self._answered,
            epoch=request.epoch if request else row.epoch,
            step=request.step if request else row.step,
            epochs_run=trainer.epochs_run,
            best_epoch=-1 if best is None else int(best),
        )

    # ------------------------------------------------------------ requests
    def _check_owner(self, client_id: str) -> TransferRow:
        row = self.row
        if row.owner is not None and row.owner != client_id:
            raise PermissionDeniedError(f"client {client_id!r} is not this job's data owner")
        return row

    def request_for(self, client_id: str) -> tuple[TransferRow, OwnerRequest | None]:
        """The job's row and its pending request (the final one once finished), if any."""
        row = self._check_owner(client_id)
        if row.phase == TransferPhase.FINISHED:
            return row, self._final
        return row, self._request if row.phase == TransferPhase.TRAINING else None

    def answer(self, client_id: str, reply: OwnerReply) -> bool:
        """Apply the owner's reply to the pending request; False for a repeat of an old one."""
        row = self._check_owner(client_id)
        if row.owner is None:
            raise PermissionDeniedError("no data set was uploaded yet")
        with self.lock:
            request, trainer = self._request, self._trainer
            if reply.seq < self._answered:
                return False
            if request is None or trainer is None or reply.seq != request.seq:
                raise WrongRoundError(f"no pending request {reply.seq}")
            try:
                trainer.apply(reply)
            except ProtocolError as exc:
                raise InvalidArgumentError(f"reply {reply.seq}: {exc}") from None
            self._answered = reply.seq + 1
            self.faults("before_state")
            self.files.write_state(self._answered, trainer.to_state())
            self.faults("after_state")
            self.store.progress(self.job_id, self._progress(trainer, request), self.clock())
            self._request = None
        self._wake.set()
        return True

    # ------------------------------------------------------------ data set
    def begin_upload(
        self, client_id: str, req: pb.BeginTransferUploadRequest
    ) -> pb.BeginTransferUploadResponse:
        """Record the manifest (idempotent) and say which ciphertexts are still missing."""
        from fedhe_server.transfer.files import PIECE_BYTES

        assert self.config.transfer is not None
        row = self._check_owner(client_id)
        if row.phase in (TransferPhase.FAILED,):
            raise ConflictError(f"job {self.job_id!r} failed: {row.error}")
        manifest = DatasetManifest.from_pb(req, self.config.transfer.max_dataset_bytes)
        params_json = expected_params(self.config, manifest.features, manifest.classes)
        if req.params_json != params_json:
            raise InvalidArgumentError(
                "the owner's transfer parameters differ from the job's: "
                f"owner {req.params_json[:300]!r}, job {params_json[:300]!r}"
            )
        self.store.begin_upload(
            self.job_id, client_id, manifest.to_json(), params_json, self.clock()
        )
        self._manifest = manifest
        missing = [k for k in range(len(manifest.items)) if not self.files.has_item(k)]
        return pb.BeginTransferUploadResponse(
            upload_id=self.job_id,
            missing_items=missing,
            committed=row.receipt is not None,
            piece_bytes=PIECE_BYTES,
        )

    def _manifest_of(self, client_id: str) -> DatasetManifest:
        row = self._check_owner(client_id)
        if row.owner is None or row.manifest is None:
            raise IncompleteUploadError("begin the upload first")
        if self._manifest is None:
            self._manifest = DatasetManifest.from_json(row.manifest)
        return self._manifest

    def put_piece(self, client_id: str, piece: pb.TransferPiece) -> bool:
        """Keep one piece of a data-set ciphertext; True for a duplicate."""
        manifest = self._manifest_of(client_id)
        if not 0 <= piece.item < len(manifest.items):
            raise InvalidArgumentError(f"item {piece.item} out of range")
        info = manifest.items[piece.item][1]
        return self.files.put_piece(piece.item, info, piece.piece, bytes(piece.data))

    def commit_upload(self, client_id: str) -> bytes:
        """Every ciphertext is in: the data set is fixed and training may start."""
        manifest = self._manifest_of(client_id)
        missing = [k for k in range(len(manifest.items)) if not self.files.has_item(k)]
        if missing:
            raise IncompleteUploadError(f"{len(missing)} ciphertexts missing (first {missing[0]})")
        row = self.row
        if row.phase == TransferPhase.KEYS:
            raise UnavailableError("waiting for the owner's evaluation keys; commit again")
        if row.receipt is None:
            self.store.committed(self.job_id, manifest.receipt, self.clock())
            logger.info("job %s: encrypted data set in (%d ciphertexts)", self.job_id,
                        len(manifest.items))  # fmt: skip
        self._wake.set()
        self._notify()
        return manifest.receipt
