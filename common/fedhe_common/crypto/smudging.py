"""How much smudging noise a threshold party adds, sized from the round's weights.

A decryption share ``c1 * s_k + E_k`` hides the party's key share only if ``E_k``
drowns the aggregate's own noise ``e``. With sample-count weights ``n_i`` that
noise is ``sum n_i e_i``: its bound grows with ``||n||_2 <= sum n_i`` (the header's
``weight_sum``). Uniform ``E`` in ``[-2^b, 2^b)`` keeps the statistical distance
per ciphertext below ``N * |e|_max / 2^(b+1)``; so ``b`` is chosen at decryption
time as ``log2(N * |e_fresh|_max * weight_sum) + lambda - 1`` with the preset's
statistical parameter ``lambda`` (docs/crypto.md gives the measured figures),
never below the preset's ``smudging_bits`` and never past its headroom.
"""

from __future__ import annotations

import math

from fedhe_common.crypto.presets import Preset
from fedhe_common.errors import InvalidArgumentError

# Statistical distance target 2^-lambda per decrypted ciphertext. The practical
# preset's headroom (scale 2^58, 80-bit data modulus) only allows a heuristic level.
SECURITY_BITS = {"threshold-strict": 40, "threshold-practical": 8}
ERROR_SIGMA = 3.2
TAIL = 6.0  # SEAL clips its Gaussian at 6 sigma; the fresh-noise bound uses the same


def fresh_noise_bound(preset: Preset) -> float:
    """Bound on one public-key ciphertext's decryption noise per coefficient.

    ``e = u*e_pk + e1 + e2*s`` has standard deviation ~ ``3.2 * sqrt(4N/3)``
    (ternary u and s); the bound is ``TAIL`` of those.
    """
    n = preset.poly_modulus_degree
    return TAIL * ERROR_SIGMA * math.sqrt(4 * n / 3)


def smudging_bits(preset: Preset, weight_sum: float, parties: int = 1) -> int:
    """Log2 of the smudging bound for an aggregate of total weight ``weight_sum``."""
    if preset.smudging_bits is None:
        raise InvalidArgumentError(f"preset {preset.name!r} has no smudging")
    if not (math.isfinite(weight_sum) and weight_sum >= 1):
        raise InvalidArgumentError(f"weight_sum must be >= 1, got {weight_sum!r}")
    lam = SECURITY_BITS.get(preset.name, 40)
    need = math.log2(preset.poly_modulus_degree * fresh_noise_bound(preset) * weight_sum)
    bits = max(preset.smudging_bits, math.ceil(need + lam - 1))
    # Headroom: the message (scale * W * clip, at most q/4 by check_weight_sum) and
    # every party's smudging together (at most q/4 too) stay below SEAL's wrap at q/2.
    room = preset.log2_q_data - len(preset.data_modulus_bits) - 2
    if bits + math.log2(max(parties, 1)) > room:
        raise InvalidArgumentError(
            f"weight sum {weight_sum:g} needs smudging 2^{bits}, past preset "
            f"{preset.name!r}'s headroom; lower the weights"
        )
    return bits


def statistical_distance_log2(preset: Preset, noise_max: float, bits: int) -> float:
    """log2 of the per-ciphertext bound ``N * noise_max / 2^(bits+1)``."""
    return math.log2(preset.poly_modulus_degree * max(noise_max, 1.0)) - bits - 1
