"""A model update <-> its two upload streams (encrypted masked part, float32 rest)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.models import DPSection
from fedhe_common.crypto.secret import SecretKeyHolder
from fedhe_common.errors import FedHEError
from fedhe_common.mlbridge.accumulate import decode_float32
from fedhe_common.mlbridge.chunking import ChunkPlan
from fedhe_common.mlbridge.masks import EncryptionMask
from fedhe_common.mlbridge.streams import stream_plans


def add_dp_noise(values: np.ndarray, dp: DPSection) -> np.ndarray:
    """Laplace or Gaussian noise of ``dp.scale`` per value, from OS entropy.

    This is local output perturbation of the *plaintext* coordinates only, applied
    after clipping; it gives (eps, delta)-DP for those coordinates only when the
    scale is calibrated to the clip bound and the number of rounds, which FedHE
    does not do for you. Encrypted coordinates get no noise (the server never sees
    them).
    """
    if dp.mechanism == "none":
        return values
    rng = np.random.default_rng()
    if dp.mechanism == "laplace":
        return values + rng.laplace(0.0, dp.scale, values.size)
    return values + rng.normal(0.0, dp.scale, values.size)


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


class Encrypts(Protocol):
    """Anything that encrypts a vector chunk by chunk (secret or public key)."""

    def encrypt_vector(self, values: np.ndarray) -> Iterator[bytes]: ...


def encode_update(
    vector: np.ndarray,
    holder: Encrypts | None,
    mask: EncryptionMask | None,
    values_per_chunk: int,
    clip_bound: float,
    dp: DPSection,
) -> EncodedUpdate:
    """Split, clip, noise and encrypt one update into its two chunk streams."""
    if holder is None:  # no encryption: the plaintext baseline
        encrypted, rest = np.empty(0), vector
    elif mask is None:
        encrypted, rest = vector, np.empty(0)
    else:
        encrypted, rest = mask.split(vector)
        rest = add_dp_noise(np.clip(rest, -clip_bound, clip_bound), dp)
    ct_plan, pt_plan = stream_plans(encrypted.size + rest.size, values_per_chunk, encrypted.size)
    ciphertext = list(holder.encrypt_vector(encrypted)) if holder else []
    plaintext = [c.astype("<f4").tobytes() for c in pt_plan.split(rest)]
    return EncodedUpdate(ciphertext, plaintext, ct_plan, pt_plan)


def decode_update(
    header: pb.AggregateHeader,
    chunks: list[pb.Chunk],
    holder: SecretKeyHolder | None,
    mask: EncryptionMask | None,
    values_per_chunk: int,
) -> np.ndarray:
    """Decrypt/decode a downloaded aggregate back into the (weighted-sum) vector."""
    total = int(header.num_values)
    if header.ciphertext_chunks == 0:
        encrypted = 0
    elif mask is None:
        encrypted = total
    else:
        encrypted = mask.count
    ct_plan, pt_plan = stream_plans(total, values_per_chunk, encrypted)
    weight_sum = max(1, int(header.weight_sum))  # sizes the decryptor's release grid
    if (header.ciphertext_chunks, header.plaintext_chunks) != (ct_plan.count, pt_plan.count):
        raise FedHEError("aggregate's chunk counts do not fit this client's mask")
    dense = np.zeros(encrypted)
    rest = np.zeros(total - encrypted)
    seen = set()
    for chunk in chunks:
        if chunk.stream == pb.STREAM_KIND_CIPHERTEXT:
            if holder is None:
                raise FedHEError("ciphertext in a job without encryption")
            start, stop = ct_plan.bounds(chunk.index)
            dense[start:stop] = holder.decrypt(chunk.payload, weight_sum=weight_sum)[
                : stop - start
            ]
        else:
            start, stop = pt_plan.bounds(chunk.index)
            rest[start:stop] = decode_float32(chunk.payload, stop - start)
        seen.add((chunk.stream, chunk.index))
    if len(seen) != ct_plan.count + pt_plan.count:
        raise FedHEError(
            f"aggregate has {len(seen)} chunks, expected {ct_plan.count + pt_plan.count}"
        )
    if mask is not None and encrypted:
        return mask.merge(dense, rest)
    return dense if encrypted else rest
