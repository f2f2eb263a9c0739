"""The data owner's side of a transfer job (HETAL), run by the client agent.

Extract features with the frozen extractor, create the owner (keys made here; the
secret key never leaves this device), register the evaluation keys at the key
authority, upload the encrypted data set (resumable), then answer the trainer's
requests until it finishes, and save the trained head to ``<state_dir>/models/<job>/``.

Everything needed to continue after a restart lives in ``<state_dir>/transfer/<job>/``
(mode 0600): the owner's keys (``owner.keys``, secret key included) and data
(``owner.data``), both written once, its small per-step state (``owner.state``, written
before every reply), the evaluation-key blob and the encrypted data set until they are
delivered, the test split and the stage reached.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedhe_client.transfer import link
from fedhe_client.transfer.head_out import save_head
from fedhe_client.transfer.sources import (
    FeatureSource,
    FeatureSplits,
    Owner,
    OwnerCreate,
    OwnerRestore,
    hetal_owner,
    hetal_restore,
    job_params,
    site_features,
)
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.models import ClientConfig, JobConfig
from fedhe_common.errors import FedHEError, NotFoundError, WrongRoundError
from fedhe_common.hetal.protocol import RequestKind
from fedhe_common.rpc.connection import PeerConnection
from fedhe_common.rpc.pieces import BlobInfo
from fedhe_common.storage.atomic import atomic_write

logger = logging.getLogger(__name__)


class TransferJob:
    """One transfer job on the data owner's side, resumable after a restart."""

    def __init__(
        self,
        config: ClientConfig,
        job_id: str,
        job: JobConfig,
        conn: PeerConnection,
        features: FeatureSource = site_features,
        create: OwnerCreate = hetal_owner,
        restore: OwnerRestore = hetal_restore,
        params: Callable[[JobConfig, FeatureSplits], Any] = job_params,
    ) -> None:
        if job.transfer is None:
            raise FedHEError(f"job {job_id} is not a transfer job")
        if not config.state_dir:
            raise FedHEError("a transfer job needs the client config's state_dir")
        self.config = config
        self.job_id = job_id
        self.job = job
        self.conn = conn
        self.features = features
        self.create = create
        self.restore = restore
        self.params = params
        self.folder = Path(config.state_dir) / "transfer" / job_id
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.where: tuple[str, int] = ("setup", 0)

    # ---------------------------------------------------------------- files
    def _stage(self) -> dict[str, Any]:
        path = self.folder / "stage.json"
        return json.loads(path.read_text()) if path.exists() else {"stage": "new", "next_seq": 0}

    def _set_stage(self, stage: str, next_seq: int = 0) -> None:
        doc = json.dumps({"stage": stage, "next_seq": next_seq}).encode()
        atomic_write(self.folder / "stage.json", doc, 0o600)

    def _save_owner(self, owner: Owner) -> None:
        """The per-step state only (the keys and data files never change)."""
        atomic_write(self.folder / "owner.state", owner.to_state(), 0o600)

    def _save_owner_once(self, owner: Owner) -> None:
        atomic_write(self.folder / "owner.keys", owner.keys_state(), 0o600)
        atomic_write(self.folder / "owner.data", owner.data_state(), 0o600)
        self._save_owner(owner)

    # ----------------------------------------------------------------- run
    def run(self) -> dict[str, float]:
        """Take the job to its end; return the head's test metrics."""
        stage = self._stage()
        owner, params_json, features, classes = self._owner(stage["stage"])
        if stage["stage"] in ("new", "keys"):
            self.where = ("keys", 0)
            self._register_keys(owner)
            self._set_stage("upload")
            stage = self._stage()
        if stage["stage"] == "upload":
            self.where = ("upload", 0)
            self._upload(owner, params_json, features, classes)
            self._set_stage("train")
            stage = self._stage()
        self.where = ("train", 0)
        self._answer_requests(owner, int(stage["next_seq"]))
        return self._finish(owner)

    def _owner(self, stage: str) -> tuple[Owner, str, int, int]:
        path = self.folder / "owner.state"
        keys_path, data_path = self.folder / "owner.keys", self.folder / "owner.data"
        meta_path = self.folder / "owner.json"
        saved = (path, keys_path, data_path, meta_path)
        if stage != "new" and all(p.exists() for p in saved):
            meta = json.loads(meta_path.read_text())
            logger.info("job %s: data owner restored from %s", self.job_id, self.folder)
            return (
                self.restore(path.read_bytes(), keys_path.read_bytes(), data_path.read_bytes()),
                meta["params"],
                meta["features"],
                meta["classes"],
            )
        t0 = time.perf_counter()
        splits = self.features(self.config, self.job)
        assert self.job.transfer is not None
        cap = self.job.transfer.max_train_samples
        if cap is not None and len(splits.train_x) > cap:
            splits = FeatureSplits(splits.train_x[:cap], splits.train_y[:cap], splits.val_x,
                                   splits.val_y, splits.test_x, splits.test_y)  # fmt: skip
        params = self.params(self.job, splits)
        owner = self.create(params, splits)
        params = getattr(owner, "params", params)
        logger.info(
            "job %s: %d train / %d val / %d test samples, %d features, %d classes (%.1fs)",
            self.job_id, len(splits.train_x), len(splits.val_x), len(splits.test_x),
            params.features, params.classes, time.perf_counter() - t0,
        )  # fmt: skip
        np.savez(self.folder / "test.npz", x=splits.test_x, y=splits.test_y)
        (self.folder / "test.npz").chmod(0o600)
        self._save_owner_once(owner)
        meta = {"params": params.to_json(), "features": params.features, "classes": params.classes}
        atomic_write(meta_path, json.dumps(meta).encode(), 0o600)
        self._set_stage("keys")
        return owner, meta["params"], int(meta["features"]), int(meta["classes"])

    def _register_keys(self, owner: Owner) -> None:
        path = self.folder / "eval_keys.bin"
        if not path.exists():  # the same blob after a restart (the key authority keeps one)
            atomic_write(path, owner.eval_keys(), 0o600)
        blob = path.read_bytes()
        created = link.register_eval_keys(self.config.keyauth, self.job_id, blob)
        logger.info("job %s: evaluation keys registered (%d bytes%s)", self.job_id, len(blob),
                    "" if created else ", already there")  # fmt: skip
        path.unlink(missing_ok=True)

    def _upload(self, owner: Owner, params_json: str, features: int, classes: int) -> None:
        folder = self.folder / "dataset"
        begin_path = folder / "begin.pb"
        if not begin_path.exists():  # encrypt once: a restart resends the same ciphertexts
            data = owner.encrypt_dataset()
            parts = [
                (pb.TRANSFER_PART_TRAIN_X, data.train_x),
                (pb.TRANSFER_PART_TRAIN_Y, data.train_y),
                (pb.TRANSFER_PART_VAL_X, data.val_x),
                (pb.TRANSFER_PART_INITIAL, data.initial),
            ]
            begin = pb.BeginTransferUploadRequest(
                job_id=self.job_id, client_id=self.config.client_id,
                train_rows=list(data.train_rows), val_rows=list(data.val_rows),
                features=features, classes=classes, params_json=params_json,
            )  # fmt: skip
            k = 0
            for part, blobs in parts:
                for blob in blobs:
                    info = BlobInfo.of(blob)
                    begin.items.append(pb.TransferItem(part=part, size=info.size,
                                                       sha256=info.sha256))  # fmt: skip
                    atomic_write(folder / f"item-{k}.bin", blob, 0o600)
                    k += 1
            atomic_write(begin_path, begin.SerializeToString(), 0o600)
        begin = pb.BeginTransferUploadRequest.FromString(begin_path.read_bytes())
        items = [(folder / f"item-{k}.bin").read_bytes() for k in range(len(begin.items))]
        t0 = time.perf_counter()
        link.upload_dataset(self.conn, begin, items)
        logger.info("job %s: encrypted data set uploaded (%d ciphertexts, %.1f MB, %.1fs)",
                    self.job_id, len(items), sum(map(len, items)) / 1e6,
                    time.perf_counter() - t0)  # fmt: skip
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()

    def _answer_requests(self, owner: Owner, next_seq: int) -> None:
        while True:
            try:
                header, request = link.next_request(
                    self.conn, self.job_id, self.config.client_id, next_seq
                )
            except NotFoundError:
                self._check_cancelled()
                raise
            if header.phase == pb.TRANSFER_PHASE_FAILED:
                self._check_cancelled()
                raise FedHEError(f"transfer job {self.job_id} failed on the server: {header.error}")
            if request is None:
                if header.phase == pb.TRANSFER_PHASE_FINISHED:
                    return
                continue
            if request.kind == RequestKind.FINISHED:
                return
            self.where = ("train", request.epoch)
            reply = owner.answer(request)
            self._save_owner(owner)  # before sending: a restart answers the same seq again
            try:
                link.send_reply(self.conn, self.job_id, self.config.client_id, reply)
            except WrongRoundError as exc:  # a restarted server has not asked it again yet
                logger.info("job %s: %s; asking for the request again", self.job_id, exc.message)
                continue
            next_seq = request.seq + 1
            self._set_stage("train", next_seq)

    def _check_cancelled(self) -> None:
        from fedhe_client.agent import JobCancelledError

        status = self.conn.call("GetJobStatus", pb.GetJobStatusRequest(job_id=self.job_id))
        if status.state == pb.JOB_STATE_CANCELLED:
            raise JobCancelledError(f"job {self.job_id} was cancelled")

    def _finish(self, owner: Owner) -> dict[str, float]:
        head = owner.result()
        test = np.load(self.folder / "test.npz", allow_pickle=False)
        accuracy = float(np.mean(np.asarray(head.predict(test["x"])) == test["y"]))
        metrics = {"accuracy": accuracy, "best_epoch": float(head.best_epoch),
                   "test_samples": float(len(test["y"]))}  # fmt: skip
        card = save_head(self.config.state_dir or "", self.job_id, head, metrics)
        logger.info("job %s finished: test accuracy %.4f (best epoch %d); head in %s",
                    self.job_id, accuracy, head.best_epoch, card.parent)  # fmt: skip
        return metrics

