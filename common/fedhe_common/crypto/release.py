"""The decryption-output rule: no decrypted CKKS value leaves a decryptor exactly.

A CKKS decryption ``m + e`` carries the key-dependent noise ``e``. Whoever holds
the ciphertext and sees the exact decoded values re-encodes them, gets
``c0 + c1*s`` in every NTT slot and solves for the secret key ``s``
(Li-Micciancio, IND-CPA^D). So every decryptor (:class:`SecretKeyHolder` and
threshold fusion) rounds what it decodes to a grid of ``weight_sum *
2^-output_bits``: the released weighted mean is a multiple of ``2^-output_bits``,
a grid coarser than the decryption noise (docs/crypto.md gives the margin per
preset); the re-encoded values then differ from ``m + e`` by the rounding error,
which is larger than ``e``, and the linear solve yields garbage.
"""

from __future__ import annotations

import math

import numpy as np

from fedhe_common.crypto.presets import Preset
from fedhe_common.errors import InvalidArgumentError


def output_grid(preset: Preset, weight_sum: float) -> float:
    """Grid step of released values of a weighted sum with total weight ``weight_sum``."""
    try:
        w = float(weight_sum)
    except (TypeError, ValueError):
        w = math.nan
    if not (math.isfinite(w) and w > 0):
        raise InvalidArgumentError(f"weight_sum must be positive and finite, got {weight_sum!r}")
    return w * 2.0 ** -preset.output_bits


def public_values(preset: Preset, decoded: np.ndarray, weight_sum: float = 1.0) -> np.ndarray:
    """Round freshly decoded values to the release grid (in place, and returned)."""
    grid = output_grid(preset, weight_sum)
    np.divide(decoded, grid, out=decoded)
    np.round(decoded, out=decoded)
    np.multiply(decoded, grid, out=decoded)
    return decoded
