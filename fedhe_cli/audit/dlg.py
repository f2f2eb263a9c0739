"""The DLG gradient-inversion attack (Zhu et al. 2019) against partly encrypted gradients.

Two attacker models:

* ``mask-aware``: the mask is public configuration, so the attacker matches only
  the gradient entries it can see (the realistic threat model).
* ``zero-fill``: matches the full gradient with encrypted entries replaced by 0
  (a mis-specified attacker; masks look much stronger against it).

The optimiser is L-BFGS with strong-Wolfe line search (without line search DLG
fails often even on unprotected gradients, which overstates protection).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Attacker = Literal["mask-aware", "zero-fill"]


@dataclass(frozen=True)
class AttackResult:
    """Best reconstruction of one attack (lowest gradient-matching loss)."""

    image: torch.Tensor
    label: int
    loss: float


def victim_gradient(model: nn.Module, x: torch.Tensor, label: int) -> list[torch.Tensor]:
    """The single-sample gradient a client would upload (cross-entropy, true label)."""
    loss = F.cross_entropy(model(x), torch.tensor([label]))
    return [g.detach() for g in torch.autograd.grad(loss, list(model.parameters()))]


def dlg_attack(
    model: nn.Module,
    target: list[torch.Tensor],
    visible: list[torch.Tensor],
    attacker: Attacker,
    image_shape: tuple[int, ...],
    classes: int,
    seed: int,
    steps: int = 25,
    max_iter: int = 20,
) -> AttackResult:
    """Reconstruct an input and label from the visible part of ``target``."""
    params = list(model.parameters())
    if attacker == "mask-aware":
        weights, goal = visible, target
    else:
        weights = [torch.ones_like(v) for v in visible]
        goal = [t * v for t, v in zip(target, visible, strict=True)]
    gen = torch.Generator().manual_seed(seed)
    dummy_x = torch.randn((1, *image_shape), generator=gen).requires_grad_(True)
    dummy_y = torch.randn((1, classes), generator=gen).requires_grad_(True)
    opt = torch.optim.LBFGS(
        [dummy_x, dummy_y],
        lr=1.0,
        max_iter=max_iter,
        history_size=100,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        soft = F.softmax(dummy_y, dim=-1)
        loss = torch.sum(-soft * F.log_softmax(model(dummy_x), dim=-1))
        grads = torch.autograd.grad(loss, params, create_graph=True)
        diff = sum(((g - t) ** 2 * w).sum() for g, t, w in zip(grads, goal, weights, strict=True))
        diff.backward()  # type: ignore[union-attr]
        return diff  # type: ignore[return-value]

    # Stop early only on a near-exact match relative to what is visible (tiny visible
    # gradients must not end the attack at once).
    tolerance = 1e-10 * float(sum((t**2 * w).sum() for t, w in zip(goal, weights, strict=True)))
    best = AttackResult(dummy_x.detach().clone(), int(dummy_y.argmax()), math.inf)
    for _ in range(steps):
        try:
            opt.step(closure)
        except RuntimeError:
            break
        current = float(closure().detach())
        if not math.isfinite(current):
            break
        if current < best.loss:
            best = AttackResult(dummy_x.detach().clone(), int(dummy_y.detach().argmax()), current)
        if current < tolerance:
            break
    return best
