"""Encryption masks: which coordinates are encrypted, agreed from aggregated sensitivity.

A mask is a sorted array of flat-vector indices. Masked coordinates travel
encrypted, packed densely in that (ascending) order; the rest travel as float32.
``mask_id`` is the sha256 of the mask's canonical bytes, so every party can
check that an upload was split with the job's mask.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from fedhe_common.errors import InvalidArgumentError
from fedhe_common.mlbridge.layout import LayoutManifest

_DOMAIN = b"fedhe-mask-v1\x00"


@dataclass(frozen=True)
class EncryptionMask:
    """Sorted encrypted indices of a ``total``-value vector."""

    total: int
    indices: np.ndarray  # uint32 (or uint64 for huge models), ascending, unique

    def __post_init__(self) -> None:
        idx = self.indices
        if idx.ndim != 1 or (idx.size and (idx[0] < 0 or idx[-1] >= self.total)):
            raise InvalidArgumentError("mask indices out of range")
        if idx.size > 1 and not (np.diff(idx.astype(np.int64)) > 0).all():
            raise InvalidArgumentError("mask indices must be strictly ascending")

    @property
    def count(self) -> int:
        """Number of encrypted coordinates."""
        return int(self.indices.size)

    @property
    def ratio(self) -> float:
        """Encrypted fraction."""
        return self.count / self.total if self.total else 0.0

    def to_bytes(self) -> bytes:
        """Canonical bytes: u64 total, then u64 indices (little-endian)."""
        return np.array([self.total], "<u8").tobytes() + self.indices.astype("<u8").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> EncryptionMask:
        """Parse :meth:`to_bytes` (validating range and order)."""
        if len(data) < 8 or len(data) % 8:
            raise InvalidArgumentError("mask bytes must be 8-byte aligned")
        words = np.frombuffer(data, dtype="<u8")
        return cls(int(words[0]), words[1:].astype(np.int64))

    @property
    def mask_id(self) -> str:
        """sha256 hex of the canonical bytes."""
        return hashlib.sha256(_DOMAIN + self.to_bytes()).hexdigest()

    def boolean(self) -> np.ndarray:
        """Dense boolean mask."""
        out = np.zeros(self.total, dtype=bool)
        out[self.indices] = True
        return out

    def split(self, vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(masked values in mask order, the rest in index order)."""
        if vector.shape != (self.total,):
            raise InvalidArgumentError(f"vector has {vector.size} values, mask {self.total}")
        keep = self.boolean()
        return vector[keep], vector[~keep]

    def merge(self, masked: np.ndarray, rest: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`split`."""
        if masked.size != self.count or rest.size != self.total - self.count:
            raise InvalidArgumentError("parts do not fit the mask")
        keep = self.boolean()
        out = np.empty(self.total, dtype=np.float64)
        out[keep] = masked
        out[~keep] = rest
        return out


def top_p_mask(
    scores: np.ndarray,
    ratio: float,
    manifest: LayoutManifest,
    include_first_last: bool = False,
    include_layers: Iterable[str] = (),
) -> EncryptionMask:
    """Top ``ceil(ratio * n)`` scores (ties: lower index first), plus named layers.

    ``include_first_last`` adds the first and last parameter tensors' layers (the
    paper's recipe; measured not to protect against a mask-aware attacker).
    """
    if not 0.0 <= ratio <= 1.0:
        raise InvalidArgumentError(f"ratio must be in [0, 1], got {ratio}")
    total = manifest.total
    if scores.shape != (total,) or not np.isfinite(scores).all():
        raise InvalidArgumentError("scores must be finite and match the layout")
    k = min(total, math.ceil(ratio * total - 1e-9))
    order = np.lexsort((np.arange(total), -scores))  # by score desc, then index asc
    chosen = np.zeros(total, dtype=bool)
    chosen[order[:k]] = True
    names = set(include_layers)
    if include_first_last and manifest.entries:
        names |= {_layer(manifest.entries[0].name), _layer(manifest.entries[-1].name)}
    for e in manifest.entries:
        if _layer(e.name) in names or e.name in names:
            chosen[e.offset : e.offset + e.length] = True
    return EncryptionMask(total, np.flatnonzero(chosen).astype(np.int64))


def _layer(name: str) -> str:
    return name.rsplit(".", 1)[0]
