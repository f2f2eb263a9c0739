"""Encrypt a whole flat vector chunk by chunk, and decrypt an aggregate back."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from fedhe_common.crypto.secret import SecretKeyHolder
from fedhe_common.errors import ManifestMismatchError
from fedhe_common.mlbridge.chunking import ChunkPlan


def plan_for(values_per_ciphertext: int, total: int) -> ChunkPlan:
    """The chunk plan of a ``total``-value vector for a preset."""
    return ChunkPlan(total=total, values_per_chunk=values_per_ciphertext)


def encrypt_chunks(holder: SecretKeyHolder, vector: np.ndarray) -> Iterator[bytes]:
    """Yield one ciphertext blob per chunk of ``vector`` (lazy: one chunk in memory)."""
    plan = plan_for(holder.preset.values_per_ciphertext, vector.size)
    for chunk in plan.split(vector):
        yield holder.encrypt(chunk)


def decrypt_chunks(holder: SecretKeyHolder, blobs: Iterable[bytes], total: int) -> np.ndarray:
    """Decrypt aggregate chunks into a ``total``-value vector (still the weighted sum)."""
    plan = plan_for(holder.preset.values_per_ciphertext, total)
    out = np.empty(total, dtype=np.float64)
    count = 0
    for k, blob in enumerate(blobs):
        start, stop = plan.bounds(k)
        out[start:stop] = holder.decrypt(blob)[: stop - start]
        count += 1
    if count != plan.count:
        raise ManifestMismatchError(f"got {count} aggregate chunks, expected {plan.count}")
    return out
