"""Deterministic split of a flat vector into ciphertext-sized chunks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from fedhe_common.errors import InvalidArgumentError


@dataclass(frozen=True)
class ChunkPlan:
    """Chunk k covers ``[k*S, min((k+1)*S, total))`` with S = ``values_per_chunk``."""

    total: int
    values_per_chunk: int

    def __post_init__(self) -> None:
        if self.total < 0 or self.values_per_chunk <= 0:
            raise InvalidArgumentError("chunk plan needs total >= 0 and values_per_chunk > 0")

    @property
    def count(self) -> int:
        """Number of chunks."""
        return -(-self.total // self.values_per_chunk)

    def bounds(self, index: int) -> tuple[int, int]:
        """Start and stop offsets of chunk ``index``."""
        if not 0 <= index < self.count:
            raise InvalidArgumentError(f"chunk index {index} outside 0..{self.count - 1}")
        start = index * self.values_per_chunk
        return start, min(start + self.values_per_chunk, self.total)

    def length(self, index: int) -> int:
        """Number of values in chunk ``index``."""
        start, stop = self.bounds(index)
        return stop - start

    def split(self, vector: np.ndarray) -> Iterator[np.ndarray]:
        """Yield the chunks of ``vector`` as views, in order."""
        if vector.shape != (self.total,):
            raise InvalidArgumentError(
                f"vector has shape {vector.shape}, plan expects {self.total}"
            )
        for k in range(self.count):
            start, stop = self.bounds(k)
            yield vector[start:stop]
