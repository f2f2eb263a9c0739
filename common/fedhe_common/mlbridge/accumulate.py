"""Streaming accumulators: add chunk k of one client at a time.

Without a ``path`` the sums live in memory (one model). With a ``path`` they live in
one residue file on disk, read and written record by record (``pread``/``pwrite``),
so memory is O(one chunk) whatever the model size: ciphertext sums are kept as
their integer residues mod each data prime (adding in place is exact), plaintext
sums as float64. The file is derived state: a new accumulator truncates it, so a
half-written file left by a crash is simply rebuilt from the committed uploads.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tenseal.sealapi as sa

from fedhe_common.crypto import envelope, sealbytes
from fedhe_common.crypto.aggregate import CiphertextAggregator
from fedhe_common.crypto.envelope import BlobKind
from fedhe_common.errors import InvalidArgumentError, ManifestMismatchError
from fedhe_common.mlbridge.chunking import ChunkPlan


class RecordFile:
    """Fixed-size records of one file, zero until written; one record in memory at a time."""

    def __init__(self, path: Path, size: int, fresh: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # ``fresh=False``: open the file another process made (a chunk-range worker).
        flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if fresh else 0)
        fd = os.open(path, flags, 0o600)
        try:
            os.ftruncate(fd, size)  # sparse: every record starts as zeros
        finally:
            os.close(fd)
        self.path = path

    def read(self, offset: int, nbytes: int) -> bytes:
        """``nbytes`` at ``offset``."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            data = os.pread(fd, nbytes, offset)
        finally:
            os.close(fd)
        if len(data) != nbytes:
            raise InvalidArgumentError(f"accumulator file {self.path.name} is truncated")
        return data

    def write(self, offset: int, data: bytes) -> None:
        """Overwrite ``len(data)`` bytes at ``offset``."""
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)


class EncryptedAccumulator:
    """Per-chunk weighted sums of ciphertexts for one round (in memory or on disk)."""

    def __init__(
        self,
        aggregator: CiphertextAggregator,
        plan: ChunkPlan,
        path: Path | None = None,
        fresh: bool = True,
    ) -> None:
        if plan.values_per_chunk != aggregator.preset.values_per_ciphertext:
            raise InvalidArgumentError("chunk size must equal the preset's values per ciphertext")
        self.aggregator = aggregator
        self.plan = plan
        self.weight_sum = 0.0
        ctx = aggregator.ctx
        self._shape = (2, ctx.k, ctx.n)
        self._primes = ctx.data_primes.reshape(1, ctx.k, 1)
        self._record = 8 * 2 * ctx.k * ctx.n
        self._file = (
            RecordFile(path, self._record * plan.count, fresh) if path is not None else None
        )
        self._sums: list[sa.Ciphertext | None] = [None] * (0 if path else plan.count)
        self._added = bytearray(plan.count)
        self._scale: float | None = None

    def add(self, index: int, blob: bytes, weight: float) -> None:
        """Validate chunk ``index`` of one upload and add ``weight`` times it."""
        self.plan.bounds(index)
        ct = self.aggregator.load_upload(blob)
        if self._file is None:
            self._sums[index] = self.aggregator.add_weighted(self._sums[index], ct, weight)
        else:
            self._add_on_disk(index, self.aggregator.add_weighted(None, ct, weight))
        self._added[index] = 1

    def _add_on_disk(self, index: int, ct: sa.Ciphertext) -> None:
        if self._scale is None:
            self._scale = float(ct.scale)
        elif ct.scale != self._scale:
            raise InvalidArgumentError("ciphertext scale differs from the round's sum")
        arr = sealbytes.ciphertext_array(sealbytes.save_bytes(ct))
        if arr.shape != self._shape:
            raise InvalidArgumentError(f"ciphertext shape {arr.shape}, expected {self._shape}")
        offset = index * self._record
        current = np.frombuffer(self._file.read(offset, self._record), dtype="<u8")  # type: ignore[union-attr]
        total = current.reshape(self._shape) + arr  # both < q < 2^61: no overflow
        total = np.where(total >= self._primes, total - self._primes, total)
        self._file.write(offset, total.astype("<u8").tobytes())  # type: ignore[union-attr]

    @property
    def scale(self) -> float | None:
        """The scale of the on-disk sums (None until a chunk was added)."""
        return self._scale

    def mark_added(self, indices: range, scale: float | None) -> None:
        """Record chunks that chunk-range workers added into this file (at ``scale``)."""
        if scale is not None and self._scale is not None and scale != self._scale:
            raise InvalidArgumentError("ciphertext scale differs from the round's sum")
        if scale is not None:
            self._scale = scale
        for k in indices:
            self.plan.bounds(k)
            self._added[k] = 1

    def add_upload(self, blobs: list[bytes] | tuple[bytes, ...], weight: float) -> None:
        """Add every chunk of one client's upload and count its weight once."""
        if len(blobs) != self.plan.count:
            raise ManifestMismatchError(f"upload has {len(blobs)} chunks, plan {self.plan.count}")
        self.aggregator.preset.check_weight_sum(self.weight_sum + weight)
        for k, blob in enumerate(blobs):
            self.add(k, blob, weight)
        self.weight_sum += weight

    def chunk_blob(self, index: int) -> bytes:
        """Serialized weighted sum of chunk ``index``."""
        self.plan.bounds(index)
        if not self._added[index]:
            raise InvalidArgumentError(f"chunk {index} has no contribution yet")
        if self._file is None:
            ct = self._sums[index]
            assert ct is not None
            return self.aggregator.to_blob(ct)
        assert self._scale is not None
        words = np.frombuffer(
            self._file.read(index * self._record, self._record), dtype="<u8"
        ).reshape(self._shape)
        ctx = self.aggregator.ctx
        data = sealbytes.build_ciphertext(ctx.first_parms_id, words, self._scale)
        if ctx.preset.compression == "none":  # the bytes SEAL would save, without a round trip
            return envelope.wrap(BlobKind.CIPHERTEXT, ctx.fingerprint, data)
        loaded = sa.Ciphertext()
        sealbytes.load_into(loaded, ctx.seal, data)
        return self.aggregator.to_blob(loaded)


