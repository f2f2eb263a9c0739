"""Server sums for the coefficient presets: residues added with numpy, no SEAL, no key.

``single-key-compact`` sums c0 (one limb); ``single-key-fast`` sums c0 and the
seeded a's (c1) per RNS limb, so each of its published chunks decrypts alone.
Each upload chunk declares its range exponent x (``|v| < 2^x``, scale
``2^(value_bits - x)``). A chunk's sum lives at the finest scale seen so far, X = min x:
an upload is added times ``w * 2^(x - X)``, and a finer upload arriving later
multiplies the running sum by ``2^(X - x)`` first. Before any addition the
effective weight ``sum w_i 2^(x_i - X)`` is checked against the prime, so a sum
that could wrap raises :class:`ValueRangeError` and changes nothing. Every upload
carries its seed id; one id contributes at most once per chunk, and a
:class:`SeedRegistry` refuses an id seen in another round's sum.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedhe_common.crypto import compactwire as cw
from fedhe_common.crypto.presets import Preset
from fedhe_common.errors import (
    InvalidArgumentError,
    InvalidCiphertextError,
    ManifestMismatchError,
    ValueRangeError,
)
from fedhe_common.mlbridge.accumulate import EncryptedAccumulator, RecordFile
from fedhe_common.mlbridge.chunking import ChunkPlan

_BLOCK = 32  # chunks per seed expansion (fast preset)


@dataclass
class SeedRegistry:
    """Seed ids per sum (one job): an id may only ever feed one round's sum."""

    owners: dict[bytes, str] = field(default_factory=dict)

    def claim(self, upload_id: bytes, owner: str) -> None:
        """Record ``upload_id`` for ``owner`` or refuse it if another sum used it."""
        first = self.owners.setdefault(upload_id, owner)
        if first != owner:
            raise InvalidCiphertextError(
                "upload seed id was already used in another round: a reused nonce would "
                "reuse the public a"
            )


@dataclass
class _Chunk:
    exponent: int | None = None  # common X (None: only all-zero chunks so far)
    members: dict[bytes, int | None] = field(default_factory=dict)  # uid -> exponent at join


