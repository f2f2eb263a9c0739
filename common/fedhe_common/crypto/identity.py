"""Ed25519 identity keys of threshold parties (issue 10, findings 3 and 5).

Each party makes one at key generation (kept 0600 in its state dir) and registers the
public key with the key authority. It signs what others must be able to attribute to
it: its X25519 sealing key, its public-key share commitment, the sealed blobs it sends
and every upload's statement (manifest + chunk hashes). A job may pin the keys
(``participants.identity_keys: {client_id: sha256 hex}``, the admin's word); without a
pin, the key registered with the key authority is believed (trust on first use).
"""

from __future__ import annotations

import hashlib
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fedhe_common.errors import InvalidArgumentError, PermissionDeniedError

KEY_BYTES = 32
SIGNATURE_BYTES = 64
_RAW = serialization.Encoding.Raw
_PREFIX = b"fedhe-identity-v1\x00"
# Signature domains (parts in brackets).
SEALING_KEY = "sealing-key"  # (job_id, client_id, X25519 public key)
COMMITMENT = "pk-share-commitment"  # (job_id, alpha, sha256 commitment)
SEALED = "sealed-blob"  # (job_id, purpose, from_alpha, to_alpha, blob)
DECRYPTION_SHARE = "decryption-share"  # (job_id, round, chunk, alpha, sha256 of the share)


def new_private_key() -> bytes:
    """A fresh Ed25519 private key (32 raw bytes)."""
    return Ed25519PrivateKey.generate().private_bytes(
        _RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def public_key(private: bytes) -> bytes:
    """The 32-byte public key of a private key."""
    return (
        Ed25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(_RAW, serialization.PublicFormat.Raw)
    )


def key_digest(public: bytes) -> str:
    """sha256 hex of a public key: what ``participants.identity_keys`` pins."""
    return hashlib.sha256(public).hexdigest()


def message(domain: str, *parts: bytes | str | int) -> bytes:
    """Unambiguous bytes for a signature: a domain, then length-prefixed parts."""
    out = bytearray(_PREFIX + domain.encode() + b"\x00")
    for part in parts:
        if isinstance(part, int):
            data = b"i" + str(part).encode()
        elif isinstance(part, str):
            data = b"s" + part.encode()
        else:
            data = b"b" + bytes(part)
        out += struct.pack("<Q", len(data)) + data
    return bytes(out)


def sign(private: bytes, domain: str, *parts: bytes | str | int) -> bytes:
    """Ed25519 signature over :func:`message`."""
    return Ed25519PrivateKey.from_private_bytes(private).sign(message(domain, *parts))


def verify(public: bytes, signature: bytes, domain: str, *parts: bytes | str | int) -> None:
    """Raise :class:`PermissionDeniedError` unless ``signature`` verifies."""
    if len(public) != KEY_BYTES:
        raise InvalidArgumentError("an identity key is 32 bytes (Ed25519)")
    if len(signature) != SIGNATURE_BYTES:
        raise PermissionDeniedError(f"{domain}: missing or malformed signature")
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message(domain, *parts))
    except InvalidSignature:
        raise PermissionDeniedError(f"{domain}: signature does not verify") from None


def check_pin(client_id: str, public: bytes, pins: dict[str, str] | None) -> None:
    """Refuse an identity key that does not match the job's pin for ``client_id``."""
    if len(public) != KEY_BYTES:
        raise InvalidArgumentError(f"identity key of {client_id!r} is not 32 bytes")
    if not pins:
        return
    want = pins.get(client_id)
    if want is None:
        raise PermissionDeniedError(f"client {client_id!r} has no pinned identity key")
    if want.lower() != key_digest(public):
        raise PermissionDeniedError(
            f"identity key of {client_id!r} does not match the job's pinned sha256"
        )
