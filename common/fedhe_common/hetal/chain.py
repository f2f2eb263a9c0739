"""The SEAL side of HETAL's CKKS setup: modulus chains, contexts, Galois elements, keys.

Public material only: nothing here creates or loads a secret key.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import tenseal.sealapi as sa

from fedhe_common.crypto import sealbytes
from fedhe_common.errors import InvalidArgumentError, KeyMaterialError

MAX_KEY_BYTES = 2 << 30


@dataclass(frozen=True)
class ChainParams:
    """A CKKS modulus chain: ring degree, prime bit sizes (special prime last), scale."""

    n: int = 16384
    prime_bits: tuple[int, ...] = (46, 33, 33, 60)
    scale_bits: int = 33

    def __post_init__(self) -> None:
        if self.n < 1024 or self.n & (self.n - 1):
            raise InvalidArgumentError(f"ring degree must be a power of two >= 1024, got {self.n}")
        if len(self.prime_bits) < 2:
            raise InvalidArgumentError("need at least one data prime and the special prime")
        bound = sa.CoeffModulus.MaxBitCount(self.n, sa.SEC_LEVEL_TYPE.TC128)
        if sum(self.prime_bits) > bound:
            raise InvalidArgumentError(
                f"{sum(self.prime_bits)} modulus bits exceed the 128-bit-security bound {bound}"
                f" for N = {self.n}"
            )
        if not 20 <= self.scale_bits <= 60:
            raise InvalidArgumentError(f"scale_bits {self.scale_bits} outside 20..60")

    @property
    def slots(self) -> int:
        """Complex slots per ciphertext (N / 2)."""
        return self.n // 2

    @property
    def depth(self) -> int:
        """Rescales a fresh ciphertext allows (data primes - 1)."""
        return len(self.prime_bits) - 2

    @classmethod
    def for_depth(cls, depth: int, n: int = 16384, scale_bits: int = 33) -> ChainParams:
        """[46, scale_bits x depth, 60]: the prototype's chains (depth 2: mode client)."""
        return cls(n=n, prime_bits=(46, *([scale_bits] * depth), 60), scale_bits=scale_bits)


def build_context(params: ChainParams) -> sa.SEALContext:
    """The SEAL context for ``params`` (128-bit security, key switching enabled)."""
    parms = sa.EncryptionParameters(sa.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(params.n)
    parms.set_coeff_modulus(sa.CoeffModulus.Create(params.n, list(params.prime_bits)))
    ctx = sa.SEALContext(parms, True, sa.SEC_LEVEL_TYPE.TC128)
    if not ctx.parameters_set():
        raise InvalidArgumentError(f"SEAL refused the parameters: {ctx.parameters_error_message()}")
    return ctx


def galois_elements(steps: Iterable[int], n: int, conj: bool = True) -> list[int]:
    """Galois elements for slot rotations by ``steps`` (+ conjugation), sorted, deduplicated.

    ``KeyGenerator.create_galois_keys`` takes ELEMENTS, not steps: 3^s mod 2N for s > 0,
    3^(N/2 + s) mod 2N for s < 0, and 2N - 1 for conjugation. Multiples of N/2 need none.
    """
    slots = n // 2
    elts = set()
    for s in steps:
        s %= slots
        if s:
            elts.add(pow(3, s, 2 * n))
    if conj:
        elts.add(2 * n - 1)
    return sorted(elts)


K = TypeVar("K", sa.PublicKey, sa.RelinKeys, sa.GaloisKeys)


def load_key(ctx: sa.SEALContext, kind: type[K], blob: bytes, limit: int = MAX_KEY_BYTES) -> K:
    """Load a public/relinearisation/Galois key from bytes, bounded and checked by SEAL."""
    if len(blob) > limit:
        raise KeyMaterialError(f"{kind.__name__} of {len(blob)} bytes exceeds {limit}")
    key = kind()
    try:
        sealbytes.load_into(key, ctx, blob)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise KeyMaterialError(f"SEAL rejected the {kind.__name__}: {exc}") from None
    if not sa.is_valid_for(key, ctx):
        raise KeyMaterialError(f"{kind.__name__} is not valid for this context")
    return key


def key_bytes(key: sa.PublicKey | sa.RelinKeys | sa.GaloisKeys) -> bytes:
    """SEAL ``save`` bytes of a key (for shipping evaluation keys to workers)."""
    return sealbytes.save_bytes(key)


def steps_elements(steps: Sequence[int], params: ChainParams) -> list[int]:
    """Galois elements (incl. conjugation) for ``steps`` under ``params``."""
    return galois_elements(steps, params.n, conj=True)
