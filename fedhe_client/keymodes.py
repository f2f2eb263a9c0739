"""A job's key mode as a type: ``Plain``, ``SingleKey`` or ``Threshold`` behind one protocol.

The agent asks its mode to encrypt the values that travel encrypted and to turn a
downloaded aggregate's ciphertext stream back into weighted sums; which values
travel encrypted is decided by :func:`fedhe_common.mlbridge.streams.encrypted_count`
alone. A new mode is a new class here, not a new branch in the agent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from fedhe_client.threshold_member import ThresholdMember
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common._proto.fedhe.keyauth.v1 import keyauth_pb2, keyauth_pb2_grpc
from fedhe_common.config.models import ClientConfig, JobConfig
from fedhe_common.crypto.compact import CompactCipher
from fedhe_common.crypto.compactfast import FastCipher
from fedhe_common.crypto.context import PublicParams
from fedhe_common.crypto.public import PublicKeyEncryptor
from fedhe_common.crypto.secret import SecretKeyHolder
from fedhe_common.errors import FedHEError, KeyMaterialError
from fedhe_common.mlbridge.chunking import ChunkPlan
from fedhe_common.rpc.connection import PeerConnection


class KeyMode(Protocol):
    """What the agent needs of a key mode."""

    name: str
    encrypts: bool
    fingerprint: bytes
    # True when one aggregate ciphertext decrypts on its own, as it streams in (single
    # key); False when every chunk waits for other data (the parties' shares).
    decrypts_chunkwise: bool
    # How many streamed chunks ``decrypt_chunks`` takes at once (numpy engines batch).
    decrypt_batch: int

    def encrypt_vector(self, values: np.ndarray) -> Iterator[bytes]:
        """One ciphertext blob per chunk of ``values`` (clipped to the preset's bound)."""
        ...

    def decrypt_chunks(self, blobs: list[bytes], weight_sum: int) -> np.ndarray:
        """Aggregate ciphertexts as weighted sums, each blob's values in turn (only where
        ``decrypts_chunkwise``)."""
        ...

    def decrypt_stream(
        self, header: pb.AggregateHeader, chunks: list[pb.Chunk], plan: ChunkPlan
    ) -> np.ndarray:
        """The ciphertext stream of an aggregate as ``plan.total`` weighted sums."""
        ...


def _ciphertexts(chunks: list[pb.Chunk], plan: ChunkPlan) -> dict[int, bytes]:
    blobs = {c.index: c.payload for c in chunks if c.stream == pb.STREAM_KIND_CIPHERTEXT}
    if sorted(blobs) != list(range(plan.count)):
        raise FedHEError(f"aggregate has {len(blobs)} ciphertext chunks, expected {plan.count}")
    return blobs


class Plain:
    """No encryption (``encryption.mode: none``): the plaintext baseline."""

    name = "plain"
    encrypts = False
    fingerprint = b""
    decrypts_chunkwise = False
    decrypt_batch = 1

    def decrypt_chunks(self, blobs: list[bytes], weight_sum: int) -> np.ndarray:
        raise FedHEError("ciphertext in a job without encryption")

    def encrypt_vector(self, values: np.ndarray) -> Iterator[bytes]:
        if values.size:
            raise FedHEError("a plaintext job encrypts nothing")
        return iter(())

    def decrypt_stream(
        self, header: pb.AggregateHeader, chunks: list[pb.Chunk], plan: ChunkPlan
    ) -> np.ndarray:
        if plan.count or any(c.stream == pb.STREAM_KIND_CIPHERTEXT for c in chunks):
            raise FedHEError("ciphertext in a job without encryption")
        return np.zeros(0)


class SingleKey:
    """Every client holds the job's secret key (from the key authority)."""

    name = "single-key"
    encrypts = True
    decrypts_chunkwise = True
    decrypt_batch = 1

    def __init__(self, holder: SecretKeyHolder) -> None:
        self.holder = holder
        self.fingerprint = holder.fingerprint

    def encrypt_vector(self, values: np.ndarray) -> Iterator[bytes]:
        return self.holder.encrypt_vector(values)

    def decrypt_stream(
        self, header: pb.AggregateHeader, chunks: list[pb.Chunk], plan: ChunkPlan
    ) -> np.ndarray:
        blobs = _ciphertexts(chunks, plan)
        weight_sum = max(1, int(header.weight_sum))  # sizes the decryptor's release grid
        out = np.empty(plan.total)
        for k in range(plan.count):
            start, stop = plan.bounds(k)
            out[start:stop] = self.holder.decrypt(blobs[k], weight_sum=weight_sum)[: stop - start]
        return out

    def decrypt_chunks(self, blobs: list[bytes], weight_sum: int) -> np.ndarray:
        return np.concatenate([self.holder.decrypt(b, weight_sum=weight_sum) for b in blobs])


class Compact:
    """``single-key-compact``: c0-only uploads of model deltas; sums decrypt as a whole
    (chunk 0 names every contributor's seed, needed for all chunks)."""

    name = "single-key-compact"
    encrypts = True
    decrypts_chunkwise = False
    decrypt_batch = 1

    def __init__(self, cipher: CompactCipher | FastCipher) -> None:
        self.cipher = cipher
        self.fingerprint = cipher.fingerprint

    def encrypt_vector(self, values: np.ndarray) -> Iterator[bytes]:
        return self.cipher.encrypt_vector(values)

    def decrypt_chunks(self, blobs: list[bytes], weight_sum: int) -> np.ndarray:
        raise FedHEError("a compact aggregate decrypts as a whole stream")

    def decrypt_stream(
        self, header: pb.AggregateHeader, chunks: list[pb.Chunk], plan: ChunkPlan
    ) -> np.ndarray:
        blobs = _ciphertexts(chunks, plan)
        ordered = [blobs[k] for k in range(plan.count)]
        return self.cipher.decrypt_chunks(ordered, plan.total, max(1, int(header.weight_sum)))


class Fast(Compact):
    """``single-key-fast``: exact two-limb coefficient RLWE; the server sums c0 and c1,
    so each aggregate chunk decrypts on its own as it streams in."""

    name = "single-key-fast"
    decrypts_chunkwise = True
    decrypt_batch = 32  # chunks per numpy call, as the cipher's own blocks
    cipher: FastCipher

    def decrypt_chunks(self, blobs: list[bytes], weight_sum: int) -> np.ndarray:
        return self.cipher.decrypt_chunks(blobs, len(blobs) * self.cipher.n, weight_sum)


class Threshold:
    """No single key: t of N parties decrypt together; uploads use the collective key."""

    name = "threshold"
    encrypts = True
    decrypts_chunkwise = False
    decrypt_batch = 1

    def decrypt_chunks(self, blobs: list[bytes], weight_sum: int) -> np.ndarray:
        raise FedHEError("a threshold aggregate decrypts only with the parties' shares")

    def __init__(self, member: ThresholdMember, public: PublicKeyEncryptor) -> None:
        self.member = member
        self.public = public
        self.fingerprint = public.fingerprint

    def encrypt_vector(self, values: np.ndarray) -> Iterator[bytes]:
        return self.public.encrypt_vector(values)

    def decrypt_stream(
        self, header: pb.AggregateHeader, chunks: list[pb.Chunk], plan: ChunkPlan
    ) -> np.ndarray:
        _ciphertexts(chunks, plan)
        return self.member.decode(header, chunks, plan)


def key_mode(
    config: ClientConfig, job_id: str, job: JobConfig, server_fingerprint: bytes
) -> KeyMode:
    """The job's key mode, with its keys fetched or generated."""
    if job.threshold_keys:
        member = ThresholdMember(config, job_id, job)
        params, public_key = member.generate_keys()
        return Threshold(member, PublicKeyEncryptor(params, public_key))
    if job.encryption.mode == "ckks":
        holder = fetch_secret_key(config, job_id)
        if holder.fingerprint != server_fingerprint:
            raise KeyMaterialError("server and key authority disagree on the job's context")
        if holder.preset.encryption == "seeded-fast":
            return Fast(FastCipher(holder, f"{job_id}/{config.client_id}"))
        if holder.preset.encryption == "seeded-compact":
            job_dir = hashlib.sha256(job_id.encode()).hexdigest()[:24]  # any id, safe path
            store = Path(config.state_dir) / "compact" / job_dir if config.state_dir else None
            return Compact(CompactCipher(holder, f"{job_id}/{config.client_id}", store))
        return SingleKey(holder)
    return Plain()


def fetch_secret_key(config: ClientConfig, job_id: str) -> SecretKeyHolder:
    """Get the job's keys from the key authority (client identities only)."""
    conn = PeerConnection(config.keyauth, keyauth_pb2_grpc.KeyAuthorityServiceStub, 4 << 20)
    try:
        reply = conn.call("FetchClientKey", keyauth_pb2.FetchClientKeyRequest(job_id=job_id))
    finally:
        conn.close()
    params = PublicParams.from_json(reply.public_params_json)
    return SecretKeyHolder.from_blobs(params, reply.secret_key, reply.public_key)
