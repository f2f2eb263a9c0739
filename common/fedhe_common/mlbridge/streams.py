"""How an update's values are split into the ciphertext and plaintext streams."""

from __future__ import annotations

from fedhe_common.mlbridge.chunking import ChunkPlan


def stream_plans(total: int, values_per_chunk: int, encrypted: int) -> tuple[ChunkPlan, ChunkPlan]:
    """Chunk plans of (ciphertext, plaintext): the first ``encrypted`` values (mask order)
    go encrypted, the other ``total - encrypted`` in plaintext."""
    return (ChunkPlan(encrypted, values_per_chunk), ChunkPlan(total - encrypted, values_per_chunk))
