"""In-process HETAL run: the data owner and the server's trainer in one process.

Messages go through the protocol dataclasses exactly as the services send them
(``OwnerRequest`` / ``OwnerReply`` / ``EncryptedDataset``), bytes are counted both ways
and CPU is split per side (thread CPU time around each side's calls). Used by
``fedhe simulate`` on a transfer job and by ``fedhe bench hetal``.
"""

from __future__ import annotations

import dataclasses
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from fedhe_client.transfer.owner import DataOwner
from fedhe_client.transfer.preprocess import Preprocessor
from fedhe_common.config.models import JobConfig
from fedhe_common.hetal.params import TransferParams
from fedhe_common.hetal.plain import accuracy, train_plain
from fedhe_common.hetal.protocol import EncryptedDataset, RequestKind, StepStats
from fedhe_common.hetal.trainer import TransferTrainer

Progress = Callable[[str], None]


class Splits(Protocol):
    """Raw features (extractor output) and labels of the owner's three splits."""

    @property
    def train_x(self) -> NDArray[np.float64]: ...
    @property
    def train_y(self) -> NDArray[np.int64]: ...
    @property
    def val_x(self) -> NDArray[np.float64]: ...
    @property
    def val_y(self) -> NDArray[np.int64]: ...
    @property
    def test_x(self) -> NDArray[np.float64]: ...
    @property
    def test_y(self) -> NDArray[np.int64]: ...


@dataclass
class TransferResult:
    """What one in-process run measured."""

    params: TransferParams
    n_train: int
    epochs_run: int
    steps_run: int
    best_epoch: int
    acc_he: float
    acc_plain_same_algo: float
    acc_sklearn: float | None
    max_abs_w_diff: float
    steps: list[StepStats] = field(default_factory=list)
    validations: list[StepStats] = field(default_factory=list)
    setup_s: dict[str, float] = field(default_factory=dict)
    bytes_setup: dict[str, int] = field(default_factory=dict)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0

    def per_step(self, name: str) -> float:
        """Mean of a StepStats field over the training steps (validation excluded)."""
        if not self.steps:
            return 0.0
        return float(np.mean([getattr(s, name) for s in self.steps]))


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def dataset_bytes(d: EncryptedDataset) -> int:
    """Bytes of the one-time upload."""
    return sum(len(c) for group in (d.train_x, d.train_y, d.val_x, d.initial) for c in group)


def sklearn_accuracy(splits: Splits, prep: Preprocessor) -> float | None:
    """Plain logistic regression (lbfgs, C = 1) on the same preprocessed features."""
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:  # pragma: no cover - sklearn is a dev dependency
        return None
    model = LogisticRegression(max_iter=5000).fit(prep.transform(splits.train_x), splits.train_y)
    return float(model.score(prep.transform(splits.test_x), splits.test_y))


def run_transfer(
    params: TransferParams,
    splits: Splits,
    progress: Progress | None = None,
    max_steps: int | None = None,
    compare: bool = True,
) -> TransferResult:
    """Train ``params`` on ``splits`` encrypted, then the float64 twin and sklearn."""
    say = progress or (lambda _msg: None)
    t0 = time.thread_time()
    owner = DataOwner.create(params, splits.train_x, splits.train_y, splits.val_x, splits.val_y)
    keys = owner.eval_keys()
    t1 = time.thread_time()
    data = owner.encrypt_dataset()
    t2 = time.thread_time()
    trainer = TransferTrainer(params, keys, data)
    say(
        f"keys {len(keys) / 1e6:.1f} MB ({t1 - t0:.1f}s), data set "
        f"{dataset_bytes(data) / 1e6:.1f} MB ({t2 - t1:.1f}s)"
    )
    try:
        steps = _drive(trainer, owner, say, max_steps)
    finally:
        trainer.close()
    head = owner.result()
    prep = owner.prep
    test_x = prep.transform(splits.test_x)
    acc_he = accuracy(head.weights, test_x, splits.test_y)
    epochs = max(1, trainer.epochs_run)
    acc_plain, diff, acc_sk = float("nan"), float("nan"), None
    if compare:
        twin = train_plain(
            params.with_epochs(epochs),
            owner.train_x,
            owner.train_y,
            owner.val_x,
            owner.val_y,
            max_steps=max_steps,
        )
        acc_plain = accuracy(twin.weights, test_x, splits.test_y)
        ref = twin.final_weights if twin.final_weights is not None else twin.weights
        diff = float(np.abs(ref - owner.w).max())
        acc_sk = sklearn_accuracy(splits, prep)
    return TransferResult(
        params=params, n_train=len(splits.train_x), epochs_run=trainer.epochs_run,
        steps_run=steps, best_epoch=head.best_epoch, acc_he=acc_he,
        acc_plain_same_algo=acc_plain, acc_sklearn=acc_sk, max_abs_w_diff=diff,
        steps=list(trainer.stats[:steps]), validations=list(trainer.val_stats),
        setup_s={"keygen_cpu_s": t1 - t0, "encrypt_cpu_s": t2 - t1},
        bytes_setup={"eval_keys": len(keys), "dataset": dataset_bytes(data)},
        val_loss=list(head.val_loss), val_acc=list(head.val_acc), peak_rss_mb=peak_rss_mb(),
    )  # fmt: skip


