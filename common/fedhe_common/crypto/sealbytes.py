"""SEAL objects <-> bytes in memory, and the SEAL 4.x byte layout.

``tenseal.sealapi`` binds only ``save(path)`` / ``load(ctx, path)``. We give SEAL
a path into an anonymous in-memory file (``memfd_create`` + ``/proc/self/fd``),
one per thread, so no ciphertext ever touches the disk on the hot path.

Layout of a SEAL blob (little-endian)::

    SEALHeader (16 B): u16 magic 0xA15E, u8 header_size=16, u8 major, u8 minor,
                       u8 compr_mode (0 none, 1 zlib, 2 zstd), u16 reserved,
                       u64 total size including the header
    Ciphertext members (offsets in the uncompressed blob):
      16 parms_id 4xu64 | 48 is_ntt u8 | 49 size u64 | 57 N u64 | 65 k u64 |
      73 scale f64 | 81 correction_factor u64 | 89 DynArray header (16 B) |
      105 count u64 | 113 data count x u64, index [poly][prime][coeff]
      seeded: count = k*N (c0 only), then 81 B of PRNG info (SEALHeader + u8 type + 64 B seed)
"""

from __future__ import annotations

import os
import struct
import threading
from typing import Any, Protocol

import numpy as np
import zstandard

SEAL_MAGIC = 0xA15E
SEAL_HEADER = struct.Struct("<HBBBBHQ")
CT_META = struct.Struct("<4QBQQQdQ")
CT_DATA_OFFSET = 113
PRNG_INFO_BYTES = 16 + 1 + 64
COMPR_NONE = 0
COMPR_ZSTD = 2


class _Saveable(Protocol):
    def save(self, path: str) -> None: ...


class _Loadable(Protocol):
    def load(self, context: Any, path: str) -> None: ...


class _MemFile:
    """An anonymous in-memory file whose path SEAL's file streams can open."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("fedhe-seal", os.MFD_CLOEXEC)
        self.path = f"/proc/self/fd/{self.fd}"

    def write(self, data: bytes) -> str:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        return self.path

    def read(self) -> bytes:
        return os.pread(self.fd, os.fstat(self.fd).st_size, 0)


_local = threading.local()


def _memfile() -> _MemFile:
    mf = getattr(_local, "memfile", None)
    if mf is None:
        mf = _local.memfile = _MemFile()
    return mf


def _decompressor() -> zstandard.ZstdDecompressor:
    # Building a decompressor costs ~8 us, five times the work on a 32 KiB blob.
    dctx = getattr(_local, "zstd", None)
    if dctx is None:
        dctx = _local.zstd = zstandard.ZstdDecompressor()
    return dctx


def save_bytes(obj: _Saveable) -> bytes:
    """Serialize a SEAL object with its own ``save`` (SEAL default compression)."""
    mf = _memfile()
    obj.save(mf.path)
    return mf.read()


def load_into(obj: _Loadable, context: Any, data: bytes) -> None:
    """Load ``data`` into a SEAL object; SEAL's own validity checks run here."""
    mf = _memfile()
    obj.load(context, mf.write(data))


def read_header(blob: bytes) -> tuple[int, int, int, int, int, int, int]:
    """Unpack the 16-byte SEALHeader: magic, header_size, major, minor, compr, reserved, size."""
    return SEAL_HEADER.unpack_from(blob, 0)


def to_uncompressed(blob: bytes) -> bytes:
    """Rewrite a trusted SEAL blob (our own ``save`` output) with compr_mode none.

    Only for bytes this process produced: untrusted bytes go through
    :mod:`fedhe_common.crypto.validate` instead.
    """
    magic, hsize, major, minor, compr, _, size = read_header(blob)
    if compr == COMPR_NONE:
        return blob
    if compr != COMPR_ZSTD or magic != SEAL_MAGIC or hsize != 16:
        raise ValueError("unexpected SEAL header in locally produced blob")
    members = _decompressor().decompressobj().decompress(memoryview(blob)[16:size])
    return (
        SEAL_HEADER.pack(SEAL_MAGIC, 16, major, minor, COMPR_NONE, 0, 16 + len(members)) + members
    )


ZSTD_MAX_WINDOW = 1 << 23  # SEAL's frames for our sizes use far smaller windows
_INFLATE_INPUT_STEP = 64  # compressed bytes per step: a few zstd blocks


