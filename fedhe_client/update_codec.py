"""A model update <-> its two upload streams (encrypted masked part, float32 rest)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedhe_client.spool import LazyChunks, SpooledChunks
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

    ciphertext: Sequence[bytes]
    plaintext: Sequence[bytes]
    ct_plan: ChunkPlan
    pt_plan: ChunkPlan

    @property
    def num_bytes(self) -> int:
        """Payload bytes of both streams."""
        ct = self.ciphertext
        ct_bytes = ct.nbytes if isinstance(ct, SpooledChunks) else sum(map(len, ct))
        return ct_bytes + 4 * self.pt_plan.total

    def close(self) -> None:
        """Delete the spool of a pipelined update (nothing for a list)."""
        if isinstance(self.ciphertext, SpooledChunks):
            self.ciphertext.close()


class Float32Chunks(LazyChunks):
    """Chunk k of a vector as little-endian float32 bytes, made when asked for."""

    def __init__(self, values: np.ndarray, plan: ChunkPlan) -> None:
        super().__init__(plan.count)
        self.values = values
        self.plan = plan

    def _chunk(self, k: int) -> bytes:
        start, stop = self.plan.bounds(k)
        return self.values[start:stop].astype("<f4").tobytes()


def encode_update(
    vector: np.ndarray,
    mode: KeyMode,
    mask: EncryptionMask | None,
    values_per_chunk: int,
    clip_bound: float,
    dp: DPSection,
    pipelined: bool = False,
    spool_dir: Path | None = None,
) -> EncodedUpdate:
    """Split, clip, noise and encrypt one update into its two chunk streams.

    ``pipelined``: the ciphertexts are made by a producer thread into a spool file
    (:class:`~fedhe_client.spool.SpooledChunks`) as the uploader asks for them, and
    plaintext chunks are made on demand; call :meth:`EncodedUpdate.close` after."""
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
    if pipelined:  # encrypted on a producer thread while the chunks are sent
        blobs = mode.encrypt_vector(encrypted) if count else iter(())
        ciphertext: Sequence[bytes] = SpooledChunks(blobs, ct_plan.count, spool_dir)
        return EncodedUpdate(ciphertext, Float32Chunks(rest, pt_plan), ct_plan, pt_plan)
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


class StreamingDecoder:
    """Decrypt/decode an aggregate chunk by chunk as it streams in (single-key and
    plaintext jobs: at most the mode's ``decrypt_batch`` ciphertexts are held; threshold
    jobs collect theirs, since the parties' shares are needed for all of them)."""

    def __init__(self, mode: KeyMode, mask: EncryptionMask | None, values_per_chunk: int) -> None:
        self.mode = mode
        self.mask = mask
        self.values_per_chunk = values_per_chunk
        self.header_msg: pb.AggregateHeader | None = None

    def header(self, header: pb.AggregateHeader) -> None:
        """Start (or restart, on a retried download) with the aggregate's header."""
        total = int(header.num_values)
        encrypts = self.mode.encrypts and header.ciphertext_chunks > 0
        self.count = encrypted_count(total, encrypts, self.mask.count if self.mask else None)
        self.ct_plan, self.pt_plan = stream_plans(total, self.values_per_chunk, self.count)
        if (header.ciphertext_chunks, header.plaintext_chunks) != (
            self.ct_plan.count,
            self.pt_plan.count,
        ):
            raise FedHEError("aggregate's chunk counts do not fit this client's mask")
        self.header_msg = header
        self.dense = np.zeros(self.count)
        self.rest = np.zeros(total - self.count)
        self.seen: dict[int, set[int]] = {
            pb.STREAM_KIND_CIPHERTEXT: set(),
            pb.STREAM_KIND_PLAINTEXT: set(),
        }
        self.held: list[pb.Chunk] = []
        self.pending: list[tuple[int, bytes]] = []  # ciphertexts waiting for a full batch
        # Threshold: every chunk waits for the parties' shares, decoded at the end.
        self.collect = self.count > 0 and not self.mode.decrypts_chunkwise

    def chunk(self, chunk: pb.Chunk) -> None:
        """Decode one chunk into place."""
        if self.header_msg is None:
            raise FedHEError("aggregate chunk before its header")
        if self.collect:  # threshold: decoded with the parties' shares at the end
            self.held.append(chunk)
            return
        is_ct = chunk.stream == pb.STREAM_KIND_CIPHERTEXT
        plan = self.ct_plan if is_ct else self.pt_plan
        if chunk.stream not in self.seen or not 0 <= chunk.index < plan.count:
            raise FedHEError(f"aggregate chunk {chunk.index} out of range")
        if chunk.index in self.seen[chunk.stream]:
            raise FedHEError(f"aggregate chunk {chunk.index} sent twice")
        if not is_ct:
            start, stop = plan.bounds(chunk.index)
            self.rest[start:stop] = decode_float32(chunk.payload, stop - start)
        else:
            self.pending.append((chunk.index, chunk.payload))
            if len(self.pending) >= self.mode.decrypt_batch:
                self._decrypt_pending()
        self.seen[chunk.stream].add(chunk.index)

    def _decrypt_pending(self) -> None:
        """Decrypt the held ciphertext chunks in one call and put their values in place."""
        if not self.pending or self.header_msg is None:
            return
        weight_sum = max(1, int(self.header_msg.weight_sum))
        values = self.mode.decrypt_chunks([blob for _, blob in self.pending], weight_sum)
        per_chunk = values.size // len(self.pending)
        for i, (index, _) in enumerate(self.pending):
            start, stop = self.ct_plan.bounds(index)
            self.dense[start:stop] = values[i * per_chunk : i * per_chunk + stop - start]
        self.pending = []

    def result(self) -> np.ndarray:
        """The weighted-sum vector once every chunk has arrived."""
        header = self.header_msg
        if header is None:
            raise FedHEError("aggregate stream had no header")
        if self.collect:
            return decode_update(header, self.held, self.mode, self.mask, self.values_per_chunk)
        self._decrypt_pending()
        for stream, plan in (
            (pb.STREAM_KIND_CIPHERTEXT, self.ct_plan),
            (pb.STREAM_KIND_PLAINTEXT, self.pt_plan),
        ):
            if len(self.seen[stream]) != plan.count:
                raise FedHEError(
                    f"aggregate has {len(self.seen[stream])} chunks, expected {plan.count}"
                )
        if self.mask is not None and 0 < self.count < header.num_values:
            return self.mask.merge(self.dense, self.rest)
        return self.dense if self.count else self.rest
