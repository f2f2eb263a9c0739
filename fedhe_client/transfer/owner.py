"""The data owner of a transfer job: holds the secret key, answers the trainer's requests.

Every reply is a fresh public-key encryption of values the owner re-encoded from its own
plaintext state (P - Y, its weights); nothing decrypted is ever sent back. The owner keeps
the model in plaintext, runs validation and early stopping on decrypted validation logits
and answers only the stop bit. Never imported by the server.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from fedhe_client.transfer.keys import OwnerKeys
from fedhe_client.transfer.preprocess import Preprocessor
from fedhe_common.hetal import blobs
from fedhe_common.hetal.params import SoftmaxMode, TransferParams
from fedhe_common.hetal.plain import cross_entropy
from fedhe_common.hetal.protocol import (
    EncryptedDataset,
    OwnerReply,
    OwnerRequest,
    ProtocolError,
    RequestKind,
)
from fedhe_common.hetal.schedule import (
    EarlyStopping,
    block_assignment,
    contiguous_blocks,
    nesterov_eta,
    step_at,
)
from fedhe_common.hetal.softmax import bound_logits, softmax_exact
from fedhe_common.hetal.trainer import compact_logits, layout_for

Array = NDArray[np.float64]
Labels = NDArray[np.int64]
STATE_MAGIC = b"HOS2"  # per-step state (HOS1 held keys and data too)
DATA_MAGIC = b"HOD1"
MAX_STATE_BYTES = 16 << 30


@dataclass
class TrainedHead:
    """The owner's result: the best-validation head and how training went."""

    weights: Array
    preprocessor: Preprocessor
    best_epoch: int
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)

    def predict(self, features: Array) -> Labels:
        """Class labels for raw features (preprocessed like the training data)."""
        x = self.preprocessor.transform(features)
        return np.asarray((x @ self.weights.T).argmax(axis=1), dtype=np.int64)


def _arr_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _arr(b: bytes) -> np.ndarray:
    return np.asarray(np.load(io.BytesIO(b), allow_pickle=False))


