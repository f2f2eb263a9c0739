"""The project's pre-trained extractor for the built-in transfer task ``digits-transfer``.

A small CNN pre-trained on scikit-learn digits of classes 0-4 (the public source task);
its 63-d penultimate layer (63 features + the bias column fill one 64-column HETAL block)
is the frozen extractor for classes 5-9 (the private target task). The weights ship as
``digits_cnn.safetensors`` (150 KB, no pickle) so every machine extracts the same
features: re-training at first use would not (CPU training is not bit-exact from run to
run, measured). ``python -m fedhe_client.transfer.pretrained --rebuild`` re-runs the
recipe (about 10 CPU-s) and gives an equivalent extractor.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

FEATURE_DIM = 63
SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
IMAGE_SHAPE = (1, 8, 8)
WEIGHTS = Path(__file__).with_name("digits_cnn.safetensors")


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions, max-pool, a 63-unit ReLU layer (``features``), a 5-class head."""

    def __init__(self, dim: int = FEATURE_DIM, classes: int = len(SOURCE_CLASSES)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Source-task logits of (N, 1, 8, 8) images in [0, 1]."""
        return self.head(self.features(x))  # type: ignore[no-any-return]


def load_digits_cnn(path: Path = WEIGHTS) -> DigitsCNN:
    """The pre-trained CNN (eval mode, frozen) from a safetensors file."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: pre-trained weights missing; run "
            "`python -m fedhe_client.transfer.pretrained --rebuild`"
        )
    model = DigitsCNN()
    model.load_state_dict(load_file(str(path)))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def random_digits_cnn(seed: int = 0) -> DigitsCNN:
    """The same architecture with random (untrained) weights: the no-transfer baseline."""
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = DigitsCNN()
    finally:
        torch.random.set_rng_state(gen_state)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
