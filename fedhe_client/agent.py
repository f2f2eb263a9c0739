"""The client agent loop: plan -> download+decrypt -> train -> encrypt -> upload -> commit."""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedhe_client.connection import ServerConnection
from fedhe_client.heartbeat import HeartbeatSender
from fedhe_client.keymodes import Threshold, key_mode
from fedhe_client.learner import check_global, check_layout, learner_for_client
from fedhe_client.model_out import save_global
from fedhe_client.spool import SpooledChunks
from fedhe_client.tb_log import NoRoundLog, RoundLog, check_available, open_round_log
from fedhe_client.transfer.job import TransferJob
from fedhe_client.update_codec import (
    EncodedUpdate,
    StreamingDecoder,
    decode_update,
    encode_update,
)
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.load import parse_yaml
from fedhe_common.config.models import ClientConfig, JobConfig
from fedhe_common.config.weights import sample_count_bound
from fedhe_common.crypto.presets import get_preset
from fedhe_common.errors import (
    ConflictError,
    FedHEError,
    IncompleteUploadError,
    InvalidArgumentError,
    KeyMaterialError,
    QuotaExceededError,
    WrongRoundError,
)
from fedhe_common.mlbridge.masks import EncryptionMask, top_p_mask

logger = logging.getLogger(__name__)
# The server refused this client's upload for this round only (e.g. its weight): the
# client skips the round and keeps taking part instead of leaving the job.
ROUND_REFUSALS = (InvalidArgumentError, QuotaExceededError, ConflictError)


class JobCancelledError(FedHEError):
    """An admin cancelled the job this client was taking part in."""


def _no_op(_: int) -> None:
    return None


@dataclass(frozen=True)
class AgentHooks:
    """Points where tests inject faults (e.g. exit after N chunks); no-ops by default."""

    after_chunk: Callable[[int], None] = field(default=_no_op)
    after_commit: Callable[[int], None] = field(default=_no_op)