class DataOwner:
    """Owner side of one transfer job (see the module docstring)."""

    def __init__(
        self,
        params: TransferParams,
        keys: OwnerKeys,
        prep: Preprocessor,
        train: tuple[Array, Labels],
        val: tuple[Array, Labels],
    ) -> None:
        self.params, self.keys, self.prep = params, keys, prep
        self.layout = layout_for(params)
        self.train_x, self.train_y = train
        self.val_x, self.val_y = val
        self._check_labels(self.train_y)
        self._check_labels(self.val_y)
        self.blocks = block_assignment(len(self.train_x), params.block_rows, params.seed)
        self.val_blocks = contiguous_blocks(len(self.val_x), params.block_rows)
        self.onehot = np.eye(params.classes)[self.train_y]
        self.w = np.zeros((params.classes, params.features))
        self.v = self.w.copy()
        self.best_w = self.w.copy()
        self.step = 0
        self.epoch_done = 0
        self.awaiting_validation = False
        self.stopper = EarlyStopping(params.patience, params.max_epochs)
        self.val_loss: list[float] = []
        self.val_acc: list[float] = []
        self.last: OwnerReply | None = None
        self._enc = keys.encryptor()
        self._dec = keys.decryptor()
        self._compact = compact_logits(params)

    def _check_labels(self, y: Labels) -> None:
        if y.ndim != 1 or len(y) == 0 or y.min() < 0 or y.max() >= self.params.classes:
            raise ValueError(f"labels must be a non-empty vector in 0..{self.params.classes - 1}")

    # -- set-up ------------------------------------------------------------------------
    @classmethod
    def create(
        cls, params: TransferParams, train_x: Array, train_y: Labels, val_x: Array, val_y: Labels
    ) -> DataOwner:
        """Fit the preprocessing on the training split and make the job's keys here."""
        prep = Preprocessor.fit(train_x, out_features=params.features)
        train = (prep.transform(train_x), np.asarray(train_y, dtype=np.int64))
        val = (prep.transform(val_x), np.asarray(val_y, dtype=np.int64))
        if len(train[0]) != len(train[1]) or len(val[0]) != len(val[1]):
            raise ValueError("features and labels differ in length")
        return cls(params, OwnerKeys.generate(params), prep, train, val)

    def eval_keys(self) -> bytes:
        """Public + relinearisation + exactly the needed Galois keys (no secret key)."""
        return self.keys.eval_blob()

    def _encrypt(self, vec: np.ndarray) -> bytes:
        return self._enc.serialize(self._enc.encrypt(vec))

    def _weights(self, validation: bool) -> list[bytes]:
        lay = self.layout
        out = [self._encrypt(v) for v in lay.pack_wc(self.v)]
        out += [self._encrypt(v) for v in lay.pack_w(self.w)]
        if validation:
            out += [self._encrypt(v) for v in lay.pack_wc(self.w)]
        return out

    def encrypt_dataset(self) -> EncryptedDataset:
        """The one-time upload: X blocks, label blocks (Y^), validation X, initial weights."""
        lay = self.layout
        scale = self.params.logit_scale  # mode server: the server's logits are z / bound
        tx = [self._encrypt(v) for b in self.blocks for v in lay.pack_x(self.train_x[b] * scale)]
        ty = [self._encrypt(lay.pack_ahat(self.onehot[b])) for b in self.blocks]
        vx = [self._encrypt(v) for b in self.val_blocks for v in lay.pack_x(self.val_x[b] * scale)]
        return EncryptedDataset(
            tuple(tx), tuple(ty), tuple(vx), tuple(len(b) for b in self.blocks),
            tuple(len(b) for b in self.val_blocks), tuple(self._weights(False)),
        )  # fmt: skip

    # -- answers -----------------------------------------------------------------------
    def answer(self, request: OwnerRequest) -> OwnerReply:
        """Answer ``request``; the same ``seq`` again returns the cached reply."""
        if self.last is not None and request.seq == self.last.seq:
            if request.kind != self.last.kind:
                raise ProtocolError(f"request {request.seq} changed its kind")
            return self.last
        expected = 0 if self.last is None else self.last.seq + 1
        if request.seq != expected:
            raise ProtocolError(f"request {request.seq}, expected {expected}")
        if request.kind == RequestKind.FINISHED:
            reply = OwnerReply(request.seq, RequestKind.FINISHED)
        elif request.kind == RequestKind.VALIDATE:
            reply = self._validate(request)
        else:
            reply = self._step(request)
        self.last = reply
        return reply

    def _unpack_z(self, blob: bytes, rows: int) -> Array:
        """Decrypted logits (rows x classes) of one block, in the trainer's Z layout."""
        if self._compact:
            return self.layout.unpack_z_compact(self._dec(blob), rows)
        return self.layout.unpack_z(self._dec(blob), rows)

    def _plan_blocks(self, request: OwnerRequest) -> tuple[int, ...]:
        if self.awaiting_validation:
            raise ProtocolError(f"{request.kind} request before the epoch's validation")
        if request.step != self.step:
            raise ProtocolError(f"request for step {request.step}, the owner is at {self.step}")
        plan = step_at(self.step, len(self.blocks), self.params.blocks_per_batch, self.params.seed)
        return plan.blocks

    def _step(self, request: OwnerRequest) -> OwnerReply:
        blocks = self._plan_blocks(request)
        if request.kind == RequestKind.SOFTMAX:
            if self.params.mode is not SoftmaxMode.CLIENT:
                raise ProtocolError("mode server has no softmax requests")
            if len(request.ciphertexts) != len(blocks):
                raise ProtocolError(f"{len(request.ciphertexts)} logit blocks, need {len(blocks)}")
            out = []
            for ct, b in zip(request.ciphertexts, blocks, strict=True):
                idx = self.blocks[b]
                z = self._unpack_z(ct, len(idx))
                out.append(
                    self._encrypt(self.layout.pack_ahat(softmax_exact(z) - self.onehot[idx]))
                )
            return OwnerReply(request.seq, RequestKind.SOFTMAX, tuple(out))
        if request.kind != RequestKind.REFRESH or len(request.ciphertexts) != self.layout.kappa:
            raise ProtocolError("a refresh request carries one ciphertext per feature block")
        v_new = self.layout.unpack_w([self._dec(c) for c in request.ciphertexts])
        eta = nesterov_eta(self.step, self.params.nesterov)
        w_new = (v_new - eta * self.w) / (1.0 - eta)
        if self.params.mode is SoftmaxMode.SERVER:
            bound, classes = self.params.softmax.bound, self.params.classes
            w_new = bound_logits(w_new, self.train_x, bound, classes)
            v_new = bound_logits(v_new, self.train_x, bound, classes)
        self.w, self.v = w_new, v_new
        plan = step_at(self.step, len(self.blocks), self.params.blocks_per_batch, self.params.seed)
        self.step += 1
        self.awaiting_validation = plan.last_in_epoch
        return OwnerReply(
            request.seq, RequestKind.REFRESH, tuple(self._weights(plan.last_in_epoch))
        )

    def _validate(self, request: OwnerRequest) -> OwnerReply:
        if not self.awaiting_validation or request.epoch != self.epoch_done:
            raise ProtocolError(f"unexpected validation request for epoch {request.epoch}")
        if len(request.ciphertexts) != len(self.val_blocks):
            raise ProtocolError(
                f"{len(request.ciphertexts)} validation blocks, need {len(self.val_blocks)}"
            )
        z = np.vstack(
            [
                self._unpack_z(c, len(b))
                for c, b in zip(request.ciphertexts, self.val_blocks, strict=True)
            ]
        )
        z /= self.params.logit_scale  # mode server: validation logits are z / bound
        loss, acc = cross_entropy(z, self.val_y)
        self.val_loss.append(loss)
        self.val_acc.append(acc)
        improved, stop = self.stopper.update(self.epoch_done, loss)
        if improved:
            self.best_w = self.w.copy()
        self.epoch_done += 1
        self.awaiting_validation = False
        return OwnerReply(request.seq, RequestKind.VALIDATE, (), stop)

    def result(self) -> TrainedHead:
        """The best-validation head (the last one if no epoch was validated yet)."""
        best = self.stopper.best_epoch
        weights = self.best_w if best >= 0 else self.w
        return TrainedHead(weights.copy(), self.prep, best, list(self.val_loss), list(self.val_acc))

    # -- state -------------------------------------------------------------------------
    # Three parts, so a reply rewrites only what changes: the keys (secret key included,
    # tens of MB: written once), the data (params, preprocessing, features: written once)
    # and the per-step state (weights, counters, the last reply: written at every reply).
    def keys_state(self) -> bytes:
        """The job's keys, secret key included (cached bytes): keep them on the device."""
        return self.keys.to_bytes()

    def data_state(self) -> bytes:
        """What never changes after creation: params, preprocessing, the feature splits."""
        meta = {"params": self.params.to_json(), "prep": self.prep.to_json()}
        arrays = [self.train_x, self.train_y, self.val_x, self.val_y]
        return blobs.pack(DATA_MAGIC, meta, {"arrays": [_arr_bytes(a) for a in arrays]})

    def to_state(self) -> bytes:
        """The per-step state (small): weights, counters, early stopping, the last reply."""
        meta = {
            "params": self.params.to_json(), "step": self.step,
            "epoch_done": self.epoch_done, "awaiting": self.awaiting_validation,
            "stopper": [self.stopper.best_loss, self.stopper.best_epoch,
                        self.stopper.bad_epochs],
            "val_loss": self.val_loss, "val_acc": self.val_acc,
            "last": None if self.last is None else
            [self.last.seq, self.last.kind.value, self.last.stop],
        }  # fmt: skip
        groups = {
            "arrays": [_arr_bytes(a) for a in (self.w, self.v, self.best_w)],
            "last": list(self.last.ciphertexts) if self.last else [],
        }
        return blobs.pack(STATE_MAGIC, meta, groups)

    @classmethod
    def from_state(cls, state: bytes, keys: bytes, data: bytes) -> DataOwner:
        """Inverse of :meth:`to_state`, :meth:`keys_state` and :meth:`data_state`."""
        meta, groups = blobs.unpack(STATE_MAGIC, state, MAX_STATE_BYTES)
        dmeta, dgroups = blobs.unpack(DATA_MAGIC, data, MAX_STATE_BYTES)
        if dmeta["params"] != meta["params"]:
            raise ValueError("the owner's state and data belong to different jobs")
        params = TransferParams.from_json(meta["params"])
        owner_keys = OwnerKeys.from_bytes(keys)
        if owner_keys.params != params:
            raise ValueError("the owner's keys belong to another job")
        tx, ty, vx, vy = (_arr(b) for b in dgroups["arrays"])
        prep = Preprocessor.from_json(dmeta["prep"])
        owner = cls(params, owner_keys, prep, (tx, ty), (vx, vy))
        owner.w, owner.v, owner.best_w = (_arr(b) for b in groups["arrays"])
        owner.step, owner.epoch_done = int(meta["step"]), int(meta["epoch_done"])
        owner.awaiting_validation = bool(meta["awaiting"])
        loss, epoch, bad = meta["stopper"]
        owner.stopper.best_loss, owner.stopper.best_epoch = float(loss), int(epoch)
        owner.stopper.bad_epochs = int(bad)
        owner.val_loss, owner.val_acc = list(meta["val_loss"]), list(meta["val_acc"])
        if meta["last"] is not None:
            seq, kind, stop = meta["last"]
            owner.last = OwnerReply(int(seq), RequestKind(kind), tuple(groups["last"]), bool(stop))
        return owner


def dumps_history(head: TrainedHead) -> str:
    """The head's training history as JSON (export next to the weights)."""
    return json.dumps(
        {"best_epoch": head.best_epoch, "val_loss": head.val_loss, "val_acc": head.val_acc}
    )
