"""The task interface a site implements: its model, its own data, fit and evaluate."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from fedhe_client.trainer import evaluate, train
from fedhe_common.config.models import SiteDataSection, TaskParam, TrainingSection


@dataclass(frozen=True)
class ArrayData:
    """A labelled set in memory: float32 features (N, ...) and int64 labels (N,)."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError("x and y differ in length")

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class FitConfig:
    """What one local fit gets: the job's training section and task params, seed, device."""

    training: TrainingSection
    params: Mapping[str, TaskParam]
    seed: int
    round: int
    device: torch.device
    progress: bool = False
    rounds: int = 1  # the job's rounds (for the learning-rate schedule)


@dataclass(frozen=True)
class TaskSetup:
    """What a task factory gets: the job's params, this site's data section, the job seed."""

    params: Mapping[str, TaskParam]
    data: SiteDataSection | None
    seed: int
    client_id: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    """A site's task. ``name`` must equal the name the job gives (``task.name``)."""

    name: str

    def build_model(self) -> nn.Module:
        """A fresh model (the learner seeds torch first, so every site starts equal)."""
        ...

    def train_data(self) -> Any:
        """This site's training data; ``len()`` of it is the site's FedAvg weight."""
        ...

    def val_data(self) -> Any:
        """This site's validation data."""
        ...

    def fit(self, model: nn.Module, data: Any, hyper: FitConfig) -> dict[str, float]:
        """Train ``model`` in place on ``data``; return metrics (at least ``loss``)."""
        ...

    def evaluate(self, model: nn.Module, data: Any) -> dict[str, float]:
        """Metrics of ``model`` on ``data`` (at least ``accuracy`` and ``loss``)."""
        ...


class ArrayTask:
    """A classification task on in-memory arrays; subclasses give ``name`` and the model."""

    name = "array-task"

    def __init__(self, train: ArrayData, val: ArrayData) -> None:
        self._train, self._val = train, val
        self.device = torch.device("cpu")

    def build_model(self) -> nn.Module:
        """Subclasses return their ``nn.Module``."""
        raise NotImplementedError

    def train_data(self) -> ArrayData:
        """This site's training split."""
        return self._train

    def val_data(self) -> ArrayData:
        """This site's validation split."""
        return self._val

    def fit(self, model: nn.Module, data: ArrayData, hyper: FitConfig) -> dict[str, float]:
        """Mini-batch SGD with the job's training section."""
        self.device = hyper.device
        label = f"round {hyper.round}"
        loss = train(
            model,
            data.x,
            data.y,
            hyper.training,
            hyper.seed,
            hyper.device,
            hyper.progress,
            label,
            number=hyper.round,
            rounds=hyper.rounds,
        )
        return {"loss": loss}

    def evaluate(self, model: nn.Module, data: ArrayData) -> dict[str, float]:
        """Accuracy and cross-entropy."""
        return evaluate(model, data.x, data.y, self.device)

    def sensitivity_batches(self, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``samples`` training examples for the sensitivity map."""
        return torch.from_numpy(self._train.x[:samples]), torch.from_numpy(self._train.y[:samples])
