"""A model update <-> its two upload streams (encrypted masked part, float32 rest)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.models import DPSection
from fedhe_common.crypto.sampling import snapped_noise
from fedhe_common.errors import FedHEError
from fedhe_common.mlbridge.accumulate import decode_float32
from fedhe_common.mlbridge.chunking import ChunkPlan
from fedhe_common.mlbridge.masks import EncryptionMask
from fedhe_common.mlbridge.streams import encrypted_count, stream_plans

if TYPE_CHECKING:  # keymodes -> threshold_member -> connection -> this module
    from fedhe_client.keymodes import KeyMode


def add_dp_noise(values: np.ndarray, dp: DPSection) -> np.ndarray:
    """Laplace or Gaussian noise of ``dp.scale`` per value, from the OS CSPRNG.

    Discrete Laplace / Gaussian on a power-of-two grid 2^-10 of the scale
    (:func:`~fedhe_common.crypto.sampling.snapped_noise`), so no floating-point
    artefact carries the input. This is local output perturbation of the
    *plaintext* coordinates only, applied after clipping; it gives (eps, delta)-DP
    for those coordinates only when the scale is calibrated to the clip bound
    (plus one grid step) and the number of rounds, which FedHE does not do for
    you. Encrypted coordinates get no noise (the server never sees them).
    """
    if dp.mechanism == "none":
        return values
    return snapped_noise(values, dp.mechanism, dp.scale)


@dataclass(frozen=True)
class EncodedUpdate:
    """The two chunk streams of one upload and their chunk plans."""

    ciphertext: list[bytes]
    plaintext: list[bytes]
    ct_plan: ChunkPlan
    pt_plan: ChunkPlan

    @property
    def num_bytes(self) -> int:
        """Payload bytes of both streams."""
        return sum(map(len, self.ciphertext)) + sum(map(len, self.plaintext))


def encode_update(
    vector: np.ndarray,
    mode: KeyMode,
    mask: EncryptionMask | None,
    values_per_chunk: int,
    clip_bound: float,
    dp: DPSection,
) -> EncodedUpdate:
    """Split, clip, noise and encrypt one update into its two chunk streams."""
    count = encrypted_count(vector.size, mode.encrypts, mask.count if mask else None)
    if count == vector.size:
        encrypted, rest = vector, np.empty(0)
    elif count == 0:  # no encryption: the plaintext baseline
        encrypted, rest = np.empty(0), vector
    else:
        assert mask is not None
        encrypted, rest = mask.split(vector)
        rest = add_dp_noise(np.clip(rest, -clip_bound, clip_bound), dp)
    ct_plan, pt_plan = stream_plans(vector.size, values_per_chunk, count)
    ciphertext = list(mode.encrypt_vector(encrypted)) if count else []
    plaintext = [c.astype("<f4").tobytes() for c in pt_plan.split(rest)]
    return EncodedUpdate(ciphertext, plaintext, ct_plan, pt_plan)


def decode_update(
    header: pb.AggregateHeader,
    chunks: list[pb.Chunk],
    mode: KeyMode,
    mask: EncryptionMask | None,
    values_per_chunk: int,
) -> np.ndarray:
    """Decrypt/decode a downloaded aggregate back into the (weighted-sum) vector."""
    total = int(header.num_values)
    encrypts = mode.encrypts and header.ciphertext_chunks > 0
    count = encrypted_count(total, encrypts, mask.count if mask else None)
    ct_plan, pt_plan = stream_plans(total, values_per_chunk, count)
    if (header.ciphertext_chunks, header.plaintext_chunks) != (ct_plan.count, pt_plan.count):
        raise FedHEError("aggregate's chunk counts do not fit this client's mask")
    dense = mode.decrypt_stream(header, chunks, ct_plan) if count else np.zeros(0)
    rest = np.zeros(total - count)
    seen = set()
    for chunk in chunks:
        if chunk.stream == pb.STREAM_KIND_PLAINTEXT:
            if not 0 <= chunk.index < pt_plan.count:
                raise FedHEError(f"aggregate plaintext chunk {chunk.index} out of range")
            start, stop = pt_plan.bounds(chunk.index)
            rest[start:stop] = decode_float32(chunk.payload, stop - start)
            seen.add(chunk.index)
    if len(seen) != pt_plan.count:
        raise FedHEError(f"aggregate has {len(seen)} plaintext chunks, expected {pt_plan.count}")
    if mask is not None and 0 < count < total:
        return mask.merge(dense, rest)
    return dense if count else rest
