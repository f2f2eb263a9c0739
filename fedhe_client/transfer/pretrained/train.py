"""Pre-training of the digits CNN on classes 0-4: SimCLR-style contrastive loss + labels.

Plain supervised training on five classes collapses the penultimate layer onto those
classes (its 63 features classified digits 5-9 worse than random-init features: measured,
5-fold logistic regression 94.9 % vs 95.7 %); adding an instance-contrastive loss over augmented
views (shift by one pixel, contrast jitter, noise) keeps them general.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedhe_client.transfer.pretrained import SOURCE_CLASSES, WEIGHTS, DigitsCNN

EPOCHS = 60
BATCH = 128
TAU = 0.2


def source_images() -> tuple[torch.Tensor, torch.Tensor]:
    """Digits of the source classes as (N, 1, 8, 8) float32 in [0, 1], with labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = np.isin(digits.target, SOURCE_CLASSES)
    x = (digits.images[keep] / 16.0).astype(np.float32)[:, None]
    return torch.from_numpy(x), torch.from_numpy(digits.target[keep].astype(np.int64))


def _augment(xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    out = torch.empty_like(xb)
    for i in range(len(xb)):
        dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
        out[i] = torch.roll(xb[i], shifts=(dy, dx), dims=(1, 2))
    gain = 0.8 + 0.4 * torch.rand(len(xb), 1, 1, 1, generator=gen)
    return out * gain + 0.1 * torch.randn(out.shape, generator=gen)


def pretrain(seed: int = 0, epochs: int = EPOCHS) -> DigitsCNN:
    """Train a fresh CNN on the source task (seeded; see ``rebuild`` on bit-exactness)."""
    torch.manual_seed(seed)
    model = DigitsCNN()
    proj = nn.Sequential(nn.Linear(model.head.in_features, 64), nn.ReLU(), nn.Linear(64, 32))
    params = [*model.parameters(), *proj.parameters()]
    opt = torch.optim.Adam(params, lr=2e-3, weight_decay=1e-4)
    x, y = source_images()
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), BATCH):
            idx = order[start : start + BATCH]
            z1, z2 = model.features(_augment(x[idx], gen)), model.features(_augment(x[idx], gen))
            p = nn.functional.normalize(proj(torch.cat([z1, z2])), dim=1)
            sim = (p @ p.T / TAU).fill_diagonal_(-1e9)
            n = len(idx)
            pair = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
            loss = nn.functional.cross_entropy(sim, pair)
            loss = loss + nn.functional.cross_entropy(model.head(z1), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model


def rebuild(path: Path = WEIGHTS, seed: int = 0) -> Path:
    """Pre-train and write the weights (safetensors) to ``path``.

    The recipe is fixed, the bytes are not: two runs in one environment gave different
    weights about one time in two (float rounding in CPU kernels, amplified by 60 epochs;
    single thread, deterministic algorithms, no oneDNN and MKL_CBWR did not stop it). So
    the weights ship, and a rebuild gives an equivalent extractor, not the same bytes.
    """
    from safetensors.torch import save_file

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: one thread is fastest (10 CPU-s, not 80)
    try:
        model = pretrain(seed)
    finally:
        torch.set_num_threads(threads)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"source_classes": "0-4", "seed": str(seed)})
    return path
