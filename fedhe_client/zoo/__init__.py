"""The model zoo: models are chosen by name in the job YAML, never by import path.

Small models are plain torch; the large ones (FedML-HE Table 4) are ``transformers``
architectures built from configurations with random weights, so nothing downloads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from fedhe_client.zoo import hf, small

Factory = Callable[[tuple[int, ...], int, int], nn.Module]


@dataclass(frozen=True)
class ZooModel:
    """A registered model: its factory, its input kind and its reference input."""

    name: str
    factory: Factory
    inputs: Literal["image", "tokens"]
    reference_shape: tuple[int, ...]
    reference_classes: int
    summary: str


_IMAGENET = (3, 224, 224)
_DIGITS = (1, 28, 28)
ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel("linear", small.linear, "image", _DIGITS, 10, "logistic regression"),
        ZooModel("mlp", small.mlp, "image", _DIGITS, 10, "2-layer perceptron (model.hidden)"),
        ZooModel("lenet", small.lenet, "image", _DIGITS, 10, "LeNet-5, ReLU + max-pool"),
        ZooModel("lenet-dlg", small.lenet_dlg, "image", (1, 32, 32), 10, "DLG attack LeNet"),
        ZooModel("cnn", small.cnn, "image", _DIGITS, 10, "FedML-HE paper CNN"),
        ZooModel("resnet18", hf.resnet18, "image", _IMAGENET, 1000, "ResNet-18"),
        ZooModel("resnet34", hf.resnet34, "image", _IMAGENET, 1000, "ResNet-34"),
        ZooModel("resnet50", hf.resnet50, "image", _IMAGENET, 1000, "ResNet-50"),
        ZooModel("mobilenetv2", hf.mobilenetv2, "image", _IMAGENET, 1000, "MobileNetV2"),
        ZooModel("vit-base", hf.vit_base, "image", _IMAGENET, 1000, "ViT-B/16"),
        ZooModel("bert-base", hf.bert_base, "tokens", (128,), 2, "BERT-base classifier"),
        ZooModel("gpt-mini", hf.gpt_mini, "tokens", (128,), 2, "small GPT-2 decoder"),
    )
}
MODEL_NAMES = tuple(ZOO)
# Backwards-compatible view: name -> factory.
MODELS: dict[str, Factory] = {name: m.factory for name, m in ZOO.items()}


def zoo_model(name: str) -> ZooModel:
    """The registered model ``name`` (ValueError naming the choices otherwise)."""
    try:
        return ZOO[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(ZOO)}") from None


def build_model(
    name: str,
    in_shape: tuple[int, ...],
    classes: int,
    hidden: int = 64,
    init: str = "default",
) -> nn.Module:
    """Instantiate a registered model; ``init="dlg"`` draws every weight from U(-0.5, 0.5)."""
    model = zoo_model(name).factory(tuple(int(d) for d in in_shape), classes, hidden)
    if init == "dlg":
        with torch.no_grad():
            for p in model.parameters():
                p.uniform_(-0.5, 0.5)
    return model


def reference_model(name: str, device: str = "meta") -> nn.Module:
    """The model at its reference input and classes (on ``meta``: shapes only, no memory)."""
    m = zoo_model(name)
    with torch.device(device):
        return m.factory(m.reference_shape, m.reference_classes, 64)


def count_params(model: nn.Module) -> int:
    """Trainable and frozen parameters (buffers not counted)."""
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "MODELS",
    "MODEL_NAMES",
    "ZOO",
    "ZooModel",
    "build_model",
    "count_params",
    "reference_model",
    "zoo_model",
]
