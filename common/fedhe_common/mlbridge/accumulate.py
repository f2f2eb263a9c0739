"""Streaming accumulators: add chunk k of one client at a time (memory = one model)."""

from __future__ import annotations

import numpy as np
import tenseal.sealapi as sa

from fedhe_common.crypto.aggregate import CiphertextAggregator
from fedhe_common.errors import InvalidArgumentError, ManifestMismatchError
from fedhe_common.mlbridge.chunking import ChunkPlan


class EncryptedAccumulator:
    """Per-chunk weighted sums of ciphertexts for one round."""

    def __init__(self, aggregator: CiphertextAggregator, plan: ChunkPlan) -> None:
        if plan.values_per_chunk != aggregator.preset.values_per_ciphertext:
            raise InvalidArgumentError("chunk size must equal the preset's values per ciphertext")
        self.aggregator = aggregator
        self.plan = plan
        self._sums: list[sa.Ciphertext | None] = [None] * plan.count
        self.weight_sum = 0.0

    def add(self, index: int, blob: bytes, weight: float) -> None:
        """Validate chunk ``index`` of one upload and add ``weight`` times it."""
        self.plan.bounds(index)
        ct = self.aggregator.load_upload(blob)
        self._sums[index] = self.aggregator.add_weighted(self._sums[index], ct, weight)

    def add_upload(self, blobs: list[bytes] | tuple[bytes, ...], weight: float) -> None:
        """Add every chunk of one client's upload and count its weight once."""
        if len(blobs) != self.plan.count:
            raise ManifestMismatchError(f"upload has {len(blobs)} chunks, plan {self.plan.count}")
        self.aggregator.preset.check_weight_sum(self.weight_sum + weight)
        for k, blob in enumerate(blobs):
            self.add(k, blob, weight)
        self.weight_sum += weight

    def chunk_blob(self, index: int) -> bytes:
        """Serialized weighted sum of chunk ``index``."""
        ct = self._sums[index]
        if ct is None:
            raise InvalidArgumentError(f"chunk {index} has no contribution yet")
        return self.aggregator.to_blob(ct)


class PlainAccumulator:
    """Float64 weighted sums of float32 plaintext chunks (baseline and unmasked part)."""

    def __init__(self, plan: ChunkPlan) -> None:
        self.plan = plan
        self.sum = np.zeros(plan.total, dtype=np.float64)
        self.weight_sum = 0.0

    def add(self, index: int, payload: bytes, weight: float) -> None:
        """Add ``weight`` times chunk ``index`` given as little-endian float32 bytes."""
        start, stop = self.plan.bounds(index)
        values = decode_float32(payload, stop - start)
        self.sum[start:stop] += weight * values


def decode_float32(payload: bytes, expected: int) -> np.ndarray:
    """Little-endian float32 bytes -> float64 array of exactly ``expected`` finite values."""
    if len(payload) != 4 * expected:
        raise InvalidArgumentError(f"expected {4 * expected} plaintext bytes, got {len(payload)}")
    values = np.frombuffer(payload, dtype="<f4").astype(np.float64)
    if not np.isfinite(values).all():
        raise InvalidArgumentError("plaintext chunk contains NaN or infinity")
    return values
