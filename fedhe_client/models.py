"""Model registry: models are chosen by name in the job YAML, never by import path."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def mlp(in_shape: tuple[int, int, int], classes: int, hidden: int) -> nn.Module:
    """Two-layer perceptron."""
    c, h, w = in_shape
    return nn.Sequential(
        nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, classes)
    )


def lenet(in_shape: tuple[int, int, int], classes: int, hidden: int) -> nn.Module:
    """The LeNet of the DLG paper (sigmoid, strided convolutions), for any H, W divisible by 4."""
    c, h, w = in_shape
    return nn.Sequential(
        nn.Conv2d(c, 12, 5, padding=2, stride=2),
        nn.Sigmoid(),
        nn.Conv2d(12, 12, 5, padding=2, stride=2),
        nn.Sigmoid(),
        nn.Conv2d(12, 12, 5, padding=2, stride=1),
        nn.Sigmoid(),
        nn.Flatten(),
        nn.Linear(12 * (h // 4) * (w // 4), classes),
    )


def cnn(in_shape: tuple[int, int, int], classes: int, hidden: int) -> nn.Module:
    """The FedML-HE paper's CNN: 2 conv + 2 FC (1,663,370 parameters at 1x28x28, 10 classes)."""
    c, h, w = in_shape
    return nn.Sequential(
        nn.Conv2d(c, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (h // 4) * (w // 4), 512),
        nn.ReLU(),
        nn.Linear(512, classes),
    )


MODELS: dict[str, Callable[[tuple[int, int, int], int, int], nn.Module]] = {
    "mlp": mlp,
    "lenet": lenet,
    "cnn": cnn,
}


def build_model(
    name: str,
    in_shape: tuple[int, int, int],
    classes: int,
    hidden: int = 64,
    init: str = "default",
) -> nn.Module:
    """Instantiate a registered model; ``init="dlg"`` draws every weight from U(-0.5, 0.5)."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None
    model = factory(in_shape, classes, hidden)
    if init == "dlg":
        with torch.no_grad():
            for p in model.parameters():
                p.uniform_(-0.5, 0.5)
    return model
