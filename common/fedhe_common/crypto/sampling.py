"""Randomness for threshold key generation: CRS polynomials, Gaussian and smudging noise."""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np

_CDT: tuple[np.ndarray, np.ndarray] | None = None


def urandom_u64(count: int) -> np.ndarray:
    """``count`` uniform 64-bit words from the OS."""
    return np.frombuffer(os.urandom(8 * count), dtype="<u8").copy()


def crs_polynomial(seed: bytes, label: bytes, primes: np.ndarray, n: int) -> np.ndarray:
    """A common uniform (k, N) polynomial from SHAKE-256(seed || label || j), by rejection."""
    out = np.empty((len(primes), n), dtype=np.uint64)
    for j, qj in enumerate(int(q) for q in primes):
        mask = np.uint64((1 << qj.bit_length()) - 1)
        length = 8 * 3 * n
        while True:
            stream = hashlib.shake_256(seed + label + j.to_bytes(4, "little")).digest(length)
            words = np.frombuffer(stream, dtype="<u8") & mask
            words = words[words < np.uint64(qj)]
            if words.size >= n:
                out[j] = words[:n]
                break
            length *= 2
    return out


def uniform_mod(primes: np.ndarray, n: int) -> np.ndarray:
    """A secret uniform (k, N) polynomial mod each prime, from the OS."""
    out = np.empty((len(primes), n), dtype=np.uint64)
    for j, qj in enumerate(int(q) for q in primes):
        mask = np.uint64((1 << qj.bit_length()) - 1)
        got = np.empty(0, dtype=np.uint64)
        while got.size < n:
            words = urandom_u64(2 * n) & mask
            got = np.concatenate([got, words[words < np.uint64(qj)]])
        out[j] = got[:n]
    return out


def gaussian(n: int, sigma: float = 3.2, tail: float = 6.0) -> np.ndarray:
    """Discrete Gaussian integers (clipped at tail*sigma, like SEAL), by CDT inversion."""
    global _CDT
    if _CDT is None:
        bound = math.ceil(tail * sigma)
        xs = np.arange(-bound, bound + 1)
        p = np.exp(-(xs.astype(float) ** 2) / (2 * sigma * sigma))
        _CDT = xs, (np.cumsum(p / p.sum()) * 2.0**53).astype(np.uint64)
    xs, cdt = _CDT
    u = urandom_u64(n) >> np.uint64(11)
    return xs[np.minimum(np.searchsorted(cdt, u, side="right"), len(xs) - 1)].astype(np.int64)


def smudging_residues(n: int, log_bound: int, primes: np.ndarray) -> np.ndarray:
    """Uniform integers in [-2^b, 2^b) per coefficient, as (k, N) residues (coefficient form).

    For b > 61 the integer is hi * 2^40 + lo with hi uniform in [-2^(b-40), 2^(b-40)) and
    lo uniform in [0, 2^40): exactly uniform, and hi * 2^40 mod q is ten exact
    ``(r << 4) % q`` steps (q < 2^60), so no 128-bit arithmetic is needed.
    """
    if log_bound <= 61:
        value = (urandom_u64(n) & np.uint64((1 << (log_bound + 1)) - 1)).astype(np.int64)
        value -= np.int64(1 << log_bound)
        return np.stack([np.mod(value, np.int64(int(q))).astype(np.uint64) for q in primes])
    hi_bits = log_bound - 40
    hi = (urandom_u64(n) & np.uint64((1 << (hi_bits + 1)) - 1)).astype(np.int64)
    hi -= np.int64(1 << hi_bits)
    lo = urandom_u64(n) & np.uint64((1 << 40) - 1)
    out = np.empty((len(primes), n), dtype=np.uint64)
    for j, q in enumerate(primes):
        qj = np.uint64(int(q))
        r = np.mod(hi, np.int64(int(q))).astype(np.uint64)
        for _ in range(10):
            r = (r << np.uint64(4)) % qj
        out[j] = (r + lo % qj) % qj
    return out


# -- differential-privacy noise ------------------------------------------------------
# Floating-point Laplace/Gaussian samplers leak the input through the low bits of
# their output (Mironov 2012). These samplers draw from the OS CSPRNG, produce
# integers (discrete Laplace / discrete Gaussian, Canonne-Kamath-Steinke 2020) and
# the mechanism outputs only multiples of a power-of-two grid: ``grid * (round(x /
# grid) + K)``, so an output never depends on the input beyond its grid point.
DP_GRID_BITS = 10  # grid = 2^(floor(log2(scale)) - DP_GRID_BITS)


def uniform_open(count: int) -> np.ndarray:
    """``count`` uniform floats in the open interval (0, 1), 53 bits from the OS."""
    return ((urandom_u64(count) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def discrete_laplace(count: int, t: float) -> np.ndarray:
    """Integers with P(k) proportional to exp(-|k| / t): a difference of two geometrics."""
    if not (t > 0 and math.isfinite(t)):
        raise ValueError(f"discrete Laplace parameter must be positive, got {t!r}")
    log_q = -1.0 / t  # geometric with P(g) = (1 - q) q^g, q = exp(-1/t), by inversion
    g1 = np.floor(np.log(uniform_open(count)) / log_q)
    g2 = np.floor(np.log(uniform_open(count)) / log_q)
    return (g1 - g2).astype(np.int64)


def discrete_gaussian(count: int, sigma: float) -> np.ndarray:
    """Integers with P(k) proportional to exp(-k^2 / (2 sigma^2)), by rejection from Laplace."""
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"discrete Gaussian sigma must be positive, got {sigma!r}")
    t = math.floor(sigma) + 1.0
    out = np.empty(count, dtype=np.int64)
    filled = 0
    while filled < count:
        want = max(64, int((count - filled) * 1.6))
        y = discrete_laplace(want, t)
        accept = uniform_open(want) < np.exp(
            -((np.abs(y) - sigma * sigma / t) ** 2) / (2 * sigma * sigma)
        )
        got = y[accept][: count - filled]
        out[filled : filled + got.size] = got
        filled += got.size
    return out


def dp_grid(scale: float) -> float:
    """The mechanism's output grid for noise of ``scale`` (a power of two)."""
    return 2.0 ** (math.floor(math.log2(scale)) - DP_GRID_BITS)


def snapped_noise(values: np.ndarray, mechanism: str, scale: float) -> np.ndarray:
    """``values`` plus Laplace (b = scale) or Gaussian (sigma = scale) noise, on a grid."""
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"noise scale must be positive and finite, got {scale!r}")
    grid = dp_grid(scale)
    units = scale / grid
    if mechanism == "laplace":
        k = discrete_laplace(values.size, units)
    elif mechanism == "gaussian":
        k = discrete_gaussian(values.size, units)
    else:
        raise ValueError(f"unknown noise mechanism {mechanism!r}")
    return (np.round(np.asarray(values, dtype=np.float64) / grid) + k) * grid
