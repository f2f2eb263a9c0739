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

import struct
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


_HEAD = struct.Struct("<bxxxIQ")  # common exponent (EXP_ANY: none yet), contributors, E


@dataclass(frozen=True)
class _Head:
    """A chunk's state at add time, kept in its record next to the sums: the common
    exponent X (None: only all-zero chunks so far), the contributor count and the
    effective weight ``E = sum w_i 2^(x_i - X)``."""

    exponent: int | None = None
    count: int = 0
    effective: int = 0

    def pack(self) -> bytes:
        x = cw.EXP_ANY if self.exponent is None else self.exponent
        return _HEAD.pack(x, self.count, self.effective)

    @classmethod
    def unpack(cls, raw: bytes) -> _Head:
        x, count, effective = _HEAD.unpack_from(raw, 0)
        if not count:  # a record never written (the sparse file's zeros)
            return cls()
        return cls(None if x == cw.EXP_ANY else x, count, effective)


class CompactAccumulator(EncryptedAccumulator):
    """Per-chunk c0 (and, for ``single-key-fast``, c1) sums of one round, per RNS limb
    (same interface as :class:`EncryptedAccumulator`).

    Sums are kept unreduced in uint64: every term is ``w 2^shift c`` with c < 2^32 and
    the checked effective weight below the scheme's limit (< 2^23), so no sum reaches
    2^64; reduction mod q_j happens once, when a chunk is published.

    Each record holds a small header (:class:`_Head`) before the sums, so any process
    can add into chunk k given the file alone: a chunk-range worker opens the existing
    file (``fresh=False``), is told the upload's seed id (:meth:`expect`) and adds its
    range. The main process claims the seed id first (:meth:`claim_upload`) and counts
    the upload once every range succeeded (:meth:`mark_upload`); adding in process, it
    claims and expects the id too, so an upload mixing seed ids is refused at commit.
    The compact preset also needs every member's exponent per chunk (published
    shifts), kept in this process only: its sums are made in the server process.
    """

    # No SEAL state: the base class initializer is deliberately not called.
    def __init__(
        self,
        preset: Preset,
        fingerprint: bytes,
        plan: ChunkPlan,
        path: Path | None = None,
        seeds: SeedRegistry | None = None,
        fresh: bool = True,
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
        self._record = _HEAD.size + 8 * int(np.prod(self._shape))
        self._file = (
            RecordFile(path, self._record * plan.count, fresh) if path is not None else None
        )
        self._mem = np.zeros((0 if path else plan.count, *self._shape), dtype=np.uint64)
        self._heads = [_Head()] * (0 if path else plan.count)
        # compact only: uid -> exponent at join, per chunk (the published shifts)
        self._members: list[dict[bytes, int | None]] | None = (
            None if self.scheme.server_sums_a else [{} for _ in range(plan.count)]
        )
        self._weights: dict[bytes, int] = {}  # this round's uploads, in order of arrival
        self._seen: dict[bytes, bytearray] = {}  # chunks added here, per seed id
        self._base_id: bytes | None = None
        self._expect: bytes | None = None
        self._seeds = seeds if seeds is not None else SeedRegistry()
        self._owner = str(path) if path is not None else f"memory-{id(self)}"
        self._a_block: tuple[bytes, int, np.ndarray] | None = None  # (uid, first, a)

    def _read(self, index: int) -> tuple[_Head, np.ndarray]:
        if self._file is None:
            return self._heads[index], self._mem[index]
        raw = self._file.read(index * self._record, self._record)
        words = np.frombuffer(raw, dtype="<u8", offset=_HEAD.size).astype(np.uint64)
        return _Head.unpack(raw), words.reshape(self._shape)

    def _write(self, index: int, head: _Head, words: np.ndarray) -> None:
        if self._file is None:
            self._heads[index] = head
            self._mem[index] = words
        else:
            data = head.pack() + words.astype("<u8").tobytes()
            self._file.write(index * self._record, data)

    def _a_row(self, uid: bytes, index: int) -> np.ndarray:
        """The a (limbs, N) of chunk ``index`` of upload ``uid``, expanded 32 chunks ahead
        per AES call (an upload's chunks are added in order)."""
        assert self._ring is not None
        block = self._a_block
        if block is None or block[0] != uid or not 0 <= index - block[1] < block[2].shape[1]:
            count = min(_BLOCK, self.plan.count - index)
            block = self._a_block = (uid, index, self._ring.expand_limbs(uid, index, count))
        return block[2][:, index - block[1]]

    # ---------------------------------------------------------- chunk-range workers
    def claim_upload(self, first_chunk: bytes, weight: float) -> tuple[bytes, bytes]:
        """Main process, before workers add an upload: parse its first chunk, check its
        seed id is new in this round and its base matches, claim the id in the job's
        registry; return (seed id, base id) for the workers to check on every chunk."""
        _integer_weight(weight)
        up = cw.unpack_upload(first_chunk, self.fingerprint, self._n, self._limbs)
        if up.upload_id in self._weights:
            raise InvalidCiphertextError("this seed id already contributed to this round")
        if self._base_id is not None and up.base_id != self._base_id:
            raise ManifestMismatchError(
                "upload is a delta against another global model than this round's others"
            )
        self._seeds.claim(up.upload_id, self._owner)
        return up.upload_id, up.base_id

    def expect(self, upload_id: bytes | None, base_id: bytes | None = None) -> None:
        """Every chunk added from now on must carry this seed id (None: any) and base."""
        self._expect = upload_id
        if base_id is not None:
            self._base_id = base_id

    def mark_upload(self, upload_id: bytes, base_id: bytes, weight: float) -> None:
        """Main process: every range of the claimed upload was added by the workers."""
        self._weights.setdefault(upload_id, _integer_weight(weight))
        self._base_id = base_id

    # ------------------------------------------------------------------ adding
    def add(self, index: int, blob: bytes, weight: float) -> None:
        """Validate chunk ``index`` of one upload and add it with integer ``weight``."""
        self.plan.bounds(index)
        w = _integer_weight(weight)
        up = cw.unpack_upload(blob, self.fingerprint, self._n, self._limbs)
        uid = up.upload_id
        if self._expect is not None and uid != self._expect:
            raise ManifestMismatchError(f"chunk {index} carries another seed id than its upload")
        seen = self._seen.get(uid)
        if seen is not None and seen[index]:
            raise InvalidCiphertextError("this seed id already contributed to this chunk")
        if self._weights.get(uid, w) != w:
            raise ManifestMismatchError("one upload's chunks carry different weights")
        if self._base_id is not None and up.base_id != self._base_id:
            raise ManifestMismatchError(
                "upload is a delta against another global model than this round's others"
            )
        x = None if up.exponent == cw.EXP_ANY else up.exponent
        head, total = self._read(index)
        old = head.exponent
        new = x if old is None else old if x is None else min(old, x)
        # a chunk's sum lives at the finest scale seen: E and the sum grow by 2^(X - x)
        drop = 0 if old is None or new is None else old - new
        shift = 0 if x is None or new is None else x - new
        effective = (head.effective << drop) + (w << shift)
        if effective > self._limit:
            raise ValueRangeError(
                f"chunk {index}: effective weight {effective} (weights times 2^range "
                f"differences between clients) exceeds {self._limit}; the sum would wrap"
            )
        self._seeds.claim(uid, self._owner)
        if drop:
            total = total << np.uint64(drop)  # still < 2^32 * effective < 2^64
        factor = np.uint64(w << shift)
        total[0] += up.c0 * factor
        if self._ring is not None:
            total[1] += self._a_row(uid, index) * factor
        self._write(index, _Head(new, head.count + 1, effective), total)
        if self._members is not None:
            members = {u: (e if e is not None else new) for u, e in self._members[index].items()}
            members[uid] = x if x is not None else new
            self._members[index] = members
        if seen is None:
            seen = self._seen[uid] = bytearray(self.plan.count)
        seen[index] = 1
        self._weights.setdefault(uid, w)
        self._base_id = up.base_id

    def chunk_blob(self, index: int) -> bytes:
        """The published sum of chunk ``index`` (compact: chunk 0 carries the contributor
        table; fast: c0 and c1, decryptable on its own)."""
        self.plan.bounds(index)
        head, words = self._read(index)
        if not head.count:
            raise InvalidArgumentError(f"chunk {index} has no contribution yet")
        if head.count != len(self._weights):
            raise InvalidArgumentError(f"chunk {index} lacks some contributor's chunk")
        x = head.exponent
        exponent = cw.EXP_ANY if x is None else x
        sums = words % np.array(self._limbs, dtype=np.uint64)[:, None]
        if self.scheme.server_sums_a:
            return cw.pack_sum(
                self.fingerprint, exponent, head.count, head.effective, sums[0], sums[1]
            )
        assert self._members is not None and self._base_id is not None
        members = self._members[index]
        shifts = [
            0 if x is None or e is None else e - x for e in (members[u] for u in self._weights)
        ]
        table = list(self._weights.items()) if index == 0 else None
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


def _integer_weight(weight: float) -> int:
    if weight != int(weight) or not 1 <= weight < 2**32:
        raise InvalidArgumentError(f"weight must be a positive 32-bit integer, got {weight!r}")
    return int(weight)
