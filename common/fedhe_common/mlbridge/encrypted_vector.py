"""Decrypt an aggregate's chunks back into one flat vector (encrypt: ``encrypt_vector``)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from fedhe_common.crypto.secret import SecretKeyHolder
from fedhe_common.errors import ManifestMismatchError
from fedhe_common.mlbridge.chunking import ChunkPlan


def decrypt_chunks(
    holder: SecretKeyHolder, blobs: Iterable[bytes], total: int, weight_sum: float = 1.0
) -> np.ndarray:
    """Decrypt aggregate chunks into a ``total``-value vector (still the weighted sum).

    ``weight_sum`` (the round's sum of weights) sizes the release grid of the decryptor.
    """
    plan = ChunkPlan(total, holder.preset.values_per_ciphertext)
    out = np.empty(total, dtype=np.float64)
    count = 0
    for k, blob in enumerate(blobs):
        start, stop = plan.bounds(k)
        out[start:stop] = holder.decrypt(blob, weight_sum=weight_sum)[: stop - start]
        count += 1
    if count != plan.count:
        raise ManifestMismatchError(f"got {count} aggregate chunks, expected {plan.count}")
    return out
