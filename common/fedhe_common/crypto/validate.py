"""Validation of untrusted ciphertext bytes, before and after SEAL loads them.

SEAL's ``load`` catches malformed headers and out-of-range coefficients, but it
accepts other levels, size-3 ciphertexts, non-NTT data and any non-zero scale
(NaN included), and it cannot tell a ciphertext from a public key. Bit flips in
coefficients produce valid garbage; integrity comes from the transport's
sha256 and authentication, not from here. Every failure raises
:class:`InvalidCiphertextError` (or its :class:`ContextMismatchError` subclass).
"""

from __future__ import annotations

import struct

import numpy as np
import tenseal.sealapi as sa

from fedhe_common.crypto import envelope, sealbytes
from fedhe_common.crypto.context import CKKSContext
from fedhe_common.crypto.envelope import BlobKind
from fedhe_common.errors import InvalidCiphertextError

SEAL_MAJOR = 4
SEAL_MAX_MINOR = 3
ZSTD_SLACK = 1.01
UPLOAD_KINDS = frozenset({BlobKind.CIPHERTEXT, BlobKind.CIPHERTEXT_SEEDED})
AGGREGATE_KINDS = frozenset({BlobKind.CIPHERTEXT})
_DYNARRAY_HEADER_OFFSET = 89
_COUNT_OFFSET = 105


def _fail(reason: str) -> InvalidCiphertextError:
    return InvalidCiphertextError(f"invalid ciphertext: {reason}")


def check_seal_header(ctx: CKKSContext, seal: bytes, kind: BlobKind) -> int:
    """Check the outer SEALHeader and total length; return the compression mode."""
    if len(seal) < 16:
        raise _fail(f"{len(seal)} bytes cannot hold a SEAL header")
    magic, hsize, major, minor, compr, reserved, size = sealbytes.read_header(seal)
    if magic != sealbytes.SEAL_MAGIC or hsize != 16:
        raise _fail("bad SEAL header magic or header size")
    if major != SEAL_MAJOR or minor > SEAL_MAX_MINOR:
        raise _fail(f"unsupported SEAL serialization version {major}.{minor}")
    if reserved != 0:
        raise _fail("reserved SEAL header bits are set")
    if size != len(seal):
        raise _fail(f"header says {size} bytes but {len(seal)} arrived")
    raw_len = ctx.seeded_ct_bytes if kind == BlobKind.CIPHERTEXT_SEEDED else ctx.full_ct_bytes
    if compr == sealbytes.COMPR_NONE:
        if size != raw_len:
            raise _fail(f"expected exactly {raw_len} bytes for this context, got {size}")
    elif compr == sealbytes.COMPR_ZSTD and ctx.preset.compression == "zstd":
        if size > raw_len * ZSTD_SLACK + 64:
            raise _fail(f"compressed ciphertext of {size} bytes is larger than possible")
    else:
        raise _fail(f"compression mode {compr} not accepted for preset {ctx.preset.name!r}")
    return compr


def check_raw_members(ctx: CKKSContext, seal: bytes, kind: BlobKind, expected_scale: float) -> None:
    """Check the metadata and coefficients of an uncompressed ciphertext blob."""
    pid0, pid1, pid2, pid3, ntt, size, n, k, scale, corr = sealbytes.CT_META.unpack_from(seal, 16)
    if (pid0, pid1, pid2, pid3) != ctx.first_parms_id:
        raise _fail("parms_id is not this context's first data level")
    if ntt != 1:
        raise _fail("ciphertext is not in NTT form")
    if size != 2:
        raise _fail(f"ciphertext has {size} polynomials, expected 2")
    if n != ctx.n or k != ctx.k:
        raise _fail(f"ring degree/primes {n}/{k} differ from the context's {ctx.n}/{ctx.k}")
    if struct.pack("<d", scale) != struct.pack("<d", expected_scale):
        raise _fail(f"scale {scale!r} differs from the expected {expected_scale!r}")
    if corr != 1:
        raise _fail("correction factor must be 1 for CKKS")
    dsize = _inner_header_size(
        seal[_DYNARRAY_HEADER_OFFSET : _DYNARRAY_HEADER_OFFSET + 16], "bad inner data header"
    )
    (count,) = struct.unpack_from("<Q", seal, _COUNT_OFFSET)
    polys = 1 if kind == BlobKind.CIPHERTEXT_SEEDED else 2
    if count != polys * k * n or dsize != 24 + 8 * count:
        raise _fail("coefficient count does not match the ciphertext shape")
    data = np.frombuffer(seal, dtype="<u8", count=count, offset=sealbytes.CT_DATA_OFFSET)
    if not (data.reshape(polys, k, n) < ctx.data_primes[None, :, None]).all():
        raise _fail("coefficient not reduced modulo its prime")
    if kind == BlobKind.CIPHERTEXT_SEEDED:
        tail = seal[sealbytes.CT_DATA_OFFSET + 8 * count :]
        if _inner_header_size(tail, "bad seed header") != len(tail):
            raise _fail("bad seed header")
        if tail[16] not in (1, 2):
            raise _fail("unknown PRNG type for the seed")


