"""Decrypt an aggregate's chunks back into one flat vector (encrypt: ``encrypt_vector``)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from fedhe_common.crypto.secret import SecretKeyHolder
from fedhe_common.errors import ManifestMismatchError
from fedhe_common.mlbridge.chunking import ChunkPlan


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
