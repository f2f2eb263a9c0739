"""The aggregation paths compared by ``fedhe bench crypto``.

Each path encrypts a block of values for one client, adds the clients' blocks
with integer weights on a key-less server, serializes the sum and decrypts it.
:class:`SealPath` is ours (any preset); :class:`TenSEALVectorPath` is the
baseline built on TenSEAL's high-level ``CKKSVector`` API.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import tenseal as ts

from fedhe_common.crypto.aggregate import CiphertextAggregator
from fedhe_common.crypto.compact import CompactCipher
from fedhe_common.crypto.compactfast import FastCipher
from fedhe_common.crypto.presets import Preset
from fedhe_common.crypto.secret import SecretKeyHolder
from fedhe_common.mlbridge.chunking import ChunkPlan
from fedhe_common.mlbridge.compact_accumulate import CompactAccumulator


class AggregationPath(Protocol):
    """One way of doing encrypted weighted aggregation."""

    name: str
    values_per_ciphertext: int
    summary: str

    def encrypt(self, values: np.ndarray) -> list[bytes]: ...

    def aggregate(self, uploads: list[list[bytes]], weights: list[int]) -> list[object]: ...

    def serialize(self, sums: list[object]) -> list[bytes]: ...

    def decrypt(self, blobs: list[bytes], count: int) -> np.ndarray: ...


class SealPath:
    """FedHE's path on ``tenseal.sealapi`` for one preset."""

    def __init__(self, name: str, preset: Preset) -> None:
        self.name = name
        self.summary = preset.summary
        self.holder = SecretKeyHolder.generate(preset)
        self.aggregator = CiphertextAggregator(self.holder.params)
        self.values_per_ciphertext = preset.values_per_ciphertext

    def encrypt(self, values: np.ndarray) -> list[bytes]:
        return list(self.holder.encrypt_vector(values))

    def aggregate(self, uploads: list[list[bytes]], weights: list[int]) -> list[object]:
        sums: list[object] = []
        for k in range(len(uploads[0])):
            acc = None
            for blobs, w in zip(uploads, weights, strict=True):
                acc = self.aggregator.add_weighted(acc, self.aggregator.load_upload(blobs[k]), w)
            sums.append(acc)
        return sums

    def serialize(self, sums: list[object]) -> list[bytes]:
        return [self.aggregator.to_blob(ct) for ct in sums]  # type: ignore[arg-type]

    def decrypt(self, blobs: list[bytes], count: int) -> np.ndarray:
        return np.concatenate([self.holder.decrypt(b) for b in blobs])[:count]


class CompactPath:
    """FedHE's numpy-engine presets: ``single-key-compact`` (c0-only uploads and sums)
    and ``single-key-fast`` (two RNS limbs, the server sums c0 and c1).

    The bench's vectors are independent draws, so every compact block is sent against
    the zero base (the worst case for precision: full values, not small deltas).
    """

    def __init__(self, name: str, preset: Preset) -> None:
        self.name = name
        self.summary = preset.summary
        self.preset = preset
        holder = SecretKeyHolder.generate(preset)
        self.cipher: CompactCipher | FastCipher
        if preset.encryption == "seeded-fast":
            self.cipher = FastCipher(holder, "bench/client")
        else:
            self.cipher = CompactCipher(holder, "bench/client")
        self.fingerprint = holder.fingerprint
        self.values_per_ciphertext = preset.values_per_ciphertext
        self._weight_sum = 1

    def encrypt(self, values: np.ndarray) -> list[bytes]:
        return list(self.cipher.encrypt_vector(values))  # a fresh seed id per call

    def aggregate(self, uploads: list[list[bytes]], weights: list[int]) -> list[object]:
        plan = ChunkPlan(len(uploads[0]) * self.values_per_ciphertext, self.values_per_ciphertext)
        acc = CompactAccumulator(self.preset, self.fingerprint, plan)
        for blobs, w in zip(uploads, weights, strict=True):
            acc.add_upload(blobs, w)
        self._weight_sum = sum(weights)
        return [acc]

    def serialize(self, sums: list[object]) -> list[bytes]:
        (acc,) = sums
        assert isinstance(acc, CompactAccumulator)
        return [acc.chunk_blob(k) for k in range(acc.plan.count)]

    def decrypt(self, blobs: list[bytes], count: int) -> np.ndarray:
        if isinstance(self.cipher, FastCipher):
            return self.cipher.decrypt_chunks(blobs, count, self._weight_sum)
        return self.cipher.decrypt_chunks(blobs, count, self._weight_sum, keep_base=False)


class TenSEALVectorPath:
    """Baseline: TenSEAL ``CKKSVector`` per ciphertext, server with a params-only context."""

    def __init__(
        self,
        name: str,
        poly_modulus_degree: int,
        coeff_bits: list[int],
        scale_bits: int,
        symmetric: bool,
        summary: str,
    ) -> None:
        self.name = name
        self.summary = summary
        enc_type = ts.ENCRYPTION_TYPE.SYMMETRIC if symmetric else ts.ENCRYPTION_TYPE.ASYMMETRIC
        self.client_ctx = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree,
            coeff_mod_bit_sizes=coeff_bits,
            encryption_type=enc_type,
            n_threads=1,
        )
        self.client_ctx.global_scale = 2.0**scale_bits
        public = self.client_ctx.serialize(
            save_public_key=False,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        self.server_ctx = ts.context_from(public, n_threads=1)
        self.values_per_ciphertext = poly_modulus_degree // 2

    def encrypt(self, values: np.ndarray) -> list[bytes]:
        plan = ChunkPlan(values.size, self.values_per_ciphertext)
        return [ts.ckks_vector(self.client_ctx, chunk).serialize() for chunk in plan.split(values)]

    def aggregate(self, uploads: list[list[bytes]], weights: list[int]) -> list[object]:
        sums: list[object] = []
        for k in range(len(uploads[0])):
            acc = None
            for blobs, w in zip(uploads, weights, strict=True):
                vec = ts.ckks_vector_from(self.server_ctx, blobs[k]) * w
                acc = vec if acc is None else acc + vec
            sums.append(acc)
        return sums

    def serialize(self, sums: list[object]) -> list[bytes]:
        return [v.serialize() for v in sums]  # type: ignore[attr-defined]

    def decrypt(self, blobs: list[bytes], count: int) -> np.ndarray:
        parts = [np.asarray(ts.ckks_vector_from(self.client_ctx, b).decrypt()) for b in blobs]
        return np.concatenate(parts)[:count]
