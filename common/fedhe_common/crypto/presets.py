"""Named CKKS parameter presets and their value ranges (see docs/crypto.md).

A preset fixes everything both ends must agree on: ring degree, primes, scale,
packing, how uploads are encrypted and how the server weights them. Each preset
also states its value range: with clients clipping to ``|x| <= clip_bound`` the
aggregate stays exact while ``scale_total * sum|w| * clip_bound <= q_data / 4``
(one bit below SEAL's wrap point ``q/2``, the other bit kept for noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from fedhe_common.errors import ConfigError, ValueRangeError

# Threshold keys: t >= 2 (t = 1 hands every party the whole key) and at least three
# contributors per decrypted aggregate (fewer and the parties decrypt single uploads).
MIN_THRESHOLD = 2
MIN_THRESHOLD_CLIENTS = 3

EncryptionMode = Literal["seeded-symmetric", "public-key", "seeded-compact", "seeded-fast"]
# Coefficient-encoded RLWE on the numpy engine (compactwire.py), not CKKS.
COEFFICIENT_MODES = ("seeded-compact", "seeded-fast")
WeightMode = Literal["integer", "real"]
Compression = Literal["none", "zstd"]


@dataclass(frozen=True)
class Preset:
    """One CKKS parameter set; immutable, shared by keyauth, server and clients."""

    name: str
    poly_modulus_degree: int
    coeff_modulus_bits: tuple[int, ...]
    scale_bits: int
    encryption: EncryptionMode
    weight_mode: WeightMode
    weight_scale_bits: int
    complex_packing: bool
    clip_bound: float
    compression: Compression
    smudging_bits: int | None
    baseline_only: bool
    summary: str

    @property
    def data_modulus_bits(self) -> tuple[int, ...]:
        """Primes that carry data (SEAL keeps the last one as the special prime)."""
        bits = self.coeff_modulus_bits
        return bits if len(bits) == 1 else bits[:-1]

    @property
    def scale(self) -> float:
        """Encoding scale Delta of fresh ciphertexts."""
        return 2.0**self.scale_bits

    @property
    def weight_scale(self) -> float:
        """Scale at which the server encodes weights (1.0 for integer weights)."""
        return 1.0 if self.weight_mode == "integer" else 2.0**self.weight_scale_bits

    @property
    def coefficient_encoded(self) -> bool:
        """True for the numpy-engine presets (compact, fast): no CKKS slot encoding."""
        return self.encryption in COEFFICIENT_MODES

    @property
    def values_per_ciphertext(self) -> int:
        """Real values carried by one ciphertext (N with complex packing, N/2 without)."""
        n = self.poly_modulus_degree
        if self.coefficient_encoded:
            return n  # coefficient encoding: one value per coefficient
        return n if self.complex_packing else n // 2

    @property
    def log2_q_data(self) -> int:
        """Upper bound of log2 of the data modulus (sum of the data prime sizes)."""
        return sum(self.data_modulus_bits)

    def max_weight_sum(self, clip_bound: float | None = None) -> float:
        """Largest ``sum|w_i|`` the aggregate can carry without wrapping."""
        if self.coefficient_encoded:
            # Per-chunk scales: the limit is on weights, whatever the clip bound; two bits
            # stay free for chunks whose ranges differ between clients (compactwire.py).
            from fedhe_common.crypto.compactwire import value_limit

            return float(value_limit(self) // 4)
        bound = self.clip_bound if clip_bound is None else clip_bound
        log2_total_scale = self.scale_bits + math.log2(self.weight_scale)
        # q_data >= 2^(sum bits - k), one bit per prime below its nominal size.
        log2_q = self.log2_q_data - len(self.data_modulus_bits)
        return 2.0 ** (log2_q - 2 - log2_total_scale) / bound

    def check_weight_sum(self, weight_sum: float, clip_bound: float | None = None) -> None:
        """Raise :class:`ValueRangeError` when ``weight_sum`` could wrap the aggregate."""
        limit = self.max_weight_sum(clip_bound)
        if weight_sum > limit:
            raise ValueRangeError(
                f"sum of |weights| {weight_sum:g} exceeds preset {self.name!r} limit "
                f"{limit:g} at clip bound {clip_bound or self.clip_bound:g}; the aggregate "
                "would wrap. Lower the clip bound or the weights, or use a preset with a "
                "larger modulus."
            )

    @property
    def output_bits(self) -> int:
        """Bits of the weighted mean a decryption may release (grid ``2^-output_bits``).

        Decrypted CKKS values carry key-dependent noise; every decryptor rounds its
        output to this grid (scaled by the round's weight sum), far coarser than the
        noise at these scales (:mod:`fedhe_common.crypto.release`, docs/crypto.md).
        """
        return _OUTPUT_BITS.get(self.name, 20)

    def with_clip_bound(self, clip_bound: float) -> Preset:
        """Copy of this preset with another clip bound."""
        if not (clip_bound > 0 and math.isfinite(clip_bound)):
            raise ConfigError(f"clip_bound must be a positive finite number, got {clip_bound!r}")
        return replace(self, clip_bound=float(clip_bound))


# Released precision per preset: mean error <= 2^-(bits+1) from rounding, within each
# preset's documented tolerance (1e-6 single-key, 1e-5 real weights, 1e-9 the others).
_OUTPUT_BITS = {
    "single-key": 20,
    "single-key-8k": 20,
    "single-key-strict": 20,
    "single-key-real-weights": 17,
    "threshold-strict": 32,
    "threshold-practical": 32,
    "paper-default": 32,
}

# The preset a job gets when it names none: exact, numpy-native (docs/crypto.md §8).
DEFAULT_PRESET = "single-key-fast"

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="single-key",
            poly_modulus_degree=4096,
            coeff_modulus_bits=(60,),
            scale_bits=32,
            encryption="seeded-symmetric",
            weight_mode="integer",
            weight_scale_bits=0,
            complex_packing=True,
            clip_bound=16.0,
            compression="none",
            smudging_bits=None,
            baseline_only=False,
            summary="N=4096, one 60-bit prime, scale 2^32, complex packing, seeded "
            "symmetric uploads, integer weights: 8.05 B/value up, 16.03 down",
        ),
        Preset(
            name="single-key-8k",
            poly_modulus_degree=8192,
            coeff_modulus_bits=(60,),
            scale_bits=32,
            encryption="seeded-symmetric",
            weight_mode="integer",
            weight_scale_bits=0,
            complex_packing=True,
            clip_bound=16.0,
            compression="none",
            smudging_bits=None,
            baseline_only=False,
            summary="single-key at N=8192 (one 60-bit prime): same bytes and value range, "
            "8192 values per ciphertext, ~5% less client and ~15% less server CPU per value",
        ),
        Preset(
            name="single-key-compact",
            poly_modulus_degree=4096,
            coeff_modulus_bits=(32,),
            scale_bits=28,  # the SEAL key self-test only
            encryption="seeded-compact",
            weight_mode="integer",
            weight_scale_bits=0,
            complex_packing=True,  # only the SEAL key self-test packs; chunks are N values
            clip_bound=16.0,
            compression="none",
            smudging_bits=None,
            baseline_only=False,
            summary="N=4096, one 32-bit prime, coefficient encoding of model deltas at a "
            "power-of-two scale per chunk (15 bits), c0-only uploads and sums with seeds "
            "per upload attempt: ~4.02 B/value up, ~4.01 down (opt-in)",
        ),
        Preset(
            name="single-key-fast",
            poly_modulus_degree=4096,
            coeff_modulus_bits=(32, 32),
            scale_bits=28,  # the SEAL key self-test only
            encryption="seeded-fast",
            weight_mode="integer",
            weight_scale_bits=0,
            complex_packing=True,  # only the SEAL key self-test packs; chunks are N values
            clip_bound=16.0,
            compression="none",
            smudging_bits=None,
            baseline_only=False,
            summary="N=4096, q = two 32-bit primes (~2^64, RNS), coefficient encoding at "
            "2^-40 of each chunk's range, seeded uploads, server sums c0 and c1 so each "
            "chunk decrypts alone: ~8.0 B/value up, ~16.0 down (exact, numpy engine)",
        ),
        Preset(
            name="single-key-real-weights",
            poly_modulus_degree=4096,
            coeff_modulus_bits=(60,),
            scale_bits=28,
            encryption="seeded-symmetric",
            weight_mode="real",
            weight_scale_bits=26,
            complex_packing=True,
            clip_bound=4.0,
            compression="none",
            smudging_bits=None,
            baseline_only=False,
            summary="as single-key with scale 2^28 and real server-side weights at 2^26 "
            "(no rescale); sum|w| * B <= 8",
        ),
        Preset(
            name="single-key-strict",
            poly_modulus_degree=8192,
            coeff_modulus_bits=(60, 60, 60),
            scale_bits=72,
            encryption="seeded-symmetric",
            weight_mode="integer",
            weight_scale_bits=0,
            complex_packing=True,
            clip_bound=16.0,
            compression="none",
            smudging_bits=None,
            baseline_only=False,
            summary="N=8192 [60,60|60], scale 2^72, seeded symmetric uploads, integer "
            "weights: released values 2^-20 of the mean sit >= 44 bits above the "
            "decryption noise (docs/crypto.md); 16 B/value up, 32 down",
        ),
        Preset(
            name="threshold-strict",
            poly_modulus_degree=8192,
            coeff_modulus_bits=(60, 60, 60),
            scale_bits=96,
            encryption="public-key",
            weight_mode="integer",
            weight_scale_bits=0,
            complex_packing=True,
            clip_bound=16.0,
            compression="none",
            smudging_bits=68,
            baseline_only=False,
            summary="N=8192 [60,60|60], scale 2^96, collective public key, smudging "
            "+-2^68 (statistical 2^-40 per decrypted ciphertext)",
        ),
        Preset(
            name="threshold-practical",
            poly_modulus_degree=4096,
            coeff_modulus_bits=(40, 40, 29),
            scale_bits=58,
            encryption="public-key",
            weight_mode="integer",
            weight_scale_bits=0,
            complex_packing=True,
            clip_bound=16.0,
            compression="zstd",
            smudging_bits=30,
            baseline_only=False,
            summary="N=4096 [40,40|29], scale 2^58, smudging ~2^30 (heuristic, "
            "Lattigo-example level)",
        ),
        Preset(
            name="paper-default",
            poly_modulus_degree=8192,
            coeff_modulus_bits=(60, 52, 60),
            scale_bits=52,
            encryption="public-key",
            weight_mode="integer",
            weight_scale_bits=0,
            complex_packing=False,
            clip_bound=16.0,
            compression="zstd",
            smudging_bits=None,
            baseline_only=True,
            summary="FedML-HE paper default (N=8192, depth 1, scale 2^52, public key); "
            "benchmark baseline only",
        ),
    )
}


def get_preset(name: str) -> Preset:
    """Look a preset up by name; unknown names raise :class:`ConfigError` listing the choices."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown CKKS preset {name!r}; choose one of {', '.join(sorted(PRESETS))}"
        ) from None
