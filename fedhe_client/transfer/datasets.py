"""Built-in transfer tasks (features + labels as numpy) and features of a site's own data.

``digits``: scikit-learn's digits, raw 64 pixels, the prototype's stratified split (20 %
test, then 25 % of the rest for validation). ``digits-transfer``: the project's CNN
pre-trained on classes 0-4, features of classes 5-9 relabelled 0-4. ``random-projection-768``:
digits through a fixed random 768-unit tanh layer (for the 768-d timing run).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedhe_client.transfer.extractors import FeatureExtractor
from fedhe_common.config.models import SiteDataSection
from fedhe_common.errors import ConfigError

TEST_FRACTION = 0.2
VAL_FRACTION = 0.25  # of what remains after the test split
PROJECTION_DIM = 768
PROJECTION_SEED = 768


@dataclass(frozen=True)
class TransferSplits:
    """Features (n, d) float32 and labels (n,) int64 of train, validation and test."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int

    def __post_init__(self) -> None:
        for x, y in ((self.x_train, self.y_train), (self.x_val, self.y_val),
                     (self.x_test, self.y_test)):
            if x.ndim != 2 or y.ndim != 1 or len(x) != len(y) or x.shape[1] != self.dim:
                raise ValueError("each split needs (n, d) features and n labels of one d")

    @property
    def dim(self) -> int:
        """Features per sample."""
        return int(self.x_train.shape[1])


def stratified_split(
    x: np.ndarray, y: np.ndarray, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The prototype's split: (x_train, y_train, x_val, y_val, x_test, y_test)."""
    from sklearn.model_selection import train_test_split

    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, stratify=y, random_state=seed
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=VAL_FRACTION, stratify=y_rest, random_state=seed
    )
    return x_train, y_train, x_val, y_val, x_test, y_test


def _splits(name: str, x: np.ndarray, y: np.ndarray, seed: int) -> TransferSplits:
    parts = stratified_split(x.astype(np.float32), y.astype(np.int64), seed)
    return TransferSplits(name, *parts, classes=int(y.max()) + 1)


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as (n, 1, 8, 8) float32 in [0, 1] and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32)[:, None], digits.target.astype(np.int64)


def digits(seed: int = 0) -> TransferSplits:
    """Raw pixels (0..16, as the prototype), 10 classes."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return _splits("digits", x, y, seed)


def target_images() -> tuple[np.ndarray, np.ndarray]:
    """Images of the target classes 5-9, labels remapped to 0-4."""
    from fedhe_client.transfer.pretrained import TARGET_CLASSES

    x, y = digits_images()
    keep = np.isin(y, TARGET_CLASSES)
    return x[keep], y[keep] - min(TARGET_CLASSES)


def digits_transfer(seed: int = 0, extractor: FeatureExtractor | None = None) -> TransferSplits:
    """Features of classes 5-9 from the CNN pre-trained on 0-4 (or ``extractor``)."""
    if extractor is None:
        from fedhe_client.transfer.extractors import load_extractor

        extractor = load_extractor("builtin", "digits-cnn")
    x, y = target_images()
    return _splits("digits-transfer", extractor.extract(x), y, seed)


def random_projection(seed: int = 0, dim: int = PROJECTION_DIM) -> TransferSplits:
    """Digits (standardised) through a fixed random tanh layer of ``dim`` units, 10 classes."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    z = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    rng = np.random.default_rng(PROJECTION_SEED)
    w = rng.standard_normal((x.shape[1], dim)) / np.sqrt(x.shape[1])
    b = rng.uniform(-1.0, 1.0, dim)
    return _splits(f"random-projection-{dim}", np.tanh(z @ w + b), y, seed)


TRANSFER_TASKS: dict[str, Callable[[int], TransferSplits]] = {
    "digits": digits,
    "digits-transfer": digits_transfer,
    "random-projection-768": random_projection,
}


def load_transfer_task(name: str, seed: int = 0) -> TransferSplits:
    """A built-in transfer task by name (see ``TRANSFER_TASKS``)."""
    try:
        build = TRANSFER_TASKS[name]
    except KeyError:
        choices = ", ".join(TRANSFER_TASKS)
        raise ConfigError(f"unknown transfer task {name!r}; choose one of {choices}") from None
    return build(seed)


def site_features(
    section: SiteDataSection,
    extractor: FeatureExtractor,
    test_fraction: float = TEST_FRACTION,
    progress: Callable[[int, int], None] | None = None,
) -> TransferSplits:
    """Features of this site's own data (``data:`` in the client config).

    Train and validation come from the site-data loader; the test split is
    ``test_fraction`` of the training part (seeded by the section's ``split_seed``).
    """
    from fedhe_client.tasks.sitedata import load_site_data

    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in [0, 1), got {test_fraction}")
    train, val, names = load_site_data(section)
    order = np.random.default_rng(section.split_seed).permutation(len(train))
    n_test = round(len(train) * test_fraction)
    if n_test >= len(train):
        raise ConfigError(f"{section.path}: {len(train)} training samples are too few to split")
    test_idx, train_idx = order[:n_test], order[n_test:]
    x = extractor.extract(np.concatenate([train.x, val.x]), progress)
    n_train_all = len(train)
    x_tr_all, x_val = x[:n_train_all], x[n_train_all:]
    classes = len(names) if names else int(max(train.y.max(), val.y.max())) + 1
    return TransferSplits(
        str(section.path),
        x_tr_all[train_idx], train.y[train_idx], x_val, val.y,
        x_tr_all[test_idx], train.y[test_idx], classes,
    )
