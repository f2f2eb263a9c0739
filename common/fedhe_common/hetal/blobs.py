"""A small, pickle-free container: a JSON header plus named lists of byte strings.

Used for the trainer's and the owner's saved state and for the evaluation-key blob.
Layout: magic (4 bytes), header length (u32 LE), header JSON, then every blob in header
order. Sizes are declared in the header and checked against the bytes actually present.
"""

from __future__ import annotations

import json
import struct
from typing import Any

_LEN = struct.Struct("<I")
MAX_HEADER = 64 << 20


def pack(magic: bytes, meta: dict[str, Any], groups: dict[str, list[bytes]]) -> bytes:
    """``meta`` (JSON-able) and ``groups`` of byte strings -> one byte string."""
    if len(magic) != 4:
        raise ValueError("magic must be 4 bytes")
    header = json.dumps(
        {"meta": meta, "groups": {k: [len(b) for b in v] for k, v in groups.items()}},
        sort_keys=True,
    ).encode()
    parts = [magic, _LEN.pack(len(header)), header]
    for name in sorted(groups):
        parts.extend(groups[name])
    return b"".join(parts)


def unpack(
    magic: bytes, data: bytes, max_bytes: int
) -> tuple[dict[str, Any], dict[str, list[bytes]]]:
    """Inverse of :func:`pack`; ValueError for anything malformed or over ``max_bytes``."""
    if len(data) > max_bytes:
        raise ValueError(f"container of {len(data)} bytes exceeds {max_bytes}")
    if len(data) < 8 or data[:4] != magic:
        raise ValueError(f"not a {magic!r} container")
    (hlen,) = _LEN.unpack_from(data, 4)
    if hlen > min(MAX_HEADER, len(data) - 8):
        raise ValueError("container header length out of range")
    try:
        header = json.loads(data[8 : 8 + hlen])
        meta, sizes = header["meta"], header["groups"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"bad container header: {exc}") from None
    if not isinstance(meta, dict) or not isinstance(sizes, dict):
        raise ValueError("bad container header")
    pos = 8 + hlen
    groups: dict[str, list[bytes]] = {}
    for name in sorted(sizes):
        lens = sizes[name]
        if not isinstance(lens, list) or not all(isinstance(n, int) and n >= 0 for n in lens):
            raise ValueError(f"bad sizes for {name!r}")
        items = []
        for n in lens:
            if pos + n > len(data):
                raise ValueError("container truncated")
            items.append(bytes(data[pos : pos + n]))
            pos += n
        groups[name] = items
    if pos != len(data):
        raise ValueError("trailing bytes after the container")
    return meta, groups
