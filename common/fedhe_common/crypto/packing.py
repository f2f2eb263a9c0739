"""Real vectors <-> CKKS plaintexts, with complex packing (two reals per slot)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tenseal.sealapi as sa

from fedhe_common.crypto.presets import Preset
from fedhe_common.errors import InvalidArgumentError


def _checked(values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise InvalidArgumentError(f"expected a 1-D vector, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InvalidArgumentError("values contain NaN or infinity")
    return arr


_CIPHERTEXTS_PER_BLOCK = 64


def _slot_view(padded: np.ndarray, preset: Preset) -> np.ndarray:
    """Slot values of an even-length float64 buffer: pairs viewed as complex, or the reals."""
    return padded.view(np.complex128) if preset.complex_packing else padded


def encode(encoder: sa.CKKSEncoder, preset: Preset, values: np.ndarray) -> sa.Plaintext:
    """Clip and encode up to ``values_per_ciphertext`` reals at the preset's scale."""
    arr = _checked(values)
    if arr.size > preset.values_per_ciphertext:
        raise InvalidArgumentError(
            f"{arr.size} values exceed one ciphertext ({preset.values_per_ciphertext})"
        )
    return next(_plaintexts(encoder, preset, arr if arr.size else np.zeros(1)))


def encode_vector(
    encoder: sa.CKKSEncoder, preset: Preset, values: np.ndarray
) -> Iterator[sa.Plaintext]:
    """Encode a whole vector, one plaintext per ``values_per_ciphertext`` values.

    Checks the vector once, clips and packs it block by block (memory stays at
    one block, not a copy of the vector), and encodes into one reused
    plaintext: consume each before asking for the next. Chunk k holds values
    ``[k*S, (k+1)*S)``, like :class:`~fedhe_common.mlbridge.chunking.ChunkPlan`.
    """
    return _plaintexts(encoder, preset, _checked(values))


def _plaintexts(encoder: sa.CKKSEncoder, preset: Preset, arr: np.ndarray) -> Iterator[sa.Plaintext]:
    per_ct = preset.values_per_ciphertext
    per_pt = per_ct // 2 if preset.complex_packing else per_ct
    block = per_ct * _CIPHERTEXTS_PER_BLOCK
    pt, scale, bound = sa.Plaintext(), preset.scale, preset.clip_bound
    for start in range(0, arr.size, block):
        part = arr[start : start + block]
        padded = np.zeros(-(-part.size // per_ct) * per_ct)
        np.clip(part, -bound, bound, out=padded[: part.size])
        slots = _slot_view(padded, preset)
        for first in range(0, slots.size, per_pt):
            # A list converts faster than an ndarray through the binding (~30%).
            encoder.encode(slots[first : first + per_pt].tolist(), scale, pt)
            yield pt


def decode(encoder: sa.CKKSEncoder, preset: Preset, plaintext: sa.Plaintext) -> np.ndarray:
    """Decode a plaintext to ``values_per_ciphertext`` reals (the caller trims padding)."""
    if preset.complex_packing:
        z = np.asarray(encoder.decode_complex(plaintext), dtype=np.complex128)
        return z.view(np.float64)
    return np.asarray(encoder.decode_double(plaintext), dtype=np.float64)
