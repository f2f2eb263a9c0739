"""Local training and evaluation with PyTorch (CUDA when available, else CPU)."""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch import nn

from fedhe_common.config.models import TrainingSection

EVAL_BATCH = 1024


def pick_device(preference: str) -> torch.device:
    """``auto`` uses CUDA when present."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    cfg: TrainingSection,
    seed: int,
    device: torch.device,
    progress: bool = True,
    label: str = "train",
) -> float:
    """SGD for ``cfg.local_epochs`` epochs; returns the mean loss of the last epoch."""
    model.to(device).train()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    steps = cfg.local_epochs * -(-len(y) // cfg.batch_size)
    loss_sum, batches = 0.0, 0
    show = progress and sys.stderr.isatty()
    with Progress(disable=not show, transient=True) as bar:
        task = bar.add_task(label, total=steps)
        for _ in range(cfg.local_epochs):
            loss_sum, batches = 0.0, 0
            order = torch.randperm(len(yt), generator=gen)
            for start in range(0, len(yt), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                xb, yb = xt[idx].to(device), yt[idx].to(device)
                opt.zero_grad()
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                opt.step()
                loss_sum += loss.item()
                batches += 1
                bar.advance(task)
    return loss_sum / max(1, batches)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device
) -> dict[str, float]:
    """Accuracy and mean cross-entropy on a labelled set (in batches of ``EVAL_BATCH``)."""
    model.to(device).train(False)  # evaluation mode
    if len(y) <= EVAL_BATCH:  # one batch: the exact figures of earlier versions
        logits = model(torch.from_numpy(x).to(device))
        labels = torch.from_numpy(y).to(device)
        return {
            "accuracy": float((logits.argmax(1) == labels).float().mean()),
            "loss": float(F.cross_entropy(logits, labels)),
        }
    correct, loss_sum = 0, 0.0
    for start in range(0, len(y), EVAL_BATCH):
        logits = model(torch.from_numpy(x[start : start + EVAL_BATCH]).to(device))
        labels = torch.from_numpy(y[start : start + EVAL_BATCH]).to(device)
        correct += int((logits.argmax(1) == labels).sum())
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
    return {"accuracy": correct / len(y), "loss": loss_sum / len(y)}
