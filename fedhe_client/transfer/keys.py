"""The data owner's CKKS keys for one transfer job, made on the device.

The secret key never leaves this module's objects except in the owner's own saved state
(``to_bytes``, kept on the device with mode 0600 by the caller). ``eval_blob`` is what
goes to the key authority: public, relinearisation and exactly the trainer's Galois keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import tenseal.sealapi as sa

from fedhe_common.crypto import sealbytes
from fedhe_common.hetal import blobs
from fedhe_common.hetal.params import TransferParams
from fedhe_common.hetal.seal_backend import (
    ChainParams,
    SealBackend,
    SealCT,
    build_context,
    galois_elements,
)
from fedhe_common.hetal.trainer import chain_params, pack_eval_keys, rotation_steps

KEYS_MAGIC = b"HOK1"
MAX_KEYS_BYTES = 8 << 30


KeySet = tuple[sa.SEALContext, sa.SecretKey, sa.PublicKey, sa.RelinKeys, sa.GaloisKeys]


def generate_keys(chain: ChainParams, steps: Sequence[int]) -> KeySet:
    """A fresh context and keys; Galois keys for exactly ``steps`` (+ conjugation)."""
    ctx = build_context(chain)
    gen = sa.KeyGenerator(ctx)
    public, relin, galois = sa.PublicKey(), sa.RelinKeys(), sa.GaloisKeys()
    gen.create_public_key(public)
    gen.create_relin_keys(relin)
    gen.create_galois_keys(galois_elements(steps, chain.n), galois)
    return ctx, gen.secret_key(), public, relin, galois


class CheckingBackend:
    """An evaluation backend with its secret key beside it, for benchmarks and tests that
    check encrypted results (never used by the services)."""

    def __init__(self, chain: ChainParams, steps: Sequence[int]) -> None:
        ctx, secret, public, relin, galois = generate_keys(chain, steps)
        self.be: SealBackend = SealBackend(chain, public, relin, galois, context=ctx)
        self._decryptor = sa.Decryptor(ctx, secret)

    def decrypt(self, ct: SealCT) -> np.ndarray:
        """Slot values of ``ct`` (with its exact factor)."""
        pt = sa.Plaintext()
        self._decryptor.decrypt(ct.ct, pt)
        return self.be.decode(pt, ct.f)


@dataclass
class OwnerKeys:
    """Secret, public, relinearisation and Galois keys of one job, with their context."""

    params: TransferParams
    ctx: sa.SEALContext
    secret: sa.SecretKey
    public: sa.PublicKey
    relin: sa.RelinKeys
    galois: sa.GaloisKeys
    _bytes: bytes | None = field(default=None, repr=False, compare=False)

    @classmethod
    def generate(cls, params: TransferParams) -> OwnerKeys:
        """Fresh keys; Galois keys for exactly :func:`rotation_steps` (+ conjugation)."""
        return cls(params, *generate_keys(chain_params(params), rotation_steps(params)))

    def eval_blob(self) -> bytes:
        """Public + relinearisation + Galois keys; never the secret key."""
        return pack_eval_keys(
            sealbytes.save_bytes(self.public),
            sealbytes.save_bytes(self.relin),
            sealbytes.save_bytes(self.galois),
        )

    def encryptor(self) -> SealBackend:
        """A backend that encrypts fresh ciphertexts with the public key (no eval keys)."""
        return SealBackend(chain_params(self.params), public_key=self.public, context=self.ctx)

    def decryptor(self) -> Decrypt:
        """Decrypts this job's ciphertexts (owner side only)."""
        return Decrypt(self)

    def to_bytes(self) -> bytes:
        """All keys incl. the secret key: for the owner's own state on its device only.

        Serialised once (the keys never change; the Galois keys are tens of MB).
        """
        if self._bytes is not None:
            return self._bytes
        groups = {
            name: [sealbytes.save_bytes(getattr(self, name))]
            for name in ("secret", "public", "relin", "galois")
        }
        self._bytes = blobs.pack(KEYS_MAGIC, {"params": self.params.to_json()}, groups)
        return self._bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> OwnerKeys:
        """Inverse of :meth:`to_bytes`."""
        meta, groups = blobs.unpack(KEYS_MAGIC, data, MAX_KEYS_BYTES)
        params = TransferParams.from_json(meta["params"])
        ctx = build_context(chain_params(params))
        keys = (sa.SecretKey(), sa.PublicKey(), sa.RelinKeys(), sa.GaloisKeys())
        for key, name in zip(keys, ("secret", "public", "relin", "galois"), strict=True):
            sealbytes.load_into(key, ctx, groups[name][0])
        return cls(params, ctx, *keys, _bytes=bytes(data))


class Decrypt:
    """Decryption of the trainer's ciphertexts (bytes with the exact factor) to slots."""

    def __init__(self, keys: OwnerKeys) -> None:
        self._decryptor = sa.Decryptor(keys.ctx, keys.secret)
        self._backend = SealBackend(chain_params(keys.params), context=keys.ctx)

    def __call__(self, blob: bytes) -> np.ndarray:
        """Complex slot values of a serialized ciphertext (validated first)."""
        ct: SealCT = self._backend.deserialize(blob)
        pt = sa.Plaintext()
        self._decryptor.decrypt(ct.ct, pt)
        return self._backend.decode(pt, ct.f)
