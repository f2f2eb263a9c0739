"""The plaintext twin: the same training algorithm in float64 with the same batch plan.

Mode client uses the exact softmax; mode server the same polynomial softmax as the
ciphertexts and the owner's per-refresh projection (re-centre, ||w_r|| <= bound). Used for
``acc_plain_same_algo`` and to choose the mode-server approximation (docs/hetal.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from fedhe_common.hetal.params import SoftmaxMode, TransferParams
from fedhe_common.hetal.schedule import (
    EarlyStopping,
    block_assignment,
    epoch_batches,
    nesterov_eta,
)
from fedhe_common.hetal.softmax import PolySoftmax, bound_logits, softmax_exact

Array = NDArray[np.float64]


def cross_entropy(logits: Array, labels: NDArray[np.int64]) -> tuple[float, float]:
    """(mean cross-entropy with the exact softmax, accuracy)."""
    p = softmax_exact(logits)
    loss = float(-np.mean(np.log(p[np.arange(len(labels)), labels] + 1e-12)))
    return loss, float(np.mean(p.argmax(axis=1) == labels))


@dataclass
class PlainResult:
    """Twin output: the best-validation model and per-epoch history."""

    weights: Array
    best_epoch: int
    epochs_run: int
    steps_run: int
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    final_weights: Array | None = None


def softmax_for(params: TransferParams) -> Callable[[Array], Array]:
    """The softmax that the encrypted run of ``params`` computes."""
    if params.mode is SoftmaxMode.CLIENT:
        return softmax_exact
    return PolySoftmax.build(params.softmax, params.classes)


def train_plain(
    params: TransferParams,
    train_x: Array,
    train_y: NDArray[np.int64],
    val_x: Array,
    val_y: NDArray[np.int64],
    softmax: Callable[[Array], Array] | None = None,
    max_steps: int | None = None,
    early_stop: bool = True,
) -> PlainResult:
    """Train like the encrypted run (same blocks, order, Nesterov, refresh, early stopping)."""
    if train_x.shape[1] != params.features or val_x.shape[1] != params.features:
        raise ValueError(f"features must have {params.features} columns (bias included)")
    sm = softmax or softmax_for(params)
    onehot = np.eye(params.classes)[train_y]
    blocks = block_assignment(len(train_x), params.block_rows, params.seed)
    w = np.zeros((params.classes, params.features))
    v = w.copy()
    stopper = EarlyStopping(params.patience, params.max_epochs)
    res = PlainResult(w.copy(), -1, 0, 0)
    step = 0
    for epoch in range(params.max_epochs):
        for batch in epoch_batches(len(blocks), params.blocks_per_batch, params.seed, epoch):
            if max_steps is not None and step >= max_steps:
                res.final_weights = w
                if res.best_epoch < 0:
                    res.weights = w.copy()
                return res
            idx = np.concatenate([blocks[b] for b in batch])
            x = train_x[idx]
            grad = (sm(x @ v.T) - onehot[idx]).T @ x / len(idx)
            eta = nesterov_eta(step, params.nesterov)
            w_new = v - params.lr * grad
            v = (1.0 - eta) * w_new + eta * w
            w = w_new
            if params.mode is SoftmaxMode.SERVER:
                w = bound_logits(w, train_x, params.softmax.bound, params.classes)
                v = bound_logits(v, train_x, params.softmax.bound, params.classes)
            step += 1
            res.steps_run = step
        loss, acc = cross_entropy(val_x @ w.T, val_y)
        res.val_loss.append(loss)
        res.val_acc.append(acc)
        res.epochs_run = epoch + 1
        improved, stop = stopper.update(epoch, loss)
        if improved:
            res.weights, res.best_epoch = w.copy(), epoch
        if stop and early_stop:
            break
    res.final_weights = w
    return res


def accuracy(weights: Array, x: Array, y: NDArray[np.int64]) -> float:
    """Test accuracy of a linear head (argmax of x W^T)."""
    return float(np.mean((x @ weights.T).argmax(axis=1) == y))
