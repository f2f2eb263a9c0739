"""Sensitivity maps against a naive per-sample, per-class autograd loop."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedhe_common.mlbridge.flatten import flatten
from fedhe_common.mlbridge.sensitivity import sensitivity_map


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.Sigmoid(),
        nn.Flatten(),
        nn.Linear(3 * 6 * 6, 8),
        nn.Tanh(),
        nn.Linear(8, 5),
    )


def _naive(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> np.ndarray:
    """Literal definition: autograd of log p_c per sample and class, |.| summed."""
    params = list(model.parameters())
    total = None
    for k in range(len(x)):
        logp = F.log_softmax(model(x[k : k + 1]), -1)[0]
        classes = range(logp.numel()) if y is None else [int(y[k])]
        for c in classes:
            grads = torch.autograd.grad(logp[c], params, retain_graph=True)
            flat = torch.cat([g.reshape(-1) for g in grads]).abs()
            total = flat if total is None else total + flat
    assert total is not None
    return (total / len(x)).double().numpy()


def test_exact_map_matches_naive_loop() -> None:
    model = _model()
    x = torch.rand(12, 1, 6, 6)
    got = sensitivity_map(model, x, method="exact")
    vec, _ = flatten(model.state_dict())
    assert got.shape == vec.shape
    assert np.abs(got - _naive(model, x, None)).max() < 1e-4


def test_trueclass_map_matches_naive_loop_and_mean_grad_magnitude() -> None:
    model = _model()
    x, y = torch.rand(10, 1, 6, 6), torch.randint(0, 5, (10,))
    got = sensitivity_map(model, x, y, method="trueclass")
    assert np.abs(got - _naive(model, x, y)).max() < 1e-4


def test_random_map_is_seeded() -> None:
    model = _model()
    a = sensitivity_map(model, torch.rand(2, 1, 6, 6), method="random", seed=3)
    b = sensitivity_map(model, torch.rand(2, 1, 6, 6), method="random", seed=3)
    assert np.array_equal(a, b)