def _inner_header_size(header: bytes, reason: str) -> int:
    """Check an uncompressed inner SEALHeader; return the size it declares."""
    magic, hsize, major, minor, compr, reserved, size = sealbytes.read_header(header)
    if (
        magic != sealbytes.SEAL_MAGIC
        or hsize != 16
        or compr != 0
        or reserved != 0
        or major != SEAL_MAJOR
        or minor > SEAL_MAX_MINOR
    ):
        raise _fail(reason)
    return int(size)


def check_loaded(ctx: CKKSContext, ct: sa.Ciphertext, expected_scale: float) -> None:
    """Checks SEAL's ``load`` does not make: level, size, NTT form, exact scale."""
    if tuple(int(x) for x in ct.parms_id()) != ctx.first_parms_id:
        raise _fail("loaded ciphertext is not at the first data level")
    if ct.size() != 2 or not ct.is_ntt_form():
        raise _fail("loaded ciphertext must have size 2 and be in NTT form")
    if ct.coeff_modulus_size() != ctx.k or ct.poly_modulus_degree() != ctx.n:
        raise _fail("loaded ciphertext has other ring parameters")
    if struct.pack("<d", ct.scale) != struct.pack("<d", expected_scale):
        raise _fail(f"loaded scale {ct.scale!r} differs from the expected {expected_scale!r}")


def check_ciphertext_bytes(
    ctx: CKKSContext, blob: bytes, kinds: frozenset[BlobKind], expected_scale: float
) -> tuple[BlobKind, bytes]:
    """All checks that need no SEAL call; return (kind, SEAL bytes) ready to load.

    A zstd blob is inflated with a bound and checked like an uncompressed one (exactly
    one frame, no trailing bytes); the uncompressed bytes are returned.
    """
    kind, seal = envelope.unwrap(blob, kinds, ctx.fingerprint)
    if check_seal_header(ctx, seal, kind) == sealbytes.COMPR_NONE:
        check_raw_members(ctx, seal, kind, expected_scale)
        return kind, seal
    return raw_ciphertext_bytes(ctx, blob, kinds, expected_scale)


def raw_ciphertext_bytes(
    ctx: CKKSContext, blob: bytes, kinds: frozenset[BlobKind], expected_scale: float
) -> tuple[BlobKind, bytes]:
    """Like :func:`check_ciphertext_bytes`, but always returns checked uncompressed bytes.

    A zstd blob is inflated with a bound (its exact uncompressed length) and then
    gets the same member checks as an uncompressed one. For code that reads the
    residues itself (threshold parties) rather than through SEAL's bounded loader.
    """
    kind, seal = envelope.unwrap(blob, kinds, ctx.fingerprint)
    if check_seal_header(ctx, seal, kind) == sealbytes.COMPR_ZSTD:
        raw_len = ctx.seeded_ct_bytes if kind == BlobKind.CIPHERTEXT_SEEDED else ctx.full_ct_bytes
        try:
            members = sealbytes.inflate_bounded(memoryview(seal)[16:], raw_len - 16)
        except ValueError as exc:
            raise _fail(str(exc)) from None
        if len(members) != raw_len - 16:
            raise _fail(f"inflates to {16 + len(members)} bytes, expected {raw_len}")
        _, _, major, minor, _, _, _ = sealbytes.read_header(seal)
        header = sealbytes.SEAL_HEADER.pack(
            sealbytes.SEAL_MAGIC, 16, major, minor, sealbytes.COMPR_NONE, 0, raw_len
        )
        seal = header + members
    check_raw_members(ctx, seal, kind, expected_scale)
    return kind, seal


def load_ciphertext(
    ctx: CKKSContext, blob: bytes, kinds: frozenset[BlobKind], expected_scale: float
) -> sa.Ciphertext:
    """Validate untrusted bytes, load them into SEAL, and validate the result."""
    _, seal = check_ciphertext_bytes(ctx, blob, kinds, expected_scale)
    ct = sa.Ciphertext()
    try:
        sealbytes.load_into(ct, ctx.seal, seal)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise _fail(f"SEAL rejected it ({exc})") from None
    check_loaded(ctx, ct, expected_scale)
    return ct
