"""Encrypt a whole flat vector chunk by chunk, and decrypt an aggregate back."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from fedhe_common.crypto.secret import SecretKeyHolder
from fedhe_common.errors import ManifestMismatchError
from fedhe_common.mlbridge.chunking import ChunkPlan


def encrypt_chunks(holder: SecretKeyHolder, vector: np.ndarray) -> Iterator[bytes]:
    """Yield one ciphertext blob per chunk of ``vector`` (lazy: one chunk in memory)."""
    plan = ChunkPlan(vector.size, holder.preset.values_per_ciphertext)
    for chunk in plan.split(vector):
        yield holder.encrypt(chunk)


def decrypt_chunks(holder: SecretKeyHolder, blobs: Iterable[bytes], total: int) -> np.ndarray:
    """Decrypt aggregate chunks into a ``total``-value vector (still the weighted sum)."""
    plan = ChunkPlan(total, holder.preset.values_per_ciphertext)
    out = np.empty(total, dtype=np.float64)
    count = 0
    for k, blob in enumerate(blobs):
        start, stop = plan.bounds(k)
        out[start:stop] = holder.decrypt(blob)[: stop - start]
        count += 1
    if count != plan.count:
        raise ManifestMismatchError(f"got {count} aggregate chunks, expected {plan.count}")
    return out
