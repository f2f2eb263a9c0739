"""FedHE blob envelope: an explicit type tag and the context fingerprint around SEAL bytes.

SEAL cannot tell a ciphertext from a public key in single-prime contexts, and
it cannot tell which keys made a ciphertext. Every crypto blob FedHE sends or
stores therefore starts with a fixed 40-byte header::

    0  4s  magic b"FHEB"
    4  u8  format version (1)
    5  u8  kind (BlobKind)
    6  u16 reserved, zero
    8  32s context fingerprint (sha256, see context.py)
    40 ...  SEAL blob
"""

from __future__ import annotations

import struct
from enum import IntEnum

from fedhe_common.errors import ContextMismatchError, InvalidCiphertextError

MAGIC = b"FHEB"
VERSION = 1
HEADER = struct.Struct("<4sBBH32s")
HEADER_BYTES = HEADER.size


class BlobKind(IntEnum):
    """What the SEAL bytes inside an envelope are."""

    CIPHERTEXT = 1
    CIPHERTEXT_SEEDED = 2
    PUBLIC_KEY = 3
    SECRET_KEY = 4
    DECRYPTION_SHARE = 5
    CIPHERTEXT_COMPACT = 6  # single-key-compact upload chunk (compactwire.py)
    CIPHERTEXT_COMPACT_SUM = 7  # single-key-compact aggregate chunk
    CIPHERTEXT_FAST = 8  # single-key-fast upload chunk (two RNS limbs of c0)
    CIPHERTEXT_FAST_SUM = 9  # single-key-fast aggregate chunk (c0 and c1, two limbs each)


def wrap(kind: BlobKind, fingerprint: bytes, seal_blob: bytes) -> bytes:
    """Prefix SEAL bytes with the envelope header."""
    if len(fingerprint) != 32:
        raise ValueError("fingerprint must be 32 bytes")
    return HEADER.pack(MAGIC, VERSION, int(kind), 0, fingerprint) + seal_blob


def unwrap(blob: bytes, allowed: frozenset[BlobKind], fingerprint: bytes) -> tuple[BlobKind, bytes]:
    """Check the envelope of untrusted bytes; return (kind, SEAL bytes).

    Raises :class:`InvalidCiphertextError` for a malformed header or a kind not
    in ``allowed``, and :class:`ContextMismatchError` for another fingerprint.
    """
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise InvalidCiphertextError("blob must be bytes")
    if len(blob) < HEADER_BYTES:
        raise InvalidCiphertextError(f"blob too short ({len(blob)} bytes) for a FedHE envelope")
    magic, version, kind_value, reserved, fp = HEADER.unpack_from(blob, 0)
    if magic != MAGIC:
        raise InvalidCiphertextError("not a FedHE blob (bad magic)")
    if version != VERSION:
        raise InvalidCiphertextError(f"unsupported FedHE blob version {version}")
    if reserved != 0:
        raise InvalidCiphertextError("reserved envelope bits are set")
    try:
        kind = BlobKind(kind_value)
    except ValueError:
        raise InvalidCiphertextError(f"unknown blob kind {kind_value}") from None
    if kind not in allowed:
        names = ", ".join(sorted(k.name for k in allowed))
        raise InvalidCiphertextError(f"blob kind {kind.name} not accepted here (expected {names})")
    if fp != fingerprint:
        raise ContextMismatchError(
            f"context fingerprint {fp.hex()[:16]}... does not match this job's "
            f"{fingerprint.hex()[:16]}..."
        )
    return kind, bytes(blob[HEADER_BYTES:])
