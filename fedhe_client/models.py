"""Model registry (kept for imports): the zoo in :mod:`fedhe_client.zoo`."""

from __future__ import annotations

from fedhe_client.zoo import MODELS, ZOO, build_model, zoo_model
from fedhe_client.zoo.small import cnn, lenet, lenet_dlg, linear, mlp

__all__ = [
    "MODELS",
    "ZOO",
    "build_model",
    "cnn",
    "lenet",
    "lenet_dlg",
    "linear",
    "mlp",
    "zoo_model",
]