class CompactAccumulator(EncryptedAccumulator):
    """Per-chunk c0 (and, for ``single-key-fast``, c1) sums of one round, per RNS limb
    (same interface as :class:`EncryptedAccumulator`).

    Sums are kept unreduced in uint64: every term is ``w 2^shift c`` with c < 2^32 and
    the checked effective weight below the scheme's limit (< 2^23), so no sum reaches
    2^64; reduction mod q_j happens once, when a chunk is published.
    """

    # No SEAL state: the base class initializer is deliberately not called.
    def __init__(
        self,
        preset: Preset,
        fingerprint: bytes,
        plan: ChunkPlan,
        path: Path | None = None,
        seeds: SeedRegistry | None = None,
    ) -> None:
        n = preset.poly_modulus_degree
        if plan.values_per_chunk != n:
            raise InvalidArgumentError("chunk size must equal the preset's ring degree")
        self.plan, self.preset, self.fingerprint = plan, preset, fingerprint
        self.weight_sum = 0.0
        self.scheme = cw.scheme(preset)
        self._ring = cw.CompactRing(preset) if self.scheme.server_sums_a else None
        self._n, self._limbs = n, self.scheme.primes
        self._limit = self.scheme.value_limit
        assert self._limit < 1 << 32  # unreduced sums stay below 2^64
        self._shape = (2 if self.scheme.server_sums_a else 1, len(self._limbs), n)
        self._record = 8 * int(np.prod(self._shape))
        self._file = RecordFile(path, self._record * plan.count) if path is not None else None
        self._mem = np.zeros((0 if path else plan.count, *self._shape), dtype=np.uint64)
        self._chunks = [_Chunk() for _ in range(plan.count)]
        self._weights: dict[bytes, int] = {}
        self._base_id: bytes | None = None
        self._seeds = seeds if seeds is not None else SeedRegistry()
        self._owner = str(path) if path is not None else f"memory-{id(self)}"
        self._a_block: tuple[bytes, int, np.ndarray] | None = None  # (uid, first, a)

    def _read(self, index: int) -> np.ndarray:
        if self._file is None:
            return self._mem[index]
        raw = self._file.read(index * self._record, self._record)
        return np.frombuffer(raw, dtype="<u8").astype(np.uint64).reshape(self._shape)

    def _write(self, index: int, words: np.ndarray) -> None:
        if self._file is None:
            self._mem[index] = words
        else:
            self._file.write(index * self._record, words.astype("<u8").tobytes())

    def _a_row(self, uid: bytes, index: int) -> np.ndarray:
        """The a (limbs, N) of chunk ``index`` of upload ``uid``, expanded 32 chunks ahead
        per AES call (an upload's chunks are added in order)."""
        assert self._ring is not None
        block = self._a_block
        if block is None or block[0] != uid or not 0 <= index - block[1] < block[2].shape[1]:
            count = min(_BLOCK, self.plan.count - index)
            block = self._a_block = (uid, index, self._ring.expand_limbs(uid, index, count))
        return block[2][:, index - block[1]]

    def add(self, index: int, blob: bytes, weight: float) -> None:
        """Validate chunk ``index`` of one upload and add it with integer ``weight``."""
        self.plan.bounds(index)
        if weight != int(weight) or not 1 <= weight < 2**32:
            raise InvalidArgumentError(f"weight must be a positive 32-bit integer, got {weight!r}")
        w = int(weight)
        up = cw.unpack_upload(blob, self.fingerprint, self._n, self._limbs)
        chunk = self._chunks[index]
        if up.upload_id in chunk.members:
            raise InvalidCiphertextError("this seed id already contributed to this chunk")
        if self._weights.get(up.upload_id, w) != w:
            raise ManifestMismatchError("one upload's chunks carry different weights")
        if self._base_id is not None and up.base_id != self._base_id:
            raise ManifestMismatchError(
                "upload is a delta against another global model than this round's others"
            )
        x = None if up.exponent == cw.EXP_ANY else up.exponent
        old = chunk.exponent
        new = x if old is None else old if x is None else min(old, x)
        members = {u: (e if e is not None else new) for u, e in chunk.members.items()}
        members[up.upload_id] = x if x is not None else new
        effective = sum(
            self._weights.get(u, w) << (0 if e is None or new is None else e - new)
            for u, e in members.items()
        )
        if effective > self._limit:
            raise ValueRangeError(
                f"chunk {index}: effective weight {effective} (weights times 2^range "
                f"differences between clients) exceeds {self._limit}; the sum would wrap"
            )
        self._seeds.claim(up.upload_id, self._owner)
        total = self._read(index)
        if old is not None and new is not None and new < old:
            total = total << np.uint64(old - new)  # still < 2^32 * effective < 2^64
        factor = np.uint64(w << (0 if x is None or new is None else x - new))
        total[0] += up.c0 * factor
        if self._ring is not None:
            total[1] += self._a_row(up.upload_id, index) * factor
        self._write(index, total)
        chunk.exponent, chunk.members = new, members
        self._weights.setdefault(up.upload_id, w)
        self._base_id = up.base_id

    def _reduced(self, index: int) -> np.ndarray:
        q = np.array(self._limbs, dtype=np.uint64)[:, None]
        return self._read(index) % q

    def chunk_blob(self, index: int) -> bytes:
        """The published sum of chunk ``index`` (compact: chunk 0 carries the contributor
        table; fast: c0 and c1, decryptable on its own)."""
        self.plan.bounds(index)
        chunk = self._chunks[index]
        if not chunk.members:
            raise InvalidArgumentError(f"chunk {index} has no contribution yet")
        if set(chunk.members) != set(self._weights):
            raise InvalidArgumentError(f"chunk {index} lacks some contributor's chunk")
        x = chunk.exponent
        exponent = cw.EXP_ANY if x is None else x
        sums = self._reduced(index)
        if self.scheme.server_sums_a:
            return cw.pack_sum(self.fingerprint, exponent, len(chunk.members), sums[0], sums[1])
        shifts = [
            0 if x is None or e is None else e - x
            for e in (chunk.members[u] for u in self._weights)
        ]
        table = list(self._weights.items()) if index == 0 else None
        assert self._base_id is not None
        return cw.pack_aggregate(
            self.fingerprint, self._base_id, exponent, table, shifts, sums[0, 0]
        )

    def add_upload(self, blobs: list[bytes] | tuple[bytes, ...], weight: float) -> None:
        """Add every chunk of one client's upload and count its weight once."""
        if len(blobs) != self.plan.count:
            raise ManifestMismatchError(f"upload has {len(blobs)} chunks, plan {self.plan.count}")
        for k, blob in enumerate(blobs):
            self.add(k, blob, weight)
        self.weight_sum += weight
