"""End-to-end encryption between clients through relays that must not read the payload.

* :func:`seal_to` / :func:`open_sealed`: X25519 (ephemeral-static) + HKDF-SHA256 +
  AES-256-GCM to one recipient's public key (Shamir shares, the group key).
* :func:`group_encrypt` / :func:`group_decrypt`: AES-256-GCM under the clients' group
  key (decryption shares, relayed by the server to every client).
The associated data binds each ciphertext to its job, round and purpose.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedhe_common.errors import InvalidArgumentError

_INFO = b"fedhe-e2e-v1"
_RAW = serialization.Encoding.Raw


def new_private_key() -> bytes:
    """A fresh X25519 private key (32 raw bytes)."""
    return X25519PrivateKey.generate().private_bytes(
        _RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def public_key(private: bytes) -> bytes:
    """The 32-byte public key of a private key."""
    return (
        X25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(_RAW, serialization.PublicFormat.Raw)
    )


def _derive(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, None, _INFO + ephemeral + recipient).derive(shared)


def seal_to(recipient_public: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt to one recipient: ephemeral public key || nonce || AES-GCM ciphertext."""
    try:
        peer = X25519PublicKey.from_public_bytes(recipient_public)
    except ValueError:
        raise InvalidArgumentError("recipient public key must be 32 bytes") from None
    eph = X25519PrivateKey.generate()
    eph_pub = eph.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)
    key = _derive(eph.exchange(peer), eph_pub, recipient_public)
    nonce = os.urandom(12)
    return eph_pub + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(private: bytes, blob: bytes, aad: bytes) -> bytes:
    """Decrypt :func:`seal_to` output; any tampering raises InvalidArgumentError."""
    if len(blob) < 32 + 12 + 16:
        raise InvalidArgumentError("sealed blob too short")
    me = X25519PrivateKey.from_private_bytes(private)
    eph_pub, nonce, body = blob[:32], blob[32:44], blob[44:]
    key = _derive(
        me.exchange(X25519PublicKey.from_public_bytes(eph_pub)), eph_pub, public_key(private)
    )
    try:
        return AESGCM(key).decrypt(nonce, body, aad)
    except InvalidTag:
        raise InvalidArgumentError("sealed blob failed authentication") from None


def group_encrypt(group_key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM under the group key: nonce || ciphertext."""
    nonce = os.urandom(12)
    return nonce + AESGCM(group_key).encrypt(nonce, plaintext, aad)


def group_decrypt(group_key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Inverse of :func:`group_encrypt`."""
    if len(blob) < 12 + 16:
        raise InvalidArgumentError("group-encrypted blob too short")
    try:
        return AESGCM(group_key).decrypt(blob[:12], blob[12:], aad)
    except InvalidTag:
        raise InvalidArgumentError("group-encrypted blob failed authentication") from None
