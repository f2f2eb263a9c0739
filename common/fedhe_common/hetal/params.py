"""The parameters of one transfer-learning job: mode, shapes, optimiser, CKKS chain, softmax.

``TransferParams`` is what the server stores (``to_json``) and what both sides build their
CKKS context and batch plan from; the services build it with ``TransferParams.from_config``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

# SEAL's 128-bit bound on the total coefficient-modulus bits per ring size.
MAX_MODULUS_BITS = {8192: 218, 16384: 438, 32768: 881}
MAX_CLASSES = 16
MAX_FEATURES = 4096
MAX_BATCH = 4096
MAX_WORKERS = 64
# Kernel sets: 1 = DiagABT + unpaired DiagATB (params stored before the field existed);
# 2 = DiagABT-compact wherever the owner decrypts Z, paired DiagATB (fewer rotations).
KERNELS_LATEST = 2


class SoftmaxMode(StrEnum):
    """Where the softmax runs: on the owner (exact, decrypted logits) or on ciphertexts."""

    CLIENT = "client"
    SERVER = "server"


@dataclass(frozen=True)
class CkksChain:
    """A CKKS modulus chain: ring degree, prime sizes (first = q0, last = special), scale."""

    poly_modulus_degree: int
    coeff_bits: tuple[int, ...]
    scale_bits: int

    @property
    def depth(self) -> int:
        """Rescales available (primes between q0 and the special prime)."""
        return len(self.coeff_bits) - 2

    def check(self) -> None:
        """Raise ValueError unless the chain is at the 128-bit level and well-formed."""
        bound = MAX_MODULUS_BITS.get(self.poly_modulus_degree)
        if bound is None:
            raise ValueError(f"poly_modulus_degree must be one of {sorted(MAX_MODULUS_BITS)}")
        if len(self.coeff_bits) < 3:
            raise ValueError("coeff_bits needs q0, at least one level prime, the special prime")
        if sum(self.coeff_bits) > bound:
            raise ValueError(f"coeff_bits sum {sum(self.coeff_bits)} > {bound} (128-bit bound)")
        if any(not 20 <= b <= 60 for b in self.coeff_bits):
            raise ValueError("every prime must have 20..60 bits")
        if self.coeff_bits[-1] < max(self.coeff_bits[:-1]):
            raise ValueError("the special prime must be the largest")
        if not 20 <= self.scale_bits <= 50 or self.scale_bits >= self.coeff_bits[0]:
            raise ValueError("scale_bits must be in 20..50 and below q0's size")


@dataclass(frozen=True)
class ServerSoftmax:
    """The polynomial softmax of ``mode: server`` (see ``softmax.py`` and docs/hetal.md).

    Logits are kept in [-bound, bound] by the owner (unit-norm features, re-centred weights
    with row norms <= bound). exp(z) = p(z / 2**squarings) ** (2**squarings) with p the
    Chebyshev interpolant of degree ``exp_degree``; 1/S is a degree-``inv_degree``
    near-minimax relative fit on [0.95 classes, inv_margin (classes - 1 + e^bound)].
    Defaults chosen in docs/hetal.md.
    """

    bound: float = 6.0
    exp_degree: int = 7
    squarings: int = 1
    inv_degree: int = 7
    inv_margin: float = 1.1

    def __post_init__(self) -> None:
        """Bounds that keep the circuit within a 2^14 ring's chain."""
        if not 0.5 <= self.bound <= 16:
            raise ValueError("softmax bound must be in [0.5, 16]")
        if not 1 <= self.exp_degree <= 7 or not 1 <= self.inv_degree <= 7:
            raise ValueError("polynomial degrees must be in 1..7")
        if not 0 <= self.squarings <= 4:
            raise ValueError("squarings must be in 0..4")
        if not 1.0 <= self.inv_margin <= 4.0:
            raise ValueError("inv_margin must be in [1, 4]")

    def depth(self) -> int:
        """Levels: exp (and its squarings), class sum (0), inverse, the final product."""
        exp_levels = (self.exp_degree).bit_length() + self.squarings
        return exp_levels + (self.inv_degree).bit_length() + 1


