"""A SEAL CKKS context built from a preset, and the context fingerprint.

The fingerprint is ``sha256("fedhe-context-v1" || canonical preset JSON ||
coefficient primes || sha256(public key))``. Every blob carries it, so a
ciphertext made under other parameters or another key set is refused before
SEAL sees it, and the server can pin the job's context without holding any key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import tenseal.sealapi as sa

from fedhe_common.crypto.presets import Preset, get_preset
from fedhe_common.crypto.sealbytes import ciphertext_lengths
from fedhe_common.errors import ConfigError, KeyMaterialError

_FINGERPRINT_DOMAIN = b"fedhe-context-v1\x00"


@dataclass(frozen=True)
class PublicParams:
    """What every party may know: the preset and a hash binding the key set."""

    preset: Preset
    public_key_sha256: bytes

    def to_json(self) -> str:
        """Canonical JSON (sorted keys) for the wire and for fingerprints."""
        return json.dumps(
            {
                "preset": _preset_dict(self.preset),
                "public_key_sha256": self.public_key_sha256.hex(),
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> PublicParams:
        """Parse :meth:`to_json` output; the preset must match a known name's SEAL parameters."""
        try:
            doc = json.loads(text)
            fields = doc["preset"]
            base = get_preset(fields["name"])
            preset = dataclasses.replace(base, clip_bound=float(fields["clip_bound"]))
            if _preset_dict(preset) != fields:
                raise KeyMaterialError(
                    f"parameters for preset {base.name!r} differ from this build's definition"
                )
            pk_hash = bytes.fromhex(doc["public_key_sha256"])
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyMaterialError(f"malformed public parameters: {exc}") from None
        if len(pk_hash) != 32:
            raise KeyMaterialError("public_key_sha256 must be 32 bytes")
        return cls(preset=preset, public_key_sha256=pk_hash)


def _preset_dict(preset: Preset) -> dict[str, object]:
    d = dataclasses.asdict(preset)
    d["coeff_modulus_bits"] = list(preset.coeff_modulus_bits)
    return d


def build_seal_context(preset: Preset) -> sa.SEALContext:
    """Build and check a SEAL CKKS context at 128-bit security."""
    parms = sa.EncryptionParameters(sa.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(preset.poly_modulus_degree)
    parms.set_coeff_modulus(
        sa.CoeffModulus.Create(preset.poly_modulus_degree, list(preset.coeff_modulus_bits))
    )
    ctx = sa.SEALContext(parms, True, sa.SEC_LEVEL_TYPE.TC128)
    if not ctx.parameters_set():
        raise ConfigError(
            f"preset {preset.name!r} is not a valid SEAL context: {ctx.parameters_error_message()}"
        )
    return ctx


class CKKSContext:
    """A preset's SEAL context plus everything derived from it (no key material)."""

    def __init__(self, params: PublicParams) -> None:
        self.params = params
        self.preset = params.preset
        self.seal = build_seal_context(self.preset)
        self.encoder = sa.CKKSEncoder(self.seal)
        self.evaluator = sa.Evaluator(self.seal)
        first = self.seal.first_context_data()
        self.data_primes = np.array(
            [m.value() for m in first.parms().coeff_modulus()], dtype=np.uint64
        )
        self.all_primes = [m.value() for m in self.seal.key_context_data().parms().coeff_modulus()]
        self.first_parms_id = tuple(int(x) for x in self.seal.first_parms_id())
        self.n = self.preset.poly_modulus_degree
        self.k = len(self.data_primes)
        self.full_ct_bytes, self.seeded_ct_bytes = ciphertext_lengths(self.n, self.k)

    @cached_property
    def fingerprint(self) -> bytes:
        """sha256 over parameters, actual primes and the public-key hash."""
        h = hashlib.sha256(_FINGERPRINT_DOMAIN)
        h.update(self.params.to_json().encode())
        h.update(np.array(self.all_primes, dtype="<u8").tobytes())
        return h.digest()
