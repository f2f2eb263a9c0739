"""The secret-key holder: key generation, encryption and decryption.

Only clients and the key authority use this module. The aggregation server has
no import path to it (a test checks this).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import tenseal.sealapi as sa

from fedhe_common.crypto import envelope, packing, release, sealbytes, validate
from fedhe_common.crypto.codec import to_blob
from fedhe_common.crypto.context import CKKSContext, PublicParams
from fedhe_common.crypto.envelope import BlobKind
from fedhe_common.crypto.presets import Preset
from fedhe_common.crypto.public import load_public_key
from fedhe_common.errors import InvalidArgumentError, KeyMaterialError

_SELF_TEST = np.array([1.0, -2.5, 3.25, 0.125])


def _raw_seal_bytes(obj: Any) -> bytes:
    return sealbytes.to_uncompressed(sealbytes.save_bytes(obj))


class SecretKeyHolder:
    """Holds the job's secret and public key; encrypts uploads and decrypts aggregates."""

    def __init__(self, ctx: CKKSContext, secret_key: sa.SecretKey, public_key: sa.PublicKey):
        self.ctx = ctx
        self.preset = ctx.preset
        self._secret_key = secret_key
        self._public_key = public_key
        self._sym = sa.Encryptor(ctx.seal, secret_key)
        self._pk = sa.Encryptor(ctx.seal, public_key)
        self._decryptor = sa.Decryptor(ctx.seal, secret_key)

    # -- construction ------------------------------------------------------------------
    @classmethod
    def generate(cls, preset: Preset) -> SecretKeyHolder:
        """Generate a fresh key pair for ``preset`` (key authority, tests, benchmarks)."""
        bare = CKKSContext(PublicParams(preset, b"\0" * 32))
        keygen = sa.KeyGenerator(bare.seal)
        public_key = sa.PublicKey()
        keygen.create_public_key(public_key)
        pk_hash = hashlib.sha256(_raw_seal_bytes(public_key)).digest()
        ctx = CKKSContext(PublicParams(preset, pk_hash))
        return cls(ctx, keygen.secret_key(), public_key)

    @classmethod
    def from_blobs(
        cls, params: PublicParams, secret_key_blob: bytes, public_key_blob: bytes
    ) -> SecretKeyHolder:
        """Rebuild a holder from exported key blobs; checks the pair belongs together."""
        ctx = CKKSContext(params)
        public_key = load_public_key(ctx, public_key_blob)
        try:
            _, seal = envelope.unwrap(
                secret_key_blob, frozenset({BlobKind.SECRET_KEY}), ctx.fingerprint
            )
            secret_key = sa.SecretKey()
            sealbytes.load_into(secret_key, ctx.seal, seal)
        except Exception as exc:
            raise KeyMaterialError(f"not a secret key for this context: {exc}") from None
        holder = cls(ctx, secret_key, public_key)
        holder._check_pair()
        return holder

    def _check_pair(self) -> None:
        ct = sa.Ciphertext()
        self._pk.encrypt(packing.encode(self.ctx.encoder, self.preset, _SELF_TEST), ct)
        pt = sa.Plaintext()
        self._decryptor.decrypt(ct, pt)
        got = packing.decode(self.ctx.encoder, self.preset, pt)[: _SELF_TEST.size]
        if not np.allclose(got, _SELF_TEST, atol=1e-3):
            raise KeyMaterialError("secret key does not match the public key")

    # -- export ------------------------------------------------------------------------
    @property
    def params(self) -> PublicParams:
        """Public parameters (safe to give the server)."""
        return self.ctx.params

    @property
    def fingerprint(self) -> bytes:
        """The context fingerprint."""
        return self.ctx.fingerprint

    def export_public_key(self) -> bytes:
        """PUBLIC_KEY blob (uncompressed SEAL bytes, hashed into the fingerprint)."""
        return envelope.wrap(
            BlobKind.PUBLIC_KEY, self.fingerprint, _raw_seal_bytes(self._public_key)
        )

    def export_secret_key(self) -> bytes:
        """SECRET_KEY blob. Hand it only to enrolled clients; never log it."""
        return envelope.wrap(
            BlobKind.SECRET_KEY, self.fingerprint, _raw_seal_bytes(self._secret_key)
        )

    def secret_residues(self) -> np.ndarray:
        """The secret key's residues, one row of N per prime (the special prime's too),
        in SEAL's NTT form (for :mod:`.compact`)."""
        raw = sealbytes.plaintext_array(sealbytes.save_bytes(self._secret_key))
        return raw.reshape(-1, self.ctx.n).copy()

    def _refuse_compact(self) -> None:
        if self.preset.coefficient_encoded:
            raise InvalidArgumentError(
                f"preset {self.preset.name!r} encrypts with fedhe_common.crypto.compact or "
                "compactfast, not CKKS"
            )

    # -- crypto ------------------------------------------------------------------------
    def encrypt(self, values: np.ndarray) -> bytes:
        """Encrypt up to one ciphertext's worth of values the preset's way.

        Seeded symmetric encryption sends only c0 plus a 64-byte seed (half the
        bytes of a public-key ciphertext) and is only possible with the secret key.
        """
        return self._encrypt_plaintext(packing.encode(self.ctx.encoder, self.preset, values))

    def encrypt_vector(self, values: np.ndarray) -> Iterator[bytes]:
        """Encrypt a whole vector lazily, one blob per ``values_per_ciphertext`` values.

        The same blobs as :meth:`encrypt` on each chunk, with the checks,
        clipping and packing done once for the vector.
        """
        for pt in packing.encode_vector(self.ctx.encoder, self.preset, values):
            yield self._encrypt_plaintext(pt)

    def _encrypt_plaintext(self, pt: sa.Plaintext) -> bytes:
        self._refuse_compact()
        if self.preset.encryption == "seeded-symmetric":
            return to_blob(self.ctx, self._sym.encrypt_symmetric(pt), BlobKind.CIPHERTEXT_SEEDED)
        ct = sa.Ciphertext()
        self._pk.encrypt(pt, ct)
        return to_blob(self.ctx, ct, BlobKind.CIPHERTEXT)

    def decrypt(
        self, blob: bytes, *, aggregate: bool = True, weight_sum: float = 1.0
    ) -> np.ndarray:
        """Validate and decrypt a ciphertext blob to ``values_per_ciphertext`` reals.

        ``aggregate`` selects the expected kind and scale: a server weighted sum
        (default) or a single fresh upload. The values are rounded to the release
        grid for ``weight_sum`` (the round's sum of weights; 1 for an upload), so no
        exact decryption ever leaves this object (:mod:`.release`).
        """
        self._refuse_compact()
        grid_weight = weight_sum if aggregate else 1.0
        release.output_grid(self.preset, grid_weight)  # bad input changes nothing
        if aggregate:
            kinds, scale = validate.AGGREGATE_KINDS, self.preset.scale * self.preset.weight_scale
        else:
            kinds, scale = validate.UPLOAD_KINDS, self.preset.scale
        ct = validate.load_ciphertext(self.ctx, blob, kinds, scale)
        pt = sa.Plaintext()
        self._decryptor.decrypt(ct, pt)
        decoded = packing.decode(self.ctx.encoder, self.preset, pt)
        return release.public_values(self.preset, decoded, grid_weight)
