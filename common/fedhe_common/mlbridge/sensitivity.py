"""FedML-HE privacy-sensitivity maps (client side, needs torch).

For soft-label cross-entropy the loss is linear in the label, so the paper's
second derivative has a closed form (docs/privacy.md)::

    S_m = mean_k sum_c | d/dy_kc (d loss/d w_m) | = mean_k sum_c | d log p_c(x_k) / d w_m |

* ``exact``: that definition, with ``vmap(jacrev(log_softmax . f))`` over sample
  chunks (memory: chunk x classes x parameters floats) for every layer except a
  final ``nn.Linear``, which uses its closed form
  ``S_W[j,i] = mean_k (1 + (C-2) p_j) |h_i|``, ``S_b[j] = mean_k (1 + (C-2) p_j)``.
* ``trueclass``: only the true class, ``mean_k |d log p_{y_k} / d w|`` (= the mean
  per-sample gradient magnitude); ~1-3 epochs of cost, for large heads.
* ``random``: seeded uniform scores (for random masks of the same size).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

from fedhe_common.mlbridge.flatten import build_manifest

Method = Literal["exact", "trueclass", "random"]
MAX_CHUNK_FLOATS = 64 * 1024 * 1024  # ~256 MB of float32 per Jacobian chunk


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear] | None:
    modules = [(n, m) for n, m in model.named_modules() if len(list(m.children())) == 0]
    if modules and isinstance(modules[-1][1], nn.Linear):
        return modules[-1][0], modules[-1][1]  # type: ignore[return-value]
    return None


def _chunk_size(classes: int, params: int) -> int:
    return max(1, min(64, MAX_CHUNK_FLOATS // max(1, classes * params)))


def sensitivity_map(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    method: Method = "exact",
    seed: int = 0,
) -> np.ndarray:
    """Per-parameter sensitivity as a flat vector in the model's layout order."""
    manifest = build_manifest(model.state_dict())
    if method == "random":
        return np.random.default_rng(seed).random(manifest.total)
    model = model.train(False)  # evaluation mode
    params = {k: v.detach() for k, v in model.named_parameters()}
    if method == "trueclass":
        if y is None:
            raise ValueError("trueclass sensitivity needs labels")
        scores = _trueclass(model, params, x, y)
    else:
        scores = _exact(model, params, x)
    vector = np.zeros(manifest.total, dtype=np.float64)
    for e in manifest.entries:  # buffers (e.g. BatchNorm statistics) keep sensitivity 0
        if e.name in scores:
            score = scores[e.name].reshape(-1).double().cpu()  # from the training device
            vector[e.offset : e.offset + e.length] = score.numpy()
    return vector


def _logp_fn(model: nn.Module) -> Callable[..., torch.Tensor]:
    def logp(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0), -1)

    return logp


def _exact(
    model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor
) -> dict[str, torch.Tensor]:
    head = _last_linear(model)
    head_names = {f"{head[0]}.weight", f"{head[0]}.bias"} if head else set()
    body = {k: v for k, v in params.items() if k not in head_names}
    fixed = {k: v for k, v in params.items() if k in head_names}
    logp = _logp_fn(model)

    def body_logp(b: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return logp({**b, **fixed}, xi)

    jac = vmap(jacrev(body_logp), in_dims=(None, 0))
    with torch.no_grad():
        classes = int(model(x[:1]).shape[-1])
    sums = {k: torch.zeros_like(v) for k, v in params.items()}
    step = _chunk_size(classes, sum(v.numel() for v in body.values()))
    for start in range(0, len(x), step):
        xb = x[start : start + step]
        if body:
            for k, j in jac(body, xb).items():
                sums[k] += j.abs().sum(dim=(0, 1))
        if head:
            hw, hb = _head_closed_form(model, head[1], xb, classes)
            sums[f"{head[0]}.weight"] += hw
            if head[1].bias is not None:
                sums[f"{head[0]}.bias"] += hb
    return {k: v / len(x) for k, v in sums.items()}


def _head_closed_form(
    model: nn.Module, head: nn.Linear, xb: torch.Tensor, classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda m, inp, out: captured.append(inp[0].detach()))
    try:
        with torch.no_grad():
            p = F.softmax(model(xb), -1)
    finally:
        hook.remove()
    h = captured[0].reshape(len(xb), -1)
    factor = 1 + (classes - 2) * p  # [B, C]
    return factor.T @ h.abs(), factor.sum(0)


def _trueclass(
    model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    logp = _logp_fn(model)
    with torch.no_grad():
        classes = int(model(x[:1]).shape[-1])
    onehot = F.one_hot(y, classes).to(x.dtype)

    def picked(p: dict[str, torch.Tensor], xi: torch.Tensor, oh: torch.Tensor) -> torch.Tensor:
        return (logp(p, xi) * oh).sum()

    per_sample = vmap(grad(picked), in_dims=(None, 0, 0))
    sums = {k: torch.zeros_like(v) for k, v in params.items()}
    step = _chunk_size(1, sum(v.numel() for v in params.values()))
    for start in range(0, len(x), step):
        for k, g in per_sample(
            params, x[start : start + step], onehot[start : start + step]
        ).items():
            sums[k] += g.abs().sum(0)
    return {k: v / len(x) for k, v in sums.items()}