class PlainAccumulator:
    """Float64 weighted sums of float32 plaintext chunks (baseline and unmasked part)."""

    def __init__(self, plan: ChunkPlan, path: Path | None = None, fresh: bool = True) -> None:
        self.plan = plan
        self._file = RecordFile(path, 8 * plan.total, fresh) if path is not None else None
        self._sum = np.zeros(0 if path else plan.total, dtype=np.float64)
        self.weight_sum = 0.0

    @property
    def sum(self) -> np.ndarray:
        """The whole sum (reads the file when on disk: for tests and small models)."""
        if self._file is None:
            return self._sum
        return np.concatenate([self.chunk_values(k) for k in range(self.plan.count)])

    def chunk_values(self, index: int) -> np.ndarray:
        """The float64 sum of chunk ``index``."""
        start, stop = self.plan.bounds(index)
        if self._file is None:
            return self._sum[start:stop]
        return np.frombuffer(self._file.read(8 * start, 8 * (stop - start)), dtype="<f8")

    def add(self, index: int, payload: bytes, weight: float) -> None:
        """Add ``weight`` times chunk ``index`` given as little-endian float32 bytes."""
        start, stop = self.plan.bounds(index)
        values = decode_float32(payload, stop - start)
        if self._file is None:
            self._sum[start:stop] += weight * values
            return
        total = self.chunk_values(index) + weight * values
        self._file.write(8 * start, total.astype("<f8").tobytes())


def decode_float32(payload: bytes, expected: int) -> np.ndarray:
    """Little-endian float32 bytes -> float64 array of exactly ``expected`` finite values."""
    if len(payload) != 4 * expected:
        raise InvalidArgumentError(f"expected {4 * expected} plaintext bytes, got {len(payload)}")
    values = np.frombuffer(payload, dtype="<f4").astype(np.float64)
    if not np.isfinite(values).all():
        raise InvalidArgumentError("plaintext chunk contains NaN or infinity")
    return values