def _drive(
    trainer: TransferTrainer, owner: DataOwner, say: Progress, max_steps: int | None
) -> int:
    """Answer the trainer's requests until it finishes (or ``max_steps``); steps run."""
    steps = 0
    while True:
        request = trainer.pending()
        if request is None or request.kind == RequestKind.FINISHED:
            break
        if max_steps is not None and steps >= max_steps and request.kind != RequestKind.VALIDATE:
            break
        c0 = time.thread_time()
        reply = owner.answer(request)
        client_s = time.thread_time() - c0
        stats = trainer.val_stats if request.kind == RequestKind.VALIDATE else trainer.stats
        stats[-1].client_cpu_s += client_s
        trainer.apply(reply)
        if request.kind == RequestKind.REFRESH:
            steps += 1
            s = trainer.stats[-1]
            say(
                f"step {s.step} epoch {s.epoch}: server {s.server_cpu_s:.2f}s "
                f"client {s.client_cpu_s:.2f}s down {s.bytes_down / 1e6:.2f} MB "
                f"up {s.bytes_up / 1e6:.2f} MB"
            )
        elif request.kind == RequestKind.VALIDATE:
            say(
                f"epoch {request.epoch}: validation loss {owner.val_loss[-1]:.4f} "
                f"acc {owner.val_acc[-1]:.4f}{' stop' if reply.stop else ''}"
            )
    return steps


def simulate_transfer(
    config: JobConfig, compare: bool = True, say: Progress = print
) -> TransferResult:
    """``fedhe simulate`` on a transfer job: a built-in task, owner and trainer in process."""
    from fedhe_cli.bench.hetal_bench import load_task
    from fedhe_common.errors import ConfigError

    section = config.transfer
    if section is None:
        raise ConfigError("not a transfer job (no transfer section)")
    if section.dataset == "site":
        raise ConfigError("fedhe simulate runs built-in transfer tasks (digits, digits-transfer)")
    view, classes = load_task(section.dataset, section.seed)
    if section.max_train_samples is not None:
        n = section.max_train_samples
        view = dataclasses.replace(view, train_x=view.train_x[:n], train_y=view.train_y[:n])
    features = Preprocessor.fit(view.train_x).out_features
    params = TransferParams.from_config(section, features, classes)
    say(
        f"transfer job {config.job.name}: {section.dataset}, mode {params.mode}, "
        f"{len(view.train_x)} train / {len(view.val_x)} val / {len(view.test_x)} test, "
        f"d = {features}, {classes} classes, CKKS N = {params.chain.poly_modulus_degree} "
        f"{list(params.chain.coeff_bits)}"
    )
    res = run_transfer(params, view, progress=say, compare=compare)
    say(
        f"epochs run {res.epochs_run} (best {res.best_epoch}), steps {res.steps_run}; per step "
        f"server {res.per_step('server_cpu_s'):.2f} CPU-s, owner "
        f"{res.per_step('client_cpu_s'):.2f} CPU-s, up {res.per_step('bytes_up') / 1e6:.2f} MB, "
        f"down {res.per_step('bytes_down') / 1e6:.2f} MB"
    )
    say(f"test accuracy HE {res.acc_he:.4f}")
    if compare:
        sk = "-" if res.acc_sklearn is None else f"{res.acc_sklearn:.4f}"
        say(
            f"test accuracy plaintext, same algorithm {res.acc_plain_same_algo:.4f} "
            f"(difference {100 * (res.acc_he - res.acc_plain_same_algo):+.2f} pp); "
            f"sklearn LogisticRegression {sk}"
        )
    return res