class ClientAgent:
    """Runs one client through a job until it finishes."""

    def __init__(self, config: ClientConfig, hooks: AgentHooks | None = None) -> None:
        self.config = config
        self.hooks = hooks or AgentHooks()
        # Where the agent is (phase, round): what a failure is reported against.
        self.where: tuple[str, int] = ("setup", 0)
        check_available(config)  # tensorboard_dir without the extra: fail before joining
        self.round_log: RoundLog = NoRoundLog()
        first = ServerConnection(config.server)
        reg = first.register(config.client_id, config.job_id)
        first.close()
        self.job_id = reg.job_id
        self.job = parse_yaml(reg.job_yaml, JobConfig, f"job {reg.job_id}")
        self.values_per_chunk = (
            reg.values_per_chunk or get_preset(self.job.preset_name).values_per_ciphertext
        )
        self.conn = ServerConnection(config.server, reg.max_message_bytes)
        self.transfer: TransferJob | None = None
        if self.job.transfer is not None:  # HETAL: this site is the data owner
            self.transfer = TransferJob(config, self.job_id, self.job, self.conn)
            return
        self.mode = key_mode(config, self.job_id, self.job, bytes(reg.context_fingerprint))
        if isinstance(self.mode, Threshold):  # parties verify aggregates against signed uploads
            self.conn.signer = self.mode.member.sign_upload
        # The task named in this client's own config; the job only names it (checked).
        self.learner = learner_for_client(config, self.job)
        # FedAvg weight: the sample count, capped at the job's per-client bound (the
        # preset's weight budget shared among the expected clients) instead of refused.
        self.weight = min(self.learner.sample_count, sample_count_bound(self.job))
        if self.weight < self.learner.sample_count:
            logger.warning(
                "FedAvg weight capped at %d (this site has %d samples; the job's per-client "
                "bound is participants.max_sample_count)",
                self.weight,
                self.learner.sample_count,
            )
        self.export = Path(config.export_dir) if config.export_dir else None
        if self.export:
            self.export.mkdir(parents=True, exist_ok=True)
        self.applied_round = 0
        self.mask: EncryptionMask | None = None
        self.encrypt_s: dict[int, float] = {}
        self.steps: dict[int, dict[str, float]] = {}  # round -> train/encrypt/upload figures
        logger.info(
            "client %s joined job %s: %d samples, %d values, encryption %s",
            config.client_id,
            self.job_id,
            self.learner.sample_count,
            self.learner.manifest.total,
            self.job.encryption.mode,
        )
        self.round_log = open_round_log(config, self.job_id)

    # ------------------------------------------------------------------ loop
    def run(self) -> dict[str, float]:
        """Take part in rounds until the job finishes; return final metrics."""
        interval = self.job.participants.heartbeat_interval_s
        beat = functools.partial(self.conn.heartbeat, self.job_id, self.config.client_id, interval)
        with HeartbeatSender(beat, interval):
            if self.transfer is not None:
                try:
                    return self.transfer.run()
                finally:
                    self.where = self.transfer.where
            try:
                return self._rounds()
            finally:
                self.round_log.close()

    def _rounds(self) -> dict[str, float]:
        done_round = 0
        while True:
            plan = self.conn.round_plan(self.job_id, self.config.client_id, done_round)
            fingerprint = bytes(plan.context_fingerprint)
            if fingerprint and fingerprint != self.mode.fingerprint:
                raise KeyMaterialError("the server's job context differs from this client's keys")
            check_layout(plan.layout_id, self.learner.manifest.layout_id)
            if plan.phase == pb.ROUND_PHASE_DECRYPT and isinstance(self.mode, Threshold):
                self.where = ("decrypt", plan.round)
                self.mode.member.decrypt_duty(self.conn, self.config.client_id, plan.round)
                continue
            if plan.mask_required and self.mask is None and plan.mask_id:
                self._agree_mask(plan.mask_id)
            if plan.aggregate_round > self.applied_round:
                self.where = ("aggregate", plan.aggregate_round)
                self._apply_aggregate(plan.aggregate_round)
            if plan.phase == pb.ROUND_PHASE_JOB_FINISHED:
                metrics = self.learner.evaluate()
                logger.info("job %s finished: test accuracy %.4f", self.job_id, metrics["accuracy"])
                return metrics
            if plan.phase == pb.ROUND_PHASE_JOB_FAILED:
                if plan.job_state == pb.JOB_STATE_CANCELLED:
                    raise JobCancelledError(f"job {self.job_id} was cancelled")
                raise FedHEError(f"job {self.job_id} failed on the server")
            if plan.retry:
                time.sleep(plan.retry_after_ms / 1000)  # 0 unless the server was busy
                continue
            if plan.phase == pb.ROUND_PHASE_MASK:
                self._upload_sensitivity(plan)
                continue
            if plan.mask_required and self.mask is None:
                self._agree_mask("")
            self.where = ("train", plan.round)
            self._train_and_upload(plan)
            done_round = plan.round

    # ------------------------------------------------------------ selective mode
    def _upload_sensitivity(self, plan: pb.GetRoundPlanResponse) -> None:
        """Round 0: upload this client's sensitivity map (max-normalised), encrypted."""
        sel = self.job.selective
        t0 = time.perf_counter()
        scores = self.learner.sensitivity(sel.sensitivity, sel.samples)
        peak = float(scores.max()) if scores.size else 0.0
        scores = scores / peak if peak > 0 else scores
        update = encode_update(
            scores,
            self.mode,
            None,
            self.values_per_chunk,
            get_preset(self.job.preset_name).clip_bound,
            self.job.dp,
        )
        self.conn.upload(self._manifest(plan.round, "", update, scores.size), update)
        logger.info(
            "round 0: %s sensitivity map of %d values uploaded (%.2fs)",
            sel.sensitivity,
            scores.size,
            time.perf_counter() - t0,
        )

    def _agree_mask(self, expected_id: str) -> None:
        """Decrypt the summed sensitivity (round 0), take the top-p mask, record it."""
        header, chunks = self.conn.download(self.job_id, 0)
        scores = decode_update(header, chunks, self.mode, None, self.values_per_chunk)
        sel = self.job.selective
        mask = top_p_mask(
            scores / max(1, header.weight_sum),
            sel.ratio,
            self.learner.manifest,
            sel.include_first_last,
            sel.include_layers,
        )
        if expected_id and mask.mask_id != expected_id:
            raise FedHEError("the mask computed here differs from the job's recorded mask")
        self.conn.submit_mask(self.job_id, self.config.client_id, mask)
        self.mask = mask
        logger.info(
            "mask %s...: %d of %d values encrypted (ratio %.3f)",
            mask.mask_id[:12],
            mask.count,
            mask.total,
            mask.ratio,
        )

    def _manifest(
        self, number: int, mask_id: str, update: EncodedUpdate, num_values: int
    ) -> pb.UploadManifest:
        return pb.UploadManifest(
            job_id=self.job_id,
            round=number,
            client_id=self.config.client_id,
            layout_id=self.learner.manifest.layout_id,
            mask_id=mask_id,
            context_fingerprint=self.mode.fingerprint,
            ciphertext_chunks=update.ct_plan.count,
            plaintext_chunks=update.pt_plan.count,
            num_values=num_values,
            sample_count=self.weight,
        )

    def _apply_aggregate(self, number: int) -> None:
        t0 = time.perf_counter()
        received = self.conn.bytes_received
        try:  # decrypted as it streams: no ciphertext is kept (issue 12)
            decoder = _TimedDecoder(StreamingDecoder(self.mode, self.mask, self.values_per_chunk))
            header, _ = self.conn.download(self.job_id, number, sink=decoder)
            if header.layout_id != self.learner.manifest.layout_id:
                raise FedHEError("aggregate has another model layout")
            vector = decoder.result() / header.weight_sum
            check_global(vector, self.job.training.max_update_abs)
        except FedHEError as exc:
            logger.error(
                "AGGREGATE_REJECTED round %d: %s; keeping the previous model", number, exc.message
            )
            self.applied_round = number
            return
        decrypt_s = time.perf_counter() - t0
        self.learner.load_vector(vector)
        self.applied_round = number
        metrics = self.learner.evaluate()
        metrics["contributors"] = float(header.contributors)
        metrics["he_s"] = self.encrypt_s.pop(number, 0.0) + decrypt_s
        # per-step overheads of this client's round (FedML-HE Fig. 13): job history / plot
        metrics.update(self.steps.pop(number, {}))
        metrics["decrypt_s"] = decoder.busy_s
        metrics["download_s"] = max(0.0, decrypt_s - decoder.busy_s)
        metrics["download_bytes"] = float(self.conn.bytes_received - received)
        if self.export:
            np.save(self.export / f"global-r{number}.npy", vector, allow_pickle=False)
        if self.config.state_dir:  # the model out: <state_dir>/models/<job>/
            learner = self.learner
            save_global(self.config.state_dir, self.job_id, number, learner.model,
                        learner.manifest.layout_id, learner.task.name, metrics,
                        keep=self.config.keep_models)  # fmt: skip
        self.conn.report(self.job_id, self.config.client_id, number, metrics)
        self._log_round(number, metrics)
        logger.info(
            "round %d global model: accuracy %.4f loss %.4f (%d contributors)",
            number,
            metrics["accuracy"],
            metrics["loss"],
            header.contributors,
        )

    def _log_round(self, number: int, metrics: dict[str, float]) -> None:
        """The round's final metrics to the optional local log (TensorBoard)."""
        try:
            self.round_log.log_round(number, metrics)
        except OSError as exc:  # a full or read-only disk costs the log, not the job
            logger.warning("round %d: TensorBoard log not written: %s", number, exc)

    def _train_and_upload(self, plan: pb.GetRoundPlanResponse) -> None:
        t0 = time.perf_counter()
        vector, loss = self.learner.train_round(plan.round)
        t_train = time.perf_counter() - t0
        t1 = time.perf_counter()
        clip = get_preset(self.job.preset_name).clip_bound if self.mode.encrypts else float("inf")
        update = encode_update(
            vector, self.mode, self.mask, self.values_per_chunk, clip, self.job.dp, pipelined=True
        )  # encrypted on a producer thread while it uploads (issue 12)
        try:
            self._send_update(plan, vector, update, t_train, loss, t1)
        finally:
            update.close()

    def _send_update(
        self,
        plan: pb.GetRoundPlanResponse,
        vector: np.ndarray,
        update: EncodedUpdate,
        t_train: float,
        loss: float,
        t1: float,
    ) -> None:
        t_he = time.perf_counter() - t1
        mask_id = self.mask.mask_id if self.mask is not None else ""
        manifest = self._manifest(plan.round, mask_id, update, vector.size)
        if self.export:
            np.save(self.export / f"upload-r{plan.round}.npy", vector, allow_pickle=False)
            (self.export / f"upload-r{plan.round}.json").write_text(
                json.dumps({"sample_count": self.weight})
            )
        chunks_before = self.conn.chunks_sent
        sent_before, t_up = self.conn.bytes_sent, time.perf_counter()
        try:
            self.conn.upload(manifest, update, on_chunk=self.hooks.after_chunk)
        except (WrongRoundError, IncompleteUploadError) as exc:  # round moved on: re-sync
            logger.warning(
                "round %d closed before this upload (%s); waiting for the next",
                plan.round,
                exc.message,
            )
            return
        except ROUND_REFUSALS as exc:
            logger.error(
                "UPLOAD_REFUSED round %d: %s; skipping this round", plan.round, exc.message
            )
            return
        self.hooks.after_commit(plan.round)
        if isinstance(update.ciphertext, SpooledChunks):
            t_he = update.ciphertext.busy_s
        self.encrypt_s[plan.round] = t_he if self.mode.encrypts else 0.0
        upload_s = time.perf_counter() - t_up
        self.steps[plan.round] = {
            "train_s": t_train,
            "encrypt_s": self.encrypt_s[plan.round],
            "upload_s": max(0.0, upload_s - self.encrypt_s[plan.round]),  # beyond encryption
            "samples": float(self.weight),
            "upload_bytes": float(self.conn.bytes_sent - sent_before),
        }
        logger.info(
            "round %d: trained (loss %.4f, %.2fs), encrypted %.2fs, uploaded %.2f MB "
            "(%d chunks sent)",
            plan.round,
            loss,
            t_train,
            t_he,
            update.num_bytes / 1e6,
            self.conn.chunks_sent - chunks_before,
        )


class _TimedDecoder:
    """A download sink that times the decoder's work (decryption) apart from the wire."""

    def __init__(self, inner: StreamingDecoder) -> None:
        self.inner = inner
        self.busy_s = 0.0

    def header(self, header: pb.AggregateHeader) -> None:
        """Forward the aggregate's header."""
        self.inner.header(header)

    def chunk(self, chunk: pb.Chunk) -> None:
        """Decode one chunk, timed."""
        t0 = time.perf_counter()
        try:
            self.inner.chunk(chunk)
        finally:
            self.busy_s += time.perf_counter() - t0

    def result(self) -> np.ndarray:
        """The decoded vector (threshold jobs decrypt here), timed."""
        t0 = time.perf_counter()
        try:
            return self.inner.result()
        finally:
            self.busy_s += time.perf_counter() - t0
