"""How an update's values are split into the ciphertext and plaintext streams."""

from __future__ import annotations

from fedhe_common.mlbridge.chunking import ChunkPlan


def stream_plans(total: int, values_per_chunk: int, encrypted: int) -> tuple[ChunkPlan, ChunkPlan]:
    """Chunk plans of (ciphertext, plaintext): the first ``encrypted`` values (mask order)
    go encrypted, the other ``total - encrypted`` in plaintext."""
    return (ChunkPlan(encrypted, values_per_chunk), ChunkPlan(total - encrypted, values_per_chunk))


def encrypted_count(total: int, encrypts: bool, mask_count: int | None) -> int:
    """How many of an update's ``total`` values travel encrypted: the one rule.

    None without encryption; the masked values under selective encryption
    (``mask_count``); else all of them. Clients (encode, decode) and the server
    (chunk plans) all call this.
    """
    if not encrypts:
        return 0
    return total if mask_count is None else mask_count