@dataclass(frozen=True)
class TransferParams:
    """Everything both sides need to agree on for one transfer job (frozen, JSON-able)."""

    mode: SoftmaxMode
    classes: int
    features: int
    batch: int = 128
    lr: float = 4.0
    max_epochs: int = 10
    patience: int = 3
    nesterov: bool = True
    seed: int = 0
    block_rows: int = 64
    chain: CkksChain = field(default_factory=lambda: default_chain(SoftmaxMode.CLIENT))
    softmax: ServerSoftmax = field(default_factory=ServerSoftmax)
    kernels: int = KERNELS_LATEST
    workers: int = 1

    def __post_init__(self) -> None:
        """Validate every field; a bad value is a clear ValueError."""
        object.__setattr__(self, "mode", SoftmaxMode(self.mode))
        if not 2 <= self.classes <= MAX_CLASSES:
            raise ValueError(f"classes must be in 2..{MAX_CLASSES}")
        if not 2 <= self.features <= MAX_FEATURES:
            raise ValueError(f"features must be in 2..{MAX_FEATURES} (bias column included)")
        if self.block_rows < 1 or self.batch % self.block_rows or not 0 < self.batch <= MAX_BATCH:
            raise ValueError(f"batch must be a positive multiple of {self.block_rows}")
        if not 0 < self.lr <= 100:
            raise ValueError("lr must be in (0, 100]")
        if not 1 <= self.max_epochs <= 10_000 or not 1 <= self.patience <= 10_000:
            raise ValueError("max_epochs and patience must be >= 1")
        if self.kernels not in (1, KERNELS_LATEST):
            raise ValueError(f"kernels must be 1 or {KERNELS_LATEST}")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"workers must be in 1..{MAX_WORKERS}")
        self.chain.check()
        if self.mode is SoftmaxMode.SERVER:
            need = self.softmax.depth() + 4
            if self.chain.depth < need:
                raise ValueError(
                    f"mode server needs {need} levels, the chain has {self.chain.depth}"
                )

    @property
    def logit_scale(self) -> float:
        """Features travel times this (1/bound in mode server: the server's logits are
        t = z / bound in [-1, 1], so every polynomial coefficient stays O(1) at scale 2^28)."""
        return 1.0 / self.softmax.bound if self.mode is SoftmaxMode.SERVER else 1.0

    @property
    def blocks_per_batch(self) -> int:
        """Sample blocks (ciphertexts) per mini-batch."""
        return self.batch // self.block_rows

    @classmethod
    def from_config(cls, section: Any, features: int, classes: int) -> TransferParams:
        """Build from the job's ``transfer`` config section (attributes read if present)."""
        mode = SoftmaxMode(str(getattr(section, "mode", "client")))
        kwargs: dict[str, Any] = {}
        for name in ("batch", "lr", "max_epochs", "patience", "nesterov", "seed", "workers"):
            value = getattr(section, name, None)
            if value is not None:
                kwargs[name] = value
        return cls(
            mode=mode, classes=classes, features=features, chain=default_chain(mode), **kwargs
        )

    def to_json(self) -> str:
        """Canonical JSON (sorted keys), what the server stores."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> TransferParams:
        """Inverse of ``to_json``; unknown or missing keys are a ValueError.

        JSON written before ``kernels`` / ``workers`` existed reads as kernel set 1 (the
        owner's Galois keys were made for it) and one worker.
        """
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("transfer params must be a JSON object")
        raw.setdefault("kernels", 1)
        raw.setdefault("workers", 1)
        try:
            chain = _chain(raw.pop("chain"))
            softmax = ServerSoftmax(**raw.pop("softmax"))
            return cls(chain=chain, softmax=softmax, **raw)
        except (TypeError, KeyError) as exc:
            raise ValueError(f"bad transfer params: {exc}") from exc

    def with_epochs(self, max_epochs: int) -> TransferParams:
        """A copy with another epoch cap (benchmarks, tests)."""
        return replace(self, max_epochs=max_epochs)


def _chain(raw: dict[str, Any]) -> CkksChain:
    return CkksChain(
        poly_modulus_degree=int(raw["poly_modulus_degree"]),
        coeff_bits=tuple(int(b) for b in raw["coeff_bits"]),
        scale_bits=int(raw["scale_bits"]),
    )


def default_chain(mode: SoftmaxMode | str) -> CkksChain:
    """The chain per mode (docs/hetal.md): 2 levels per phase, or the server softmax's."""
    if SoftmaxMode(mode) is SoftmaxMode.CLIENT:
        return CkksChain(16384, (46, 33, 33, 60), 33)
    return CkksChain(16384, (40,) + (28,) * 12 + (60,), 28)
