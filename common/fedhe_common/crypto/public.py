"""Encryption with a public key only (clients that must not hold the secret key)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import tenseal.sealapi as sa

from fedhe_common.crypto import envelope, packing, sealbytes
from fedhe_common.crypto.codec import to_blob
from fedhe_common.crypto.context import CKKSContext, PublicParams
from fedhe_common.crypto.envelope import BlobKind
from fedhe_common.errors import KeyMaterialError


def load_public_key(ctx: CKKSContext, blob: bytes) -> sa.PublicKey:
    """Load a PUBLIC_KEY blob and check it is the key the parameters are bound to."""
    try:
        _, seal = envelope.unwrap(blob, frozenset({BlobKind.PUBLIC_KEY}), ctx.fingerprint)
    except Exception as exc:
        raise KeyMaterialError(f"not a public key for this context: {exc}") from None
    if hashlib.sha256(seal).digest() != ctx.params.public_key_sha256:
        raise KeyMaterialError("public key does not match the context's public-key hash")
    pk = sa.PublicKey()
    try:
        sealbytes.load_into(pk, ctx.seal, seal)
    except (RuntimeError, ValueError) as exc:
        raise KeyMaterialError(f"SEAL rejected the public key ({exc})") from None
    return pk


class PublicKeyEncryptor:
    """Encrypts vectors with the job's public key; cannot decrypt."""

    def __init__(self, params: PublicParams, public_key_blob: bytes) -> None:
        self.ctx = CKKSContext(params)
        self.preset = self.ctx.preset
        self._encryptor = sa.Encryptor(self.ctx.seal, load_public_key(self.ctx, public_key_blob))

    @property
    def fingerprint(self) -> bytes:
        """The context fingerprint carried by every blob this encryptor makes."""
        return self.ctx.fingerprint

    def encrypt(self, values: np.ndarray) -> bytes:
        """Clip, encode and encrypt up to one ciphertext's worth of values."""
        return self._encrypt_plaintext(packing.encode(self.ctx.encoder, self.preset, values))

    def encrypt_vector(self, values: np.ndarray) -> Iterator[bytes]:
        """Encrypt a whole vector lazily, one blob per ``values_per_ciphertext`` values."""
        for pt in packing.encode_vector(self.ctx.encoder, self.preset, values):
            yield self._encrypt_plaintext(pt)

    def _encrypt_plaintext(self, pt: sa.Plaintext) -> bytes:
        ct = sa.Ciphertext()
        self._encryptor.encrypt(pt, ct)
        return to_blob(self.ctx, ct, BlobKind.CIPHERTEXT)
