"""A job's key mode on the server, as a type: ``Plain``, ``SingleKey``, ``Threshold``,
``Compact`` or ``Fast``.

The server never decrypts in any mode. What differs is whether uploads carry
ciphertext (and how it is checked and summed), and where a closed round goes:
published at once, or to DECRYPTING until the threshold parties' shares arrive.
A new mode is a new class here, not a new branch in the round logic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from fedhe_common.config.models import JobConfig
from fedhe_common.crypto import compactwire
from fedhe_common.crypto.aggregate import CiphertextAggregator
from fedhe_common.crypto.context import CKKSContext, PublicParams
from fedhe_common.crypto.presets import get_preset
from fedhe_common.crypto.provenance import check_c1_plausible
from fedhe_common.errors import InvalidArgumentError, KeyMaterialError
from fedhe_common.mlbridge.accumulate import EncryptedAccumulator
from fedhe_common.mlbridge.chunking import ChunkPlan
from fedhe_common.mlbridge.compact_accumulate import CompactAccumulator, SeedRegistry
from fedhe_server.store import RoundState


class AggregationMode(Protocol):
    """What the round logic needs of a key mode."""

    name: str
    encrypts: bool
    fingerprint: bytes
    values_per_chunk: int
    # Where a round goes when it closes with enough commits.
    closed_state: RoundState

    def check_ciphertext(self, payload: bytes) -> None:
        """Validate one uploaded ciphertext chunk (form only; never decrypts)."""
        ...

    def check_weight_sum(self, total: int) -> None:
        """Refuse a round weight that the preset's value range cannot hold."""
        ...

    def accumulator(self, plan: ChunkPlan, path: Path | None = None) -> EncryptedAccumulator | None:
        """A fresh sum for the ciphertext stream of ``plan`` (None if nothing is encrypted),
        kept in the record file ``path`` when one is given."""
        ...


class Plain:
    """``encryption.mode: none``: float32 updates only."""

    name = "plain"
    encrypts = False
    fingerprint = b""
    closed_state = RoundState.PUBLISHED

    def __init__(self, values_per_chunk: int) -> None:
        self.values_per_chunk = values_per_chunk

    def check_ciphertext(self, payload: bytes) -> None:
        raise InvalidArgumentError("this job takes no ciphertext")

    def check_weight_sum(self, total: int) -> None:
        return None  # float sums; per-client bounds live in fedhe_server.limits

    def accumulator(self, plan: ChunkPlan, path: Path | None = None) -> EncryptedAccumulator | None:
        return None


class SingleKey:
    """Clients share one secret key; the server adds ciphertexts with public parameters."""

    name = "single-key"
    encrypts = True
    closed_state = RoundState.PUBLISHED

    def __init__(self, aggregator: CiphertextAggregator) -> None:
        self.aggregator = aggregator
        self.fingerprint = aggregator.fingerprint
        self.values_per_chunk = aggregator.preset.values_per_ciphertext

    @property
    def ctx(self) -> CKKSContext:
        """The job's public CKKS context (sizes of ciphertexts and shares)."""
        return self.aggregator.ctx

    def check_ciphertext(self, payload: bytes) -> None:
        self.aggregator.check_upload(payload)

    def check_weight_sum(self, total: int) -> None:
        self.aggregator.preset.check_weight_sum(total)

    def accumulator(self, plan: ChunkPlan, path: Path | None = None) -> EncryptedAccumulator | None:
        return EncryptedAccumulator(self.aggregator, plan, path) if plan.count else None


class Threshold(SingleKey):
    """No single key: a closed round waits for t parties' sealed decryption shares."""

    name = "threshold"
    closed_state = RoundState.DECRYPTING

    def check_ciphertext(self, payload: bytes) -> None:
        """Form checks, then refuse a c1 that is not plausibly uniform (issue 10, finding 2)."""
        check_c1_plausible(self.ctx, self.aggregator.load_upload(payload))


class Compact(SingleKey):
    """``single-key-compact``: c0-only uploads added as raw residues (numpy, no SEAL).

    Keeps the job's seed registry: an upload's seed id feeds one round's sum only.
    """

    name = "single-key-compact"

    def __init__(self, aggregator: CiphertextAggregator) -> None:
        super().__init__(aggregator)
        self.seeds = SeedRegistry()
        self._primes = compactwire.ring_primes(aggregator.preset)

    def check_ciphertext(self, payload: bytes) -> None:
        compactwire.unpack_upload(payload, self.fingerprint, self.values_per_chunk, self._primes)

    def accumulator(self, plan: ChunkPlan, path: Path | None = None) -> EncryptedAccumulator | None:
        if not plan.count:
            return None
        preset = self.aggregator.preset
        return CompactAccumulator(preset, self.fingerprint, plan, path, self.seeds)


class Fast(Compact):
    """``single-key-fast``: two-limb c0 uploads; the server sums c0 and the seeded a's
    (c1) in numpy, so every aggregate chunk decrypts on its own (same engine as compact)."""

    name = "single-key-fast"


def aggregation_mode(
    config: JobConfig, params_json: str | None, fingerprint: bytes
) -> AggregationMode:
    """The job's mode, built from public parameters only (checked against ``fingerprint``)."""
    if config.encryption.mode != "ckks":
        return Plain(get_preset(config.preset_name).values_per_ciphertext)
    if not params_json:
        raise KeyMaterialError("the job has no public parameters yet")
    aggregator = CiphertextAggregator(PublicParams.from_json(params_json))
    if aggregator.fingerprint != fingerprint:
        raise KeyMaterialError("stored fingerprint does not match the job's parameters")
    if config.threshold_keys:
        return Threshold(aggregator)
    if aggregator.preset.encryption == "seeded-fast":
        return Fast(aggregator)
    if aggregator.preset.encryption == "seeded-compact":
        return Compact(aggregator)
    return SingleKey(aggregator)
