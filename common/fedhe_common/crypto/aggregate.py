"""Server-side CKKS arithmetic from public parameters only.

:class:`CiphertextAggregator` validates untrusted ciphertexts, multiplies them
by their weight and adds them. It is built from :class:`PublicParams`, holds no
key of any kind, has no decrypt method, and this module imports nothing that
can load a secret key.
"""

from __future__ import annotations

import tenseal.sealapi as sa

from fedhe_common.crypto import validate
from fedhe_common.crypto.codec import to_blob
from fedhe_common.crypto.context import CKKSContext, PublicParams
from fedhe_common.crypto.envelope import BlobKind
from fedhe_common.errors import InvalidArgumentError


class CiphertextAggregator:
    """Weighted sums of ciphertexts for one context; no key material."""

    def __init__(self, params: PublicParams) -> None:
        if not isinstance(params, PublicParams):
            raise TypeError("CiphertextAggregator takes PublicParams, never key material")
        self.ctx = CKKSContext(params)
        self.preset = self.ctx.preset
        self._weights: dict[float, sa.Plaintext] = {}

    @property
    def fingerprint(self) -> bytes:
        """The context fingerprint every accepted blob must carry."""
        return self.ctx.fingerprint

    @property
    def aggregate_scale(self) -> float:
        """Scale of a weighted sum: Delta, times the weight scale for real weights."""
        return self.preset.scale * self.preset.weight_scale

    def check_upload(self, blob: bytes) -> None:
        """Every check on an uploaded ciphertext that needs no SEAL call (cheap)."""
        validate.check_ciphertext_bytes(self.ctx, blob, validate.UPLOAD_KINDS, self.preset.scale)

    def load_upload(self, blob: bytes) -> sa.Ciphertext:
        """Validate an uploaded ciphertext fully and load it."""
        return validate.load_ciphertext(self.ctx, blob, validate.UPLOAD_KINDS, self.preset.scale)

    def load_aggregate(self, blob: bytes) -> sa.Ciphertext:
        """Validate and load a weighted sum (e.g. a stored partial aggregate)."""
        return validate.load_ciphertext(
            self.ctx, blob, validate.AGGREGATE_KINDS, self.aggregate_scale
        )

    def _weight_plaintext(self, weight: float) -> sa.Plaintext:
        pt = self._weights.get(weight)
        if pt is None:
            pt = sa.Plaintext()
            pid = self.ctx.seal.first_parms_id()
            if self.preset.weight_mode == "integer":
                self.ctx.encoder.encode(int(weight), pid, 1.0, pt)
            else:
                self.ctx.encoder.encode(float(weight), pid, self.preset.weight_scale, pt)
            self._weights[weight] = pt
        return pt

    def check_weight(self, weight: float) -> float:
        """Normalise one client weight for this preset or raise InvalidArgumentError."""
        if self.preset.weight_mode == "integer":
            if weight != int(weight) or weight < 1:
                raise InvalidArgumentError(f"weight must be a positive integer, got {weight!r}")
            return float(int(weight))
        if not (0 < weight < float("inf")):
            raise InvalidArgumentError(f"weight must be positive and finite, got {weight!r}")
        return round(weight * self.preset.weight_scale) / self.preset.weight_scale

    def add_weighted(
        self, accumulator: sa.Ciphertext | None, ct: sa.Ciphertext, weight: float
    ) -> sa.Ciphertext:
        """Return ``accumulator + weight * ct`` (``ct`` is consumed)."""
        w = self.check_weight(weight)
        if self.preset.weight_mode == "real" or w != 1.0:
            self.ctx.evaluator.multiply_plain_inplace(ct, self._weight_plaintext(w))
        if accumulator is None:
            return ct
        self.ctx.evaluator.add_inplace(accumulator, ct)
        return accumulator

    def to_blob(self, ct: sa.Ciphertext) -> bytes:
        """Serialize an aggregate for clients to download."""
        return to_blob(self.ctx, ct, BlobKind.CIPHERTEXT)
