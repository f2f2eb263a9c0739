"""Local training and evaluation with PyTorch on the client's device (CUDA or CPU)."""

from __future__ import annotations

import math
import sys
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fedhe_common.config.models import TrainingSection
from fedhe_common.errors import ConfigError

EVAL_BATCH = 1024


def pick_device(preference: str) -> torch.device:
    """``auto`` uses CUDA when present; ``cuda`` without CUDA is a one-line error."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device: cuda, but this torch has no usable CUDA device "
            f"(torch {torch.__version__}); install CUDA torch (make install TORCH=cuda) "
            "or set device: auto"
        )
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def describe_device(device: torch.device) -> str:
    """``cuda (NVIDIA ...)`` or ``cpu`` plus why CUDA is not used, for the client's log."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if torch.version.cuda is None:
        return f"cpu (torch {torch.__version__} is a CPU build: make install TORCH=cuda)"
    return "cpu"


def round_lr(cfg: TrainingSection, number: int, rounds: int) -> float:
    """The learning rate of round ``number`` (1-based) of ``rounds`` under the schedule."""
    step = max(0, number - 1)
    if cfg.lr_schedule == "cosine":
        span = max(1, rounds - 1)
        frac = min(1.0, step / span)
        return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * frac))
    if cfg.lr_schedule == "step":
        return cfg.lr * cfg.lr_gamma ** (step // cfg.lr_step_rounds)
    return cfg.lr


def make_optimizer(model: nn.Module, cfg: TrainingSection, lr: float) -> torch.optim.Optimizer:
    """The job's optimizer (a fresh one each round, as in FedAvg)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _autocast(device: torch.device, amp: bool) -> AbstractContextManager[object]:
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    cfg: TrainingSection,
    seed: int,
    device: torch.device,
    progress: bool = True,
    label: str = "train",
    number: int = 1,
    rounds: int = 1,
) -> float:
    """``cfg.local_epochs`` epochs of round ``number``; returns the last epoch's mean loss.

    Optimizer, learning-rate schedule, gradient clipping, FedProx's proximal term and
    AMP (CUDA only) all come from the job's ``training:`` section.
    """
    model.to(device).train()
    gen = torch.Generator().manual_seed(seed)
    opt = make_optimizer(model, cfg, round_lr(cfg, number, rounds))
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    anchor = (
        [p.detach().clone() for p in model.parameters() if p.requires_grad]
        if cfg.prox_mu > 0
        else None
    )
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    # BatchNorm cannot train on one sample: a trailing batch of 1 is left out there.
    skip_single = len(y) > 1 and any(isinstance(m, _BatchNorm) for m in model.modules())
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
                if skip_single and len(idx) == 1:
                    bar.advance(task)
                    continue
                xb, yb = xt[idx].to(device), yt[idx].to(device)
                opt.zero_grad()
                with _autocast(device, use_amp):
                    loss = F.cross_entropy(model(xb), yb)
                total = loss if anchor is None else loss + _proximal(model, anchor, cfg.prox_mu)
                scaler.scale(total).backward()
                if cfg.clip_grad_norm is not None:
                    scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
                scaler.step(opt)
                scaler.update()
                loss_sum += loss.item()
                batches += 1
                bar.advance(task)
    return loss_sum / max(1, batches)


def _proximal(model: nn.Module, anchor: list[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx: mu / 2 * ||w - w_global||^2 over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    sq = sum(((p.float() - a.float()) ** 2).sum() for p, a in zip(params, anchor, strict=True))
    return 0.5 * mu * torch.as_tensor(sq)


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
