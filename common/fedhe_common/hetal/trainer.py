"""The server's HETAL trainer: Nesterov mini-batch GD of a softmax head on ciphertexts.

It holds public and evaluation keys only (no secret key, no Decryptor, no KeyGenerator)
and talks to the data owner through :mod:`fedhe_common.hetal.protocol` messages:

* ``mode: client``: per step SOFTMAX (encrypted logits Z of the batch; the owner answers
  fresh encryptions of P - Y) then REFRESH (the new encrypted V; the owner answers fresh
  Wc(v), W(w) and, at the end of an epoch, Wc(w) for validation).
* ``mode: server``: per step one REFRESH; the softmax is :func:`he_softmax` on ciphertexts.
* After each epoch VALIDATE (encrypted validation logits with the current w); the owner
  answers the stop bit. Then FINISHED carries the last encrypted W.

``apply`` only checks and stores the reply (cheap); the next ``pending`` does the
homomorphic work, once, and caches the request. All state is ciphertext bytes and a few
integers (``to_state``), so a restarted server asks the same ``seq`` again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from enum import StrEnum
from typing import Any

import numpy as np

from fedhe_common.hetal import blobs
from fedhe_common.hetal.backend import new_counts
from fedhe_common.hetal.kernels import (
    diag_abt,
    diag_abt_compact,
    diag_atb,
    required_steps,
    rotate_weights,
)
from fedhe_common.hetal.layout import Layout
from fedhe_common.hetal.parallel import KernelPool
from fedhe_common.hetal.params import SoftmaxMode, TransferParams
from fedhe_common.hetal.protocol import (
    EncryptedDataset,
    OwnerReply,
    OwnerRequest,
    ProtocolError,
    RequestKind,
    StepStats,
)
from fedhe_common.hetal.schedule import StepPlan, nesterov_eta, step_at
from fedhe_common.hetal.seal_backend import ChainParams, SealBackend, SealCT
from fedhe_common.hetal.softmax import PolySoftmax, he_softmax

logger = logging.getLogger(__name__)
STATE_MAGIC = b"HTS1"
EVAL_MAGIC = b"HEK1"
MAX_STATE_BYTES = 8 << 30
MAX_EVAL_KEY_BYTES = 8 << 30
MAX_BLOCKS = 1 << 20


class Phase(StrEnum):
    """What the trainer waits for (the kind of its pending request)."""

    SOFTMAX = "softmax"
    REFRESH = "refresh"
    VALIDATE = "validate"
    FINISHED = "finished"


# -- helpers shared with the owner (no secret key involved) ----------------------------------
def layout_for(params: TransferParams) -> Layout:
    """The block layout of ``params`` (s0 = block_rows, slots = N / 2)."""
    slots = params.chain.poly_modulus_degree // 2
    return Layout(params.classes, params.features, slots=slots, s0=params.block_rows)


def chain_params(params: TransferParams) -> ChainParams:
    """The SEAL chain of ``params``."""
    c = params.chain
    return ChainParams(c.poly_modulus_degree, tuple(c.coeff_bits), c.scale_bits)


def class_steps(layout: Layout) -> list[int]:
    """Rotations summing the classes of a horizontally tiled row: 1, 2, ..., cp / 2."""
    return [1 << t for t in range(layout.cp.bit_length() - 1)]


def compact_logits(params: TransferParams) -> bool:
    """Whether the logits the owner decrypts (mode client's softmax, every validation)
    come from DiagABT-compact (read with ``Layout.unpack_z_compact``)."""
    return params.kernels >= 2


def kernel_names(params: TransferParams) -> tuple[str, ...]:
    """The kernels the trainer runs for ``params`` (names of :func:`required_steps`)."""
    if params.kernels == 1:
        return ("abt", "atb")
    if params.mode is SoftmaxMode.CLIENT:
        return ("abt_compact", "atb_paired")
    return ("abt", "abt_compact", "atb_paired")


def rotation_steps(params: TransferParams) -> list[int]:
    """Exactly the rotation steps the trainer uses (the owner makes these Galois keys)."""
    layout = layout_for(params)
    steps = set(required_steps(layout, kernel_names(params)))
    if params.mode is SoftmaxMode.SERVER:
        steps |= set(class_steps(layout)) | {1}
    return sorted(steps)


def softmax_mask(layout: Layout) -> np.ndarray:
    """1 in the columns of real classes (j mod cp < classes) that DiagATB can reach.

    DiagATB reads A^ in columns < width + cp - 2 (+1 for the imaginary part's shift), so
    the class sums must be exact up to there: E' is kept in columns < width + 2 cp and
    zeroed beyond (no class sum wraps into the next row).
    """
    j = np.arange(layout.s1)
    cols = (j % layout.cp < layout.classes) & (j < min(layout.s1, layout.width + 2 * layout.cp))
    return np.tile(cols.astype(np.float64), layout.s0)


def pack_eval_keys(public: bytes, relin: bytes, galois: bytes) -> bytes:
    """The evaluation-key blob the owner registers: public, relinearisation, Galois keys."""
    return blobs.pack(EVAL_MAGIC, {}, {"gk": [galois], "pk": [public], "rk": [relin]})


def unpack_eval_keys(blob: bytes) -> tuple[bytes, bytes, bytes]:
    """Inverse of :func:`pack_eval_keys`; a blob with anything else is refused."""
    meta, groups = blobs.unpack(EVAL_MAGIC, blob, MAX_EVAL_KEY_BYTES)
    if meta or sorted(groups) != ["gk", "pk", "rk"] or any(len(v) != 1 for v in groups.values()):
        raise ValueError("evaluation keys must be exactly one public, relin and Galois key")
    return groups["pk"][0], groups["rk"][0], groups["gk"][0]


# -- the trainer ---------------------------------------------------------------------------
class TransferTrainer:
    """Server side of one transfer job (see the module docstring)."""

    def __init__(
        self,
        params: TransferParams,
        eval_keys: bytes,
        data: EncryptedDataset,
        state: bytes | None = None,
    ) -> None:
        self.params = params
        self.layout = layout_for(params)
        pk, rk, gk = unpack_eval_keys(eval_keys)
        self.be = SealBackend(chain_params(params), pk, rk, gk)
        self.data = data
        self._check_dataset(data)
        self.n_blocks = len(data.train_rows)
        self.poly = (
            PolySoftmax.build(params.softmax, params.classes)
            if params.mode is SoftmaxMode.SERVER
            else None
        )
        self._mask = softmax_mask(self.layout) if self.poly is not None else None
        self.seq = 0
        self.step = 0
        self.phase = self._step_phase()
        self.epochs_run = 0
        self.done = False
        self.best_epoch: int | None = None
        self.stats: list[StepStats] = []
        self.val_stats: list[StepStats] = []
        kappa = self.layout.kappa
        self.wc = list(data.initial[:kappa])
        self.wprev = list(data.initial[kappa:])
        self.wval: list[bytes] = []
        self.ahat: list[bytes] = []
        self._request: OwnerRequest | None = None
        self._compact = compact_logits(params)
        self._paired = params.kernels >= 2
        self.pool: KernelPool | None = None
        if params.workers > 1:
            self.pool = KernelPool(self.be.params, rk, gk, params.workers)
            logger.info("HETAL kernels run in %d worker processes", params.workers)
        if state is not None:
            self._restore(state)

    def close(self) -> None:
        """Stop the kernel workers (if any); the trainer must not be used afterwards."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    # -- checks ------------------------------------------------------------------------
    def _check_dataset(self, d: EncryptedDataset) -> None:
        kappa, s0 = self.layout.kappa, self.layout.s0
        nb, nv = len(d.train_rows), len(d.val_rows)
        if not 1 <= nb <= MAX_BLOCKS or not 1 <= nv <= MAX_BLOCKS:
            raise ProtocolError("the data set needs 1.. training and validation blocks")
        if any(not 1 <= r <= s0 for r in (*d.train_rows, *d.val_rows)):
            raise ProtocolError(f"every block holds 1..{s0} samples")
        if len(d.train_x) != nb * kappa or len(d.val_x) != nv * kappa:
            raise ProtocolError(f"need {kappa} feature blocks per row block")
        if len(d.train_y) != nb:
            raise ProtocolError("need one label ciphertext per training block")
        if len(d.initial) != 2 * kappa:
            raise ProtocolError(f"initial weights need {2 * kappa} ciphertexts")

    def _fresh(self, blob: bytes) -> SealCT:
        ct = self.be.deserialize(blob)
        if self.be.level(ct) != self.be.depth or ct.f != 1.0:
            raise ProtocolError("a reply ciphertext must be a fresh top-level encryption")
        return ct

    # -- schedule ----------------------------------------------------------------------
    def _plan(self) -> StepPlan:
        return step_at(self.step, self.n_blocks, self.params.blocks_per_batch, self.params.seed)

    def _step_phase(self) -> Phase:
        return Phase.SOFTMAX if self.params.mode is SoftmaxMode.CLIENT else Phase.REFRESH

    def _batch_rows(self, plan: StepPlan) -> int:
        return sum(self.data.train_rows[b] for b in plan.blocks)

    def _x(self, block: int, val: bool = False) -> list[SealCT]:
        k = self.layout.kappa
        src = self.data.val_x if val else self.data.train_x
        return [self.be.deserialize(b) for b in src[block * k : (block + 1) * k]]

    # -- the protocol ------------------------------------------------------------------
    def pending(self) -> OwnerRequest | None:
        """The request awaiting an answer (computed once, cached); FINISHED when done."""
        if self._request is None:
            self._request = self._compute()
        return self._request

    def _compute(self) -> OwnerRequest:
        before = dict(self.be.counts)
        pool_before = self._pool_marks()
        t0 = time.thread_time()
        plan = self._plan()
        if self.phase is Phase.FINISHED:
            cts: list[bytes] = list(self.wprev)
            return OwnerRequest(
                self.seq, RequestKind.FINISHED, self.step, self.epochs_run, tuple(cts)
            )
        if self.phase is Phase.VALIDATE:
            cts = self._validation_logits()
            epoch = self.epochs_run
        elif self.phase is Phase.SOFTMAX:
            cts = self._logits(plan)
            epoch = plan.epoch
        else:
            cts = self._refresh(plan)
            epoch = plan.epoch
        stat = self._stat(epoch, self.phase is Phase.VALIDATE)
        own = time.thread_time() - t0
        cpu0, crit0, ops0 = pool_before
        cpu1, crit1, ops1 = self._pool_marks()
        stat.server_cpu_s += own + cpu1 - cpu0
        stat.server_critical_s += own + crit1 - crit0
        stat.bytes_down += sum(len(c) for c in cts)
        for k, v in self.be.counts.items():
            stat.ops[k] = stat.ops.get(k, 0) + v - before.get(k, 0)
        for k, v in ops1.items():
            stat.ops[k] = stat.ops.get(k, 0) + v - ops0.get(k, 0)
        return OwnerRequest(self.seq, RequestKind(self.phase.value), self.step, epoch, tuple(cts))

    def _stat(self, epoch: int, validation: bool) -> StepStats:
        stats = self.val_stats if validation else self.stats
        key = epoch if validation else self.step
        if not stats or stats[-1].step != key:
            stats.append(StepStats(step=key, epoch=epoch, ops=new_counts()))
        return stats[-1]

    def _pool_marks(self) -> tuple[float, float, dict[str, int]]:
        if self.pool is None:
            return 0.0, 0.0, {}
        return self.pool.worker_cpu_s, self.pool.critical_cpu_s, dict(self.pool.counts)

    def _owner_logits(self, weights: list[bytes], blocks: list[int], val: bool) -> list[bytes]:
        """Z of ``blocks`` for the owner to decrypt (compact layout with kernel set 2)."""
        be, lay = self.be, self.layout
        wc = [be.deserialize(c) for c in weights]
        rows = [self._x(b, val) for b in blocks]
        if self.pool is not None:
            zs = self.pool.diag_abt(be, lay, rows, wc, duplicate=False, compact=self._compact)
            return [be.serialize(z) for z in zs]
        rotated = rotate_weights(be, lay, wc)
        if self._compact:
            return [be.serialize(diag_abt_compact(be, lay, x, rotated)) for x in rows]
        return [be.serialize(diag_abt(be, lay, x, rotated, duplicate=False)) for x in rows]

    def _logits(self, plan: StepPlan) -> list[bytes]:
        return self._owner_logits(self.wc, list(plan.blocks), False)

    def _validation_logits(self) -> list[bytes]:
        return self._owner_logits(self.wval, list(range(len(self.data.val_rows))), True)

    def _server_ahat(self, plan: StepPlan, wc: list[SealCT]) -> list[SealCT]:
        assert self.poly is not None and self._mask is not None
        be = self.be
        rows = [self._x(b) for b in plan.blocks]
        if self.pool is not None:
            zs = self.pool.diag_abt(be, self.layout, rows, wc, duplicate=True)
        else:
            rotated = rotate_weights(be, self.layout, wc)
            zs = [diag_abt(be, self.layout, x, rotated, duplicate=True) for x in rows]
        out = []
        for b, z in zip(plan.blocks, zs, strict=True):
            phat = he_softmax(be, z, self.poly, self._mask, class_steps(self.layout))
            yhat = be.mul_plain(be.deserialize(self.data.train_y[b]), 1.0, phat.f)
            out.append(be.sub(phat, yhat))
        return out

    def _refresh(self, plan: StepPlan) -> list[bytes]:
        be = self.be
        wc = [be.deserialize(c) for c in self.wc]
        if self.params.mode is SoftmaxMode.SERVER:
            ahat = self._server_ahat(plan, wc)
        else:
            ahat = [be.deserialize(c) for c in self.ahat]
        eta = nesterov_eta(self.step, self.params.nesterov)
        coef = -self.params.lr * (1.0 - eta) / self._batch_rows(plan) / self.params.logit_scale
        rows = [self._x(b) for b in plan.blocks]
        if self.pool is not None:
            grads = self.pool.diag_atb(be, self.layout, ahat, rows, coef, paired=self._paired)
        else:
            grads = diag_atb(be, self.layout, ahat, rows, coef, paired=self._paired)
        out = []
        for f, g in enumerate(grads):
            re_wc = be.add(wc[f], be.conj(wc[f]))  # 2 Re(Wc) = 2 v, tiled like W
            acc = be.add(be.mul_plain(re_wc, (1.0 - eta) / 2.0, g.f), g)
            if eta != 0.0:
                acc = be.add(acc, be.mul_plain(be.deserialize(self.wprev[f]), eta, g.f))
            out.append(be.serialize(acc))
        return out

    def apply(self, reply: OwnerReply) -> None:
        """Check ``reply`` against the pending request and advance; ProtocolError if wrong."""
        if self.phase is Phase.FINISHED:
            if reply.seq != self.seq or reply.kind != RequestKind.FINISHED:
                raise ProtocolError("training is finished; only the FINISHED ack is accepted")
            return
        if reply.seq != self.seq:
            raise ProtocolError(f"reply to {reply.seq}, pending request is {self.seq}")
        if reply.kind != RequestKind(self.phase.value):
            raise ProtocolError(f"reply of kind {reply.kind}, pending request is {self.phase}")
        t0 = time.thread_time()
        plan = self._plan()
        kappa = self.layout.kappa
        if self.phase is Phase.VALIDATE:
            self._expect(reply, 0)
            stat = self._stat(self.epochs_run, True)
            self.epochs_run += 1
            if reply.stop or self.epochs_run >= self.params.max_epochs:
                self._finish(reply.stop)
            else:
                self.phase = self._step_phase()
        elif self.phase is Phase.SOFTMAX:
            self._expect(reply, len(plan.blocks))
            stat = self._stat(plan.epoch, False)
            self.ahat = list(reply.ciphertexts)
            self.phase = Phase.REFRESH
        else:
            self._expect(reply, (3 if plan.last_in_epoch else 2) * kappa)
            stat = self._stat(plan.epoch, False)
            cts = list(reply.ciphertexts)
            self.wc, self.wprev = cts[:kappa], cts[kappa : 2 * kappa]
            self.wval = cts[2 * kappa :]
            self.ahat = []
            self.step += 1
            self.phase = Phase.VALIDATE if plan.last_in_epoch else self._step_phase()
        stat.bytes_up += sum(len(c) for c in reply.ciphertexts)
        stat.server_cpu_s += time.thread_time() - t0
        self.seq += 1
        self._request = None

    def _expect(self, reply: OwnerReply, count: int) -> None:
        if len(reply.ciphertexts) != count:
            raise ProtocolError(f"{len(reply.ciphertexts)} ciphertexts, expected {count}")
        for blob in reply.ciphertexts:
            try:
                self._fresh(blob)
            except ProtocolError:
                raise
            except ValueError as exc:
                raise ProtocolError(f"bad ciphertext in the reply: {exc}") from None

    def _finish(self, stopped_early: bool) -> None:
        self.phase = Phase.FINISHED
        self.done = True
        # The stop bit is all the server learns: with patience p, an early stop after
        # epoch e means the best epoch was e - p (0-based); at max_epochs it is unknown.
        best = self.epochs_run - 1 - self.params.patience
        self.best_epoch = best if stopped_early and best >= 0 else None

    # -- state -------------------------------------------------------------------------
    def to_state(self) -> bytes:
        """Everything needed to resume (ciphertext bytes + JSON; no pickle)."""
        meta = {
            "params": self.params.to_json(), "seq": self.seq, "step": self.step,
            "phase": self.phase.value, "epochs_run": self.epochs_run, "done": self.done,
            "best_epoch": self.best_epoch,
            "stats": [asdict(s) for s in self.stats],
            "val_stats": [asdict(s) for s in self.val_stats],
        }  # fmt: skip
        groups = {"wc": self.wc, "wprev": self.wprev, "wval": self.wval, "ahat": self.ahat}
        return blobs.pack(STATE_MAGIC, meta, groups)

    def _restore(self, state: bytes) -> None:
        try:
            meta, groups = blobs.unpack(STATE_MAGIC, state, MAX_STATE_BYTES)
            if meta["params"] != self.params.to_json():
                raise ProtocolError("the saved state belongs to other transfer params")
            self.seq, self.step = int(meta["seq"]), int(meta["step"])
            self.phase = Phase(meta["phase"])
            self.epochs_run, self.done = int(meta["epochs_run"]), bool(meta["done"])
            best = meta["best_epoch"]
            self.best_epoch = None if best is None else int(best)
            self.stats = [_stat_from(s) for s in meta["stats"]]
            self.val_stats = [_stat_from(s) for s in meta["val_stats"]]
            self.wc, self.wprev = groups["wc"], groups["wprev"]
            self.wval, self.ahat = groups["wval"], groups["ahat"]
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ProtocolError):
                raise
            raise ProtocolError(f"bad trainer state: {exc}") from None
        kappa = self.layout.kappa
        if len(self.wc) != kappa or len(self.wprev) != kappa:
            raise ProtocolError("bad trainer state: weight ciphertexts")


def _stat_from(raw: Any) -> StepStats:
    return StepStats(
        step=int(raw["step"]), epoch=int(raw["epoch"]),
        server_cpu_s=float(raw["server_cpu_s"]), client_cpu_s=float(raw["client_cpu_s"]),
        bytes_down=int(raw["bytes_down"]), bytes_up=int(raw["bytes_up"]),
        ops={str(k): int(v) for k, v in raw["ops"].items()},
    )  # fmt: skip
