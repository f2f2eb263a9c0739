"""HETAL's evaluation backend on SEAL (``tenseal.sealapi``): public and evaluation keys only.

Exact scale bookkeeping: SEAL's rescale divides by the dropped prime q_l, which is not
exactly the nominal scale 2^scale_bits (up to ~4e-4 off for 33-bit primes). After each
rescale the ciphertext is relabelled with the nominal scale and the exact correction
``f`` (true value = f x decoded value) is kept next to it in :class:`SealCT`; the next
plaintext multiplication folds ``f`` into its plaintext (encoded at scale q_l), so the
result carries exactly the factor it is asked for and additions stay exact.

Nothing here creates a secret key, a ``Decryptor`` or a ``KeyGenerator``: the data
owner's side (``fedhe_client.transfer``) does that and hands over the public key,
relinearisation keys and exactly the Galois keys :func:`required_steps` names.

Wire format of a ciphertext (:meth:`SealBackend.serialize`): ``b"HTL1"``, the factor as a
little-endian float64, then SEAL's own ``save`` bytes. Owners decrypt ``ct.ct`` and
multiply the decoded slots by ``ct.f`` (see :meth:`SealBackend.decode`).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as sa
import zstandard

from fedhe_common.crypto import sealbytes
from fedhe_common.errors import InvalidArgumentError, InvalidCiphertextError, KeyMaterialError
from fedhe_common.hetal.backend import LevelError, Op, new_counts
from fedhe_common.hetal.chain import (
    ChainParams,
    K,
    build_context,
    galois_elements,
    key_bytes,
    load_key,
    steps_elements,
)

__all__ = [
    "CT_MAGIC",
    "ChainParams",
    "SealBackend",
    "SealCT",
    "build_context",
    "galois_elements",
    "key_bytes",
    "load_key",
    "steps_elements",
]

CT_MAGIC = b"HTL1"
_FACTOR = struct.Struct("<d")
_CT_HEADER = len(CT_MAGIC) + _FACTOR.size
MAX_FACTOR = 1e6
PLAINTEXT_CACHE = 256


@dataclass
class SealCT:
    """A SEAL ciphertext and its exact factor: true value = f x decoded value."""

    ct: sa.Ciphertext
    f: float = 1.0


class SealBackend:
    """CKKS evaluation on SEAL with exact factors; see the module docstring.

    Keys may be SEAL objects or their ``save`` bytes. ``public_key`` is only needed for
    :meth:`encrypt`, ``relin_keys`` for :meth:`mul`, ``galois_keys`` for rotations.
    """

    def __init__(
        self,
        params: ChainParams,
        public_key: sa.PublicKey | bytes | None = None,
        relin_keys: sa.RelinKeys | bytes | None = None,
        galois_keys: sa.GaloisKeys | bytes | None = None,
        context: sa.SEALContext | None = None,
    ) -> None:
        self.params = params
        self.ctx = context if context is not None else build_context(params)
        self.slots = params.slots
        self.scale = float(2**params.scale_bits)
        self.counts = new_counts()
        self.factor_mismatch = 0.0
        self.pk = self._key(sa.PublicKey, public_key)
        self.rk = self._key(sa.RelinKeys, relin_keys)
        self.gk = self._key(sa.GaloisKeys, galois_keys)
        self.ev = sa.Evaluator(self.ctx)
        self.encoder = sa.CKKSEncoder(self.ctx)
        self.encryptor = sa.Encryptor(self.ctx, self.pk) if self.pk is not None else None
        self.parms_ids: list[list[int]] = []
        self.primes: list[float] = []
        cd = self.ctx.first_context_data()
        while cd is not None:
            self.parms_ids.append(list(cd.parms_id()))
            self.primes.append(float(cd.parms().coeff_modulus()[-1].value()))
            cd = cd.next_context_data()
        self.depth = len(self.parms_ids) - 1
        top = self.ctx.first_context_data().parms().coeff_modulus()
        self.max_raw_ct_bytes = sealbytes.ciphertext_lengths(params.n, len(top))[0]
        self._member_sizes = frozenset(
            sealbytes.ciphertext_lengths(params.n, k)[0] - 16 for k in range(1, len(top) + 1)
        )
        self._cache: OrderedDict[tuple[bytes, int, float], sa.Plaintext] = OrderedDict()

    def _key(self, kind: type[K], key: K | bytes | None) -> K | None:
        if key is None or isinstance(key, kind):
            return key
        if isinstance(key, bytes | bytearray | memoryview):
            return load_key(self.ctx, kind, bytes(key))
        raise KeyMaterialError(f"expected {kind.__name__} or bytes, got {type(key).__name__}")

    # -- levels and encoding ---------------------------------------------------------
    def level(self, ct: SealCT) -> int:
        """Levels left (SEAL's chain index)."""
        return int(self.ctx.get_context_data(ct.ct.parms_id()).chain_index())

    def _prime(self, level: int) -> float:
        return self.primes[self.depth - level]

    def factor(self, ct: SealCT) -> float:
        """The ciphertext's exact factor ``ct.f``."""
        return ct.f

    def rescale_ratio(self, level: int) -> float:
        """q_level / scale (the factor a product at ``level`` picks up)."""
        return self._prime(level) / self.scale

    def _encode(self, vec: np.ndarray | complex, level: int, scale: float) -> sa.Plaintext:
        pt = sa.Plaintext()
        pid = self.parms_ids[self.depth - level]
        if np.isscalar(vec):
            self.encoder.encode(complex(vec), pid, scale, pt)  # type: ignore[arg-type]
            return pt
        v = np.asarray(vec)
        if v.shape != (self.slots,):
            raise InvalidArgumentError(f"slot vector of shape {v.shape}, expected ({self.slots},)")
        if np.iscomplexobj(v):
            self.encoder.encode(v.astype(np.complex128).tolist(), pid, scale, pt)
        else:
            self.encoder.encode(v.astype(np.float64).tolist(), pid, scale, pt)
        return pt

    def _cached(self, vec: np.ndarray | complex, level: int, scale: float) -> sa.Plaintext:
        if np.isscalar(vec):
            digest = repr(complex(vec)).encode()  # type: ignore[arg-type]
        else:
            digest = hashlib.blake2b(np.ascontiguousarray(vec).tobytes(), digest_size=16).digest()
        key = (digest, level, scale)
        pt = self._cache.get(key)
        if pt is None:
            pt = self._cache[key] = self._encode(vec, level, scale)
            if len(self._cache) > PLAINTEXT_CACHE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return pt

    def decode(self, pt: sa.Plaintext, factor: float = 1.0) -> np.ndarray:
        """Complex slots of a decrypted plaintext, times the ciphertext's factor."""
        return factor * np.asarray(self.encoder.decode_complex(pt), dtype=np.complex128)

    # -- fresh encryption (public key) -----------------------------------------------
    def encrypt(self, vec: np.ndarray) -> SealCT:
        """Public-key encryption of a real or complex slot vector at the top level."""
        if self.encryptor is None:
            raise KeyMaterialError("this backend has no public key to encrypt with")
        pt = self._encode(np.asarray(vec), self.depth, self.scale)
        ct = sa.Ciphertext()
        self.encryptor.encrypt(pt, ct)
        return SealCT(ct, 1.0)

    # -- arithmetic --------------------------------------------------------------------
    def _at(self, c: SealCT, level: int) -> SealCT:
        if self.level(c) == level:
            return c
        out = sa.Ciphertext()
        self.ev.mod_switch_to(c.ct, self.parms_ids[self.depth - level], out)
        return SealCT(out, c.f)

    def _align(self, a: SealCT, b: SealCT) -> tuple[SealCT, SealCT]:
        lvl = min(self.level(a), self.level(b))
        return self._at(a, lvl), self._at(b, lvl)

    def _check_factors(self, a: SealCT, b: SealCT) -> None:
        if a.f != b.f:
            self.factor_mismatch = max(self.factor_mismatch, abs(a.f / b.f - 1.0))

    def _rescale(self, out: sa.Ciphertext) -> None:
        self.ev.rescale_to_next_inplace(out)
        out.scale = self.scale

    def mul(self, a: SealCT, b: SealCT) -> SealCT:
        """Ciphertext product, relinearised and rescaled; factor a.f b.f q_l / scale."""
        if self.rk is None:
            raise KeyMaterialError("this backend has no relinearisation keys")
        a, b = self._align(a, b)
        lvl = self.level(a)
        if lvl <= 0:
            raise LevelError("no level left for a ciphertext product")
        out = sa.Ciphertext()
        self.ev.multiply(a.ct, b.ct, out)
        self.ev.relinearize_inplace(out, self.rk)
        self._rescale(out)
        self.counts[Op.MULT] += 1
        return SealCT(out, a.f * b.f * self._prime(lvl) / self.scale)

    def mul_sum(self, pairs: Sequence[tuple[SealCT, SealCT]]) -> SealCT:
        """sum_i a_i b_i: size-3 products added, then one relinearisation and one rescale.

        Key switching dominates a product's cost, so a kappa-term inner product costs
        about one product instead of kappa. Counts len(pairs) Mult (HETAL's unit).
        """
        if not pairs:
            raise InvalidArgumentError("mul_sum needs at least one pair")
        if self.rk is None:
            raise KeyMaterialError("this backend has no relinearisation keys")
        lvl = min(min(self.level(a), self.level(b)) for a, b in pairs)
        if lvl <= 0:
            raise LevelError("no level left for a ciphertext product")
        acc = sa.Ciphertext()
        f0 = pairs[0][0].f * pairs[0][1].f
        for i, (a, b) in enumerate(pairs):
            a, b = self._at(a, lvl), self._at(b, lvl)
            if a.f * b.f != f0:
                self.factor_mismatch = max(self.factor_mismatch, abs(a.f * b.f / f0 - 1.0))
            if i == 0:
                self.ev.multiply(a.ct, b.ct, acc)
            else:
                prod = sa.Ciphertext()
                self.ev.multiply(a.ct, b.ct, prod)
                self.ev.add_inplace(acc, prod)
        self.ev.relinearize_inplace(acc, self.rk)
        self._rescale(acc)
        self.counts[Op.MULT] += len(pairs)
        return SealCT(acc, f0 * self._prime(lvl) / self.scale)

    def mul_plain(
        self, ct: SealCT, vec: np.ndarray | complex, target_factor: float = 1.0
    ) -> SealCT:
        """ct x vec, rescaled; the result carries exactly ``target_factor``.

        The plaintext vec x (ct.f / target_factor) is encoded at scale q_l, so the rescale
        by q_l restores the nominal scale exactly. Encodings are cached (LRU).
        """
        lvl = self.level(ct)
        if lvl <= 0:
            raise LevelError("no level left for a plaintext product")
        k = ct.f / target_factor
        scaled = complex(vec) * k if np.isscalar(vec) else np.asarray(vec) * k  # type: ignore[arg-type]
        pt = self._cached(scaled, lvl, self._prime(lvl))
        out = sa.Ciphertext()
        self.ev.multiply_plain(ct.ct, pt, out)
        self._rescale(out)
        self.counts[Op.CMULT] += 1
        return SealCT(out, target_factor)

    def add(self, a: SealCT, b: SealCT) -> SealCT:
        """Sum at the lower level, with a's factor (exact when the factors agree)."""
        a, b = self._align(a, b)
        self._check_factors(a, b)
        out = sa.Ciphertext()
        self.ev.add(a.ct, b.ct, out)
        return SealCT(out, a.f)

    def sub(self, a: SealCT, b: SealCT) -> SealCT:
        """Difference at the lower level, with a's factor."""
        a, b = self._align(a, b)
        self._check_factors(a, b)
        out = sa.Ciphertext()
        self.ev.sub(a.ct, b.ct, out)
        return SealCT(out, a.f)

    def add_plain(self, ct: SealCT, vec: np.ndarray | complex) -> SealCT:
        """ct + vec (encoded as vec / ct.f at ct's scale); no level used."""
        scaled = complex(vec) / ct.f if np.isscalar(vec) else np.asarray(vec) / ct.f  # type: ignore[arg-type]
        pt = self._cached(scaled, self.level(ct), ct.ct.scale)
        out = sa.Ciphertext()
        self.ev.add_plain(ct.ct, pt, out)
        return SealCT(out, ct.f)

    def rot(self, ct: SealCT, step: int) -> SealCT:
        """Slot i receives slot i + step; needs the Galois key for ``step``."""
        if step % self.slots == 0:
            return ct
        if self.gk is None:
            raise KeyMaterialError("this backend has no Galois keys")
        out = sa.Ciphertext()
        try:
            self.ev.rotate_vector(ct.ct, step, self.gk, out)
        except (RuntimeError, ValueError) as exc:
            raise KeyMaterialError(
                f"rotation by {step} failed (Galois key missing?): {exc}"
            ) from None
        self.counts[Op.ROT] += 1
        return SealCT(out, ct.f)

    def conj(self, ct: SealCT) -> SealCT:
        """Complex conjugation (Galois element 2N - 1)."""
        if self.gk is None:
            raise KeyMaterialError("this backend has no Galois keys")
        out = sa.Ciphertext()
        try:
            self.ev.complex_conjugate(ct.ct, self.gk, out)
        except (RuntimeError, ValueError) as exc:
            raise KeyMaterialError(f"conjugation failed (Galois key missing?): {exc}") from None
        self.counts[Op.CONJ] += 1
        return SealCT(out, ct.f)

    # -- wire --------------------------------------------------------------------------
    def serialize(self, ct: SealCT) -> bytes:
        """``HTL1`` + factor (f64) + SEAL's compressed ``save`` bytes."""
        return CT_MAGIC + _FACTOR.pack(ct.f) + sealbytes.save_bytes(ct.ct)

    def deserialize(self, blob: bytes) -> SealCT:
        """Parse untrusted bytes: bounded size, bounded inflation, SEAL's validity checks,
        size-2 NTT ciphertext at the nominal scale on one of this chain's levels."""
        limit = _CT_HEADER + self.max_raw_ct_bytes
        if len(blob) > limit:
            raise InvalidCiphertextError(f"ciphertext of {len(blob)} bytes exceeds {limit}")
        if len(blob) < _CT_HEADER + 16 or blob[:4] != CT_MAGIC:
            raise InvalidCiphertextError("not a HETAL ciphertext (bad magic or too short)")
        (f,) = _FACTOR.unpack_from(blob, 4)
        if not math.isfinite(f) or not 1.0 / MAX_FACTOR <= abs(f) <= MAX_FACTOR:
            raise InvalidCiphertextError(f"ciphertext factor {f!r} out of range")
        seal = self._raw_seal(blob[_CT_HEADER:])
        ct = sa.Ciphertext()
        try:
            sealbytes.load_into(ct, self.ctx, seal)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise InvalidCiphertextError(f"SEAL rejected the ciphertext: {exc}") from None
        if not sa.is_valid_for(ct, self.ctx):
            raise InvalidCiphertextError("ciphertext is not valid for this context")
        if ct.size() != 2 or not ct.is_ntt_form():
            raise InvalidCiphertextError("ciphertext must have 2 polynomials in NTT form")
        if struct.pack("<d", ct.scale) != struct.pack("<d", self.scale):
            raise InvalidCiphertextError(f"scale {ct.scale!r} is not the nominal {self.scale!r}")
        return SealCT(ct, f)

    def load_local(self, blob: bytes) -> SealCT:
        """Fast path for bytes this process family produced (worker pools): SEAL's own
        load and validity check, no bounded re-inflation. Never for received bytes."""
        if blob[:4] != CT_MAGIC:
            raise InvalidCiphertextError("not a HETAL ciphertext (bad magic)")
        (f,) = _FACTOR.unpack_from(blob, 4)
        ct = sa.Ciphertext()
        sealbytes.load_into(ct, self.ctx, blob[_CT_HEADER:])
        return SealCT(ct, f)

    def _raw_seal(self, seal: bytes) -> bytes:
        """Uncompressed SEAL bytes, inflating zstd with a bound (SEAL trusts declared sizes)."""
        magic, hsize, major, minor, compr, reserved, size = sealbytes.read_header(seal)
        if magic != sealbytes.SEAL_MAGIC or hsize != 16 or reserved != 0 or size != len(seal):
            raise InvalidCiphertextError("bad SEAL header")
        if compr == sealbytes.COMPR_NONE:
            return seal
        if compr != sealbytes.COMPR_ZSTD:
            raise InvalidCiphertextError(f"compression mode {compr} not accepted")
        frame = memoryview(seal)[16:]
        declared = zstandard.frame_content_size(frame)
        if declared in self._member_sizes:
            # zstd itself refuses output beyond the declared size, which is one of the
            # exact ciphertext sizes of this chain: inflate in one call (fast path).
            try:
                dobj = zstandard.ZstdDecompressor(
                    max_window_size=sealbytes.ZSTD_MAX_WINDOW
                ).decompressobj()
                members = dobj.decompress(frame)
            except zstandard.ZstdError as exc:
                raise InvalidCiphertextError(f"not a valid zstd stream ({exc})") from None
            if len(members) != declared or not dobj.eof or dobj.unused_data:
                raise InvalidCiphertextError("zstd frame does not match its declared size")
        else:
            try:
                members = sealbytes.inflate_bounded(frame, self.max_raw_ct_bytes - 16)
            except ValueError as exc:
                raise InvalidCiphertextError(str(exc)) from None
        head = sealbytes.SEAL_HEADER.pack(
            sealbytes.SEAL_MAGIC, 16, major, minor, sealbytes.COMPR_NONE, 0, 16 + len(members)
        )
        return head + members