def inflate_bounded(data: bytes | memoryview, limit: int) -> bytes:
    """Inflate exactly one untrusted zstd frame to at most ``limit`` bytes, or raise ValueError.

    Input is fed in small steps, so neither a frame's declared content size nor its
    real output can make this allocate much more than ``limit`` bytes (one step of
    input inflates to a few blocks at most), and the window is capped. The frame must
    end exactly at the end of ``data``: trailing bytes are refused.
    ``ZstdDecompressor.decompress(max_output_size=...)`` is not a bound: it trusts a
    frame's declared content size.
    """
    dobj = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).decompressobj()
    view = memoryview(data)
    out = bytearray()
    pos = 0
    try:
        while pos < len(view) and not dobj.eof:
            out += dobj.decompress(view[pos : pos + _INFLATE_INPUT_STEP])
            pos += _INFLATE_INPUT_STEP
            if len(out) > limit:
                raise ValueError(f"zstd stream inflates past the {limit}-byte bound")
    except zstandard.ZstdError as exc:
        raise ValueError(f"not a valid zstd stream ({exc})") from None
    if not dobj.eof:
        raise ValueError("zstd stream is empty or truncated")
    if pos < len(view) or dobj.unused_data:
        raise ValueError("trailing bytes after the zstd frame")
    return bytes(out)


def ciphertext_lengths(n: int, k: int) -> tuple[int, int]:
    """Exact uncompressed byte lengths of (full, seeded) size-2 ciphertexts."""
    full = CT_DATA_OFFSET + 8 * 2 * k * n
    seeded = CT_DATA_OFFSET + 8 * k * n + PRNG_INFO_BYTES
    return full, seeded


# -- arrays <-> blobs (for threshold arithmetic on residues) ------------------------
PT_META = struct.Struct("<4QQd")
PT_DATA_OFFSET = 88
_VERSION = (4, 3)


def _dynarray(words: np.ndarray) -> bytes:
    flat = np.ascontiguousarray(words, dtype="<u8").ravel()
    head = SEAL_HEADER.pack(SEAL_MAGIC, 16, *_VERSION, COMPR_NONE, 0, 24 + 8 * flat.size)
    return head + struct.pack("<Q", flat.size) + flat.tobytes()


def _wrap(members: bytes) -> bytes:
    return SEAL_HEADER.pack(SEAL_MAGIC, 16, *_VERSION, COMPR_NONE, 0, 16 + len(members)) + members


def build_ciphertext(
    parms_id: tuple[int, ...], data: np.ndarray, scale: float, ntt: bool = True
) -> bytes:
    """Uncompressed SEAL ciphertext bytes from a (size, k, N) residue array."""
    size, k, n = data.shape
    meta = CT_META.pack(*parms_id, 1 if ntt else 0, size, n, k, float(scale), 1)
    return _wrap(meta + _dynarray(data))


def ciphertext_array(blob: bytes) -> np.ndarray:
    """(size, k, N) residues of a full SEAL ciphertext (any compression)."""
    raw = to_uncompressed(blob)
    _, _, _, _, _, size, n, k, _, _ = CT_META.unpack_from(raw, 16)
    (count,) = struct.unpack_from("<Q", raw, 105)
    if count != size * k * n:
        raise ValueError("not a full (unseeded) ciphertext")
    return np.frombuffer(raw, dtype="<u8", count=count, offset=CT_DATA_OFFSET).reshape(size, k, n)


def build_plaintext(parms_id: tuple[int, ...], data: np.ndarray, scale: float) -> bytes:
    """Uncompressed SEAL plaintext bytes (NTT form when ``parms_id`` is non-zero)."""
    flat = np.ascontiguousarray(data, dtype="<u8").ravel()
    return _wrap(PT_META.pack(*parms_id, flat.size, float(scale)) + _dynarray(flat))


def plaintext_array(blob: bytes) -> np.ndarray:
    """Flat uint64 residues of a SEAL plaintext or secret key."""
    raw = to_uncompressed(blob)
    (count,) = struct.unpack_from("<Q", raw, 80)
    return np.frombuffer(raw, dtype="<u8", count=count, offset=PT_DATA_OFFSET)
