"""The data owner's feature preprocessing (fitted on the training split only).

Standardise, clip to +-clip, drop zero-variance columns, prepend a bias column, scale each
row to unit L2 norm (so |z_r| <= ||w_r||, which bounds the logits of ``mode: server``), then
pad with zero columns to the job's feature count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]
BIAS = 2.0


@dataclass(frozen=True)
class Preprocessor:
    """Fitted preprocessing: kept columns, their mean and std, clip, output width."""

    keep: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    clip: float
    out_features: int

    @classmethod
    def fit(
        cls, train_x: Array, clip: float = 3.0, out_features: int | None = None
    ) -> Preprocessor:
        """Fit on the owner's training features; ``out_features`` defaults to kept + 1."""
        x = np.asarray(train_x, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError("training features must be a matrix with >= 2 rows")
        if not np.all(np.isfinite(x)):
            raise ValueError("training features contain NaN or inf")
        std = x.std(axis=0)
        keep = np.flatnonzero(std > 1e-12)
        width = len(keep) + 1
        out = width if out_features is None else out_features
        if out < width:
            raise ValueError(f"{width} features after preprocessing exceed the job's {out}")
        return cls(
            tuple(int(k) for k in keep),
            tuple(float(v) for v in x.mean(axis=0)[keep]),
            tuple(float(v) for v in std[keep]),
            float(clip),
            int(out),
        )

    @property
    def raw_features(self) -> int:
        """Width of the raw features this was fitted on (at least)."""
        return (max(self.keep) + 1) if self.keep else 0

    def transform(self, x: Array) -> Array:
        """Raw features (n x raw) -> unit-norm rows (n x out_features), bias in column 0."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] < self.raw_features:
            raise ValueError(f"features need >= {self.raw_features} columns")
        z = (x[:, list(self.keep)] - np.asarray(self.mean)) / np.asarray(self.std)
        z = np.clip(np.nan_to_num(z), -self.clip, self.clip)
        out = np.zeros((len(x), self.out_features))
        out[:, 0] = BIAS
        out[:, 1 : 1 + len(self.keep)] = z
        return np.asarray(out / np.linalg.norm(out, axis=1, keepdims=True), dtype=np.float64)

    def to_json(self) -> str:
        """JSON form (kept with the trained head)."""
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> Preprocessor:
        """Inverse of ``to_json``."""
        raw = json.loads(text)
        return cls(
            tuple(raw["keep"]),
            tuple(raw["mean"]),
            tuple(raw["std"]),
            float(raw["clip"]),
            int(raw["out_features"]),
        )
