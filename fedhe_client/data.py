"""Data sets (scikit-learn's digits built in, or a user .npz) and client partitions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fedhe_common.config.models import DataSection
from fedhe_common.errors import ConfigError


@dataclass(frozen=True)
class Dataset:
    """Images as float32 NCHW in [0, 1] and integer labels, split into train and test."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width)."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> Dataset:
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = max(1, round(len(y) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return Dataset(x[train], y[train], x[test], y[test], int(y.max()) + 1)


def load_dataset(section: DataSection, seed: int) -> Dataset:
    """Load the job's data set and split it deterministically (same on every client)."""
    if section.dataset in ("digits", "digits28", "digits32"):
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = (digits.images / 16.0).astype(np.float32)[:, None]
        if section.dataset != "digits":  # digits28 / digits32: bilinear upsampling
            size = int(section.dataset.removeprefix("digits"))
            x = F.interpolate(
                torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False
            ).numpy()
        y = digits.target.astype(np.int64)
    else:
        try:
            # WARNING: never allow_pickle on files that may come from elsewhere.
            with np.load(str(section.path), allow_pickle=False) as npz:
                x, y = npz["x"].astype(np.float32), npz["y"].astype(np.int64)
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(
                f"{section.path}: need arrays 'x' (N,C,H,W or N,H,W) and 'y': {exc}"
            ) from None
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or len(x) != len(y):
            raise ConfigError(f"{section.path}: x must be N,C,H,W (or N,H,W) and match y")
    return _split(x, y, section.test_fraction, seed)


def partition(
    data: Dataset,
    section: DataSection,
    index: int,
    count: int,
    seed: int,
    num_samples: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """This client's share of the training set (IID or Dirichlet over labels)."""
    rng = np.random.default_rng(seed + 1)
    y = data.y_train
    if section.partition == "iid":
        parts = np.array_split(rng.permutation(len(y)), count)
    else:
        buckets: list[list[int]] = [[] for _ in range(count)]
        for label in range(data.classes):
            idx = rng.permutation(np.flatnonzero(y == label))
            shares = rng.dirichlet([section.dirichlet_alpha] * count)
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for b, part in enumerate(np.split(idx, cuts)):
                buckets[b].extend(part.tolist())
        parts = [np.array(sorted(b), dtype=np.int64) for b in buckets]
    mine = parts[index]
    if num_samples is not None:
        if num_samples > len(mine):
            raise ConfigError(f"partition has {len(mine)} samples, num_samples asks {num_samples}")
        mine = mine[:num_samples]
    if len(mine) == 0:
        raise ConfigError(f"partition {index} of {count} is empty")
    return data.x_train[mine], y[mine]
