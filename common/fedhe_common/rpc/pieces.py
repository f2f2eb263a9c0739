"""Ciphertexts larger than one gRPC message travel as pieces: split, then reassemble.

Both sides name every blob first (size, sha256); a piece is checked against that
description on arrival (index in range, exact length), and a blob is accepted only
when every piece is in and its sha256 matches. Sizes are bounded by the receiver.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from fedhe_common.errors import InvalidArgumentError

# Below the aggregation server's message limit (largest preset chunk + margin).
PIECE_BYTES = 192 * 1024


class Described(Protocol):
    """A protobuf item that describes one blob."""

    size: int
    sha256: bytes


@dataclass(frozen=True)
class BlobInfo:
    """A blob's declared size and sha256 digest."""

    size: int
    sha256: bytes

    @staticmethod
    def of(blob: bytes) -> BlobInfo:
        """The description of ``blob``."""
        return BlobInfo(len(blob), hashlib.sha256(blob).digest())


def piece_count(size: int, piece_bytes: int = PIECE_BYTES) -> int:
    """Pieces of a blob of ``size`` bytes (an empty blob is one empty piece)."""
    return max(1, -(-size // piece_bytes))


def split(blob: bytes, piece_bytes: int = PIECE_BYTES) -> Iterator[tuple[int, bytes]]:
    """(piece index, bytes) of ``blob``."""
    for k in range(piece_count(len(blob), piece_bytes)):
        yield k, blob[k * piece_bytes : (k + 1) * piece_bytes]


def check_infos(infos: Sequence[BlobInfo], max_items: int, max_total: int) -> None:
    """Refuse a description that exceeds the receiver's bounds."""
    if len(infos) > max_items:
        raise InvalidArgumentError(f"{len(infos)} ciphertexts exceed the limit of {max_items}")
    total = sum(i.size for i in infos)
    if total > max_total:
        raise InvalidArgumentError(f"{total} bytes exceed the limit of {max_total}")
    for info in infos:
        if len(info.sha256) != 32:
            raise InvalidArgumentError("every ciphertext needs a 32-byte sha256")


def check_piece(info: BlobInfo, piece: int, data: bytes, piece_bytes: int = PIECE_BYTES) -> None:
    """A piece must lie inside its blob and have exactly the expected length."""
    count = piece_count(info.size, piece_bytes)
    if not 0 <= piece < count:
        raise InvalidArgumentError(f"piece {piece} out of range (blob has {count})")
    expected = min(piece_bytes, info.size - piece * piece_bytes)
    if len(data) != max(expected, 0):
        raise InvalidArgumentError(f"piece {piece} has {len(data)} bytes, expected {expected}")


class Assembler:
    """Collects the pieces of a list of described blobs held in memory (one message)."""

    def __init__(self, infos: Sequence[BlobInfo], piece_bytes: int = PIECE_BYTES) -> None:
        self.infos = list(infos)
        self.piece_bytes = piece_bytes
        self._pieces: list[dict[int, bytes]] = [{} for _ in self.infos]

    @classmethod
    def described(
        cls, items: Iterable[Described], max_items: int, max_total: int,
        piece_bytes: int = PIECE_BYTES,
    ) -> Assembler:  # fmt: skip
        """An assembler for a peer's description (size, sha256 per blob), bounds checked."""
        infos = [BlobInfo(int(i.size), bytes(i.sha256)) for i in items]
        check_infos(infos, max_items, max_total)
        return cls(infos, piece_bytes)

    def add(self, item: int, piece: int, data: bytes) -> None:
        """Keep one piece (checked); a repeated piece must be identical."""
        if not 0 <= item < len(self.infos):
            raise InvalidArgumentError(f"item {item} out of range")
        check_piece(self.infos[item], piece, data, self.piece_bytes)
        self._pieces[item][piece] = data

    def blobs(self) -> tuple[bytes, ...]:
        """Every blob, verified, or :class:`InvalidArgumentError` if one is incomplete."""
        out = []
        for k, (info, pieces) in enumerate(zip(self.infos, self._pieces, strict=True)):
            count = piece_count(info.size, self.piece_bytes)
            if len(pieces) != count:
                raise InvalidArgumentError(f"ciphertext {k} incomplete ({len(pieces)}/{count})")
            blob = b"".join(pieces[p] for p in range(count))
            if hashlib.sha256(blob).digest() != info.sha256:
                raise InvalidArgumentError(f"ciphertext {k}: sha256 mismatch")
            out.append(blob)
        return tuple(out)
