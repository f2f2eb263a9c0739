"""Threshold CKKS on SEAL primitives: no single party holds the decryption key.

Protocol (Mouchet et al. multiparty CKKS, t-of-N per Mouchet et al. 2022, as in
Lattigo's ``multiparty`` package), per job:

1. Key generation. A common uniform polynomial ``a`` comes from a CRS seed. Party i
   draws its secret ``s_i`` on its own device (SEAL's ternary key) and publishes only
   ``b_i = -(a * s_i + e_i)``. The collective public key ``(sum b_i, a)`` loads as an
   ordinary SEAL ``PublicKey``; clients encrypt with it as usual.
2. t-of-N (t < N). Each party Shamir-shares its ``s_i`` over the residues with a
   random degree t-1 polynomial, evaluated at alpha_k = k; party k keeps
   ``S(alpha_k) = sum_i S_i(alpha_k)``. Any t parties A reconstruct *linearly*:
   party k uses ``s'_k = lambda_k^A * S(alpha_k)``, so ``sum s'_k = sum s_i`` and no
   one ever sees the whole secret. (Shares travel end-to-end encrypted; see e2e.py.)
3. Decryption. For an aggregate ``(c0, c1)`` each active party returns
   ``d_k = c1 * s'_k + E_k`` with fresh smudging noise ``E_k`` uniform in
   ``[-2^b, 2^b)`` (b sized from the round's weight sum, :mod:`.smudging`);
   ``c0 + sum d_k`` decodes to the plaintext.
   A party produces at most one share per ciphertext, ever (:class:`ShareLedger`).
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tenseal.sealapi as sa
import zstandard

from fedhe_common.crypto import envelope, packing, release, sealbytes
from fedhe_common.crypto.context import CKKSContext, PublicParams
from fedhe_common.crypto.envelope import BlobKind
from fedhe_common.crypto.presets import MIN_THRESHOLD, MIN_THRESHOLD_CLIENTS, Preset
from fedhe_common.crypto.provenance import VerifiedAggregate
from fedhe_common.crypto.ring import RingArithmetic, addmod, submod
from fedhe_common.crypto.sampling import (
    crs_polynomial,
    gaussian,
    smudging_residues,
    uniform_mod,
)
from fedhe_common.crypto.smudging import smudging_bits
from fedhe_common.crypto.validate import AGGREGATE_KINDS, raw_ciphertext_bytes
from fedhe_common.errors import (
    ConflictError,
    InvalidArgumentError,
    KeyMaterialError,
    PermissionDeniedError,
)

MAX_PARTIES = 64  # keys.parties is at most 64 (config)
SHARE_HEADER = struct.Struct("<4sIII32s")  # magic, alpha, k, N, sha256 of the ciphertext
SHARE_MAGIC = b"FHDS"  # raw residues
SHARE_MAGIC_ZSTD = b"FHDZ"  # zstd residues (presets whose wire format is zstd)


_CONTENT_DOMAIN = b"fedhe-ciphertext-content-v1\x00"


def _content_id(ctx: CKKSContext, raw_seal: bytes) -> bytes:
    """sha256 over the context and the (c0, c1) residues of checked uncompressed bytes."""
    count = 2 * ctx.k * ctx.n
    h = hashlib.sha256(_CONTENT_DOMAIN)
    h.update(ctx.fingerprint)
    h.update(memoryview(raw_seal)[sealbytes.CT_DATA_OFFSET : sealbytes.CT_DATA_OFFSET + 8 * count])
    return h.digest()


def ciphertext_id(ctx: CKKSContext, aggregate_blob: bytes) -> bytes:
    """What a decryption share and the ledger are bound to: the ciphertext, not its bytes.

    The residues of the validated, uncompressed ciphertext (its parms_id, form and
    scale are checked to be the context's): every re-encoding of one ciphertext
    (zstd or not, other header versions) has the same id.
    """
    return _content_id(ctx, _aggregate_raw(ctx, aggregate_blob))


def _aggregate_raw(ctx: CKKSContext, aggregate_blob: bytes) -> bytes:
    scale = ctx.preset.scale * ctx.preset.weight_scale
    return raw_ciphertext_bytes(ctx, aggregate_blob, AGGREGATE_KINDS, scale)[1]


def check_threshold(threshold: int, parties: int) -> None:
    """Refuse t < 2 (every share would be the whole key) and t > parties."""
    if not MIN_THRESHOLD <= threshold <= parties:
        raise InvalidArgumentError(
            f"threshold must be between {MIN_THRESHOLD} and the {parties} parties, got "
            f"{threshold}: with threshold 1 every party's share is the whole secret key"
        )


def lagrange_at_zero(alpha: int, active: list[int], q: int) -> int:
    """lambda_alpha^A = prod_{j in A, j != alpha} a_j / (a_j - alpha) mod q."""
    num, den = 1, 1
    for a in active:
        if a != alpha:
            num = num * a % q
            den = den * (a - alpha) % q
    return num * pow(den, -1, q) % q


def collective_public_key(
    ring: RingArithmetic, shares: list[np.ndarray], a: np.ndarray
) -> tuple[PublicParams, bytes]:
    """(public params bound to the collective key, PUBLIC_KEY blob) from pk shares."""
    q = ring.primes("key")
    b = shares[0]
    for share in shares[1:]:
        b = addmod(b, share, q)
    seal = sealbytes.build_ciphertext(ring.pid_key, np.stack([b, a]), 1.0)
    pk = sa.PublicKey()
    sealbytes.load_into(pk, ring.ctx, seal)  # SEAL validates it as a public key
    params = PublicParams(ring.preset, hashlib.sha256(seal).digest())
    fingerprint = CKKSContext(params).fingerprint
    return params, envelope.wrap(BlobKind.PUBLIC_KEY, fingerprint, seal)


_COMMIT_DOMAIN = b"fedhe-pk-share-commitment-v1\x00"


def pk_share_commitment(job_id: str, alpha: int, share: bytes) -> bytes:
    """sha256 commitment to party ``alpha``'s public-key share (sent before the share)."""
    return hashlib.sha256(_COMMIT_DOMAIN + f"{job_id}|{alpha}|".encode() + share).digest()


def check_collective_key(
    ring: RingArithmetic,
    crs_seed: bytes,
    job_id: str,
    shares: dict[int, bytes],
    commitments: dict[int, bytes],
    handed_out: bytes,
) -> tuple[PublicParams, bytes]:
    """Recompute the collective key from published shares; refuse any substitution.

    Every share must open its party's commitment, and the collective key the key
    authority hands out must hash to the one recomputed here.
    """
    if not shares or sorted(shares) != sorted(commitments):
        raise KeyMaterialError("published public-key shares and commitments do not match up")
    expected = 8 * len(ring.q_key) * ring.n
    arrays = []
    for alpha in sorted(shares):
        share = shares[alpha]
        if pk_share_commitment(job_id, alpha, share) != commitments[alpha]:
            raise KeyMaterialError(
                f"public-key share of party {alpha} does not open its commitment"
            )
        if len(share) != expected:
            raise KeyMaterialError(f"public-key share of party {alpha} has the wrong length")
        array = np.frombuffer(share, dtype="<u8").reshape(-1, ring.n)
        if not (array < ring.primes("key")).all():
            raise KeyMaterialError(f"public-key share of party {alpha} is not reduced")
        arrays.append(array)
    params, pk_blob = collective_public_key(ring, arrays, crs_for(crs_seed, ring))
    if hashlib.sha256(pk_blob).digest() != hashlib.sha256(handed_out).digest():
        raise KeyMaterialError(
            "the key authority's collective public key is not the sum of the committed shares"
        )
    return params, pk_blob


class ThresholdParty:
    """One key holder: its secret share never leaves this object (or the device)."""

    def __init__(
        self,
        ring: RingArithmetic,
        alpha: int,
        secret: np.ndarray | None = None,
        shamir: np.ndarray | None = None,
    ) -> None:
        if alpha < 1:
            raise InvalidArgumentError("party index alpha must be >= 1")
        self.ring = ring
        self.alpha = alpha
        shape = (len(ring.q_key), ring.n)
        if secret is None:
            key = sa.KeyGenerator(ring.ctx).secret_key()
            secret = sealbytes.plaintext_array(sealbytes.save_bytes(key)).reshape(shape).copy()
        for name, array in (("secret", secret), ("shamir", shamir)):
            if array is not None and (
                array.shape != shape or not (array < ring.primes("key")).all()
            ):
                raise InvalidArgumentError(f"stored {name} share does not fit this preset")
        self.secret = secret  # (k_key, N), NTT, key level; never leaves the device
        self.shamir = shamir

    def public_key_share(self, a: np.ndarray) -> np.ndarray:
        """b_i = -(a * s_i + e_i) at the key level."""
        ring = self.ring
        e = ring.to_ntt(ring.residues(gaussian(ring.n)[None], "key"), "key")[0]
        t = addmod(ring.multiply(a, self.secret, "key"), e, ring.primes("key"))
        return submod(np.zeros_like(t), t, ring.primes("key"))

    def deal(self, threshold: int, alphas: list[int]) -> dict[int, np.ndarray]:
        """Shamir shares S_i(alpha) of this party's secret for every party's alpha."""
        check_threshold(threshold, len(alphas))
        ring = self.ring
        q = ring.primes("key")
        coefficients = [self.secret] + [
            uniform_mod(ring.q_key, ring.n) for _ in range(threshold - 1)
        ]
        out = {}
        for alpha in alphas:
            acc = np.zeros_like(self.secret)
            x = ring.constant(alpha, "key")
            for c in reversed(coefficients):  # Horner: acc * alpha + c
                acc = addmod(ring.multiply(acc, x, "key"), c, q)
            out[alpha] = acc
        return out

    def receive_shares(self, parts: list[np.ndarray]) -> None:
        """Keep S(alpha) = sum of every party's share for this party's alpha."""
        q = self.ring.primes("key")
        acc = parts[0]
        for part in parts[1:]:
            acc = addmod(acc, part, q)
        self.shamir = acc

    def effective_secret(self, active: list[int] | None) -> np.ndarray:
        """s'_k at the data level: s_k (N-of-N) or lambda_k^A * S(alpha_k) (t-of-N)."""
        ring = self.ring
        k = len(ring.q_data)
        if active is None:
            return self.secret[:k].copy()
        if self.shamir is None:
            raise InvalidArgumentError("this party holds no Shamir share")
        if self.alpha not in active:
            raise InvalidArgumentError("this party is not in the active set")
        lam = np.stack(
            [
                np.full(ring.n, lagrange_at_zero(self.alpha, active, int(q)), dtype=np.uint64)
                for q in ring.q_data
            ]
        )
        return ring.multiply(self.shamir[:k], lam, "data")


@dataclass(frozen=True)
class ShareRequest:
    """What a party is asked to decrypt, and the round facts it checks first."""

    job_id: str
    round: int
    chunk: int
    contributors: int
    min_clients: int
    active: tuple[int, ...] | None  # None: N-of-N
    weight_sum: int = 1  # the header's sum of weights: sizes the smudging noise
    parties: int | None = None  # the job's N and t, to check the server's active set
    threshold: int | None = None


def check_active_set(
    active: tuple[int, ...], alpha: int, parties: int | None, threshold: int | None
) -> None:
    """Refuse an active set from the server that is not t distinct parties including us."""
    if len(set(active)) != len(active):
        raise InvalidArgumentError(f"active set {active} names a party twice")
    if any(a < 1 or (parties is not None and a > parties) for a in active):
        raise InvalidArgumentError(f"active set {active} names parties outside 1..{parties}")
    want = threshold if threshold is not None else max(len(active), MIN_THRESHOLD)
    if len(active) != want:
        raise InvalidArgumentError(
            f"active set {active} must name exactly t={threshold} parties (at least "
            f"{MIN_THRESHOLD})"
        )
    if alpha not in active:
        raise InvalidArgumentError(f"party {alpha} is not in the active set {active}")


class ShareLedger:
    """Persistent record of every ciphertext a party produced a share for (SQLite).

    A second request for the same ciphertext is refused, whatever the active set,
    also after a restart: two shares of one ciphertext under different noise or
    different active sets would let an observer cancel the smudging.
    """

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS shares (ct_sha256 BLOB PRIMARY KEY, "
            "job_id TEXT, round INTEGER, chunk INTEGER, active TEXT, created REAL)"
        )

    def claim(self, ct_sha256: bytes, request: ShareRequest) -> None:
        """Record the ciphertext before the share is released; refuse a repeat."""
        try:
            self._db.execute(
                "INSERT INTO shares VALUES (?,?,?,?,?,?)",
                (
                    ct_sha256,
                    request.job_id,
                    request.round,
                    request.chunk,
                    repr(request.active),
                    time.time(),
                ),
            )
        except sqlite3.IntegrityError:
            raise ConflictError(
                "a decryption share for this ciphertext was already produced "
                "(a second one is never released)"
            ) from None

    def count(self) -> int:
        """Number of shares ever produced."""
        return int(self._db.execute("SELECT COUNT(*) FROM shares").fetchone()[0])


def decryption_share(
    party: ThresholdParty,
    ledger: ShareLedger,
    ctx: CKKSContext,
    aggregate_blob: bytes,
    request: ShareRequest,
    verified: VerifiedAggregate,
) -> bytes:
    """``d = c1 * s' + E`` for one aggregate ciphertext, once; returns a share blob.

    ``verified`` comes from :func:`.provenance.verify_aggregate` for exactly this blob:
    no share exists for a ciphertext that is not the weighted sum of enough signed
    uploads (the contributor count and weight sum are the verified ones, not the
    server's header).
    """
    if (verified.job_id, verified.round, verified.chunk) != (
        request.job_id,
        request.round,
        request.chunk,
    ) or verified.aggregate_sha256 != hashlib.sha256(aggregate_blob).digest():
        raise PermissionDeniedError("aggregate was not verified against signed uploads")
    contributors = len(verified.clients)
    floor = max(request.min_clients, MIN_THRESHOLD_CLIENTS)
    if contributors < floor:
        raise PermissionDeniedError(
            f"aggregate has {contributors} verified contributors, fewer than {floor} "
            f"(min_clients {request.min_clients}, never below {MIN_THRESHOLD_CLIENTS}): "
            "no share is produced for it"
        )
    if request.active is not None:
        check_active_set(request.active, party.alpha, request.parties, request.threshold)
    seal = _aggregate_raw(ctx, aggregate_blob)
    c1 = sealbytes.ciphertext_array(seal)[1]
    ring = party.ring
    secret = party.effective_secret(list(request.active) if request.active else None)
    # Each upload weighs >= 1, so the weight sum is at least the contributor count.
    bits = smudging_bits(
        ring.preset, max(request.weight_sum, verified.weight_sum, contributors), MAX_PARTIES
    )
    ct_sha = _content_id(ctx, seal)
    ledger.claim(ct_sha, request)
    noise = ring.to_ntt(smudging_residues(ring.n, bits, ring.q_data)[None], "data")[0]
    share = addmod(ring.multiply(c1, secret, "data"), noise, ring.primes("data"))
    data = share.astype("<u8").tobytes()
    magic = SHARE_MAGIC
    if ctx.preset.compression == "zstd":  # 40-bit residues: ~25% smaller
        data, magic = zstandard.ZstdCompressor(level=1).compress(data), SHARE_MAGIC_ZSTD
    header = SHARE_HEADER.pack(magic, party.alpha, share.shape[0], ring.n, ct_sha)
    return envelope.wrap(BlobKind.DECRYPTION_SHARE, ctx.fingerprint, header + data)


def parse_share(
    ctx: CKKSContext, ring: RingArithmetic, blob: bytes, aggregate_blob: bytes
) -> tuple[int, np.ndarray]:
    """Validate an untrusted share for ``aggregate_blob``; return (alpha, residues)."""
    return _parse_share(ctx, ring, blob, ciphertext_id(ctx, aggregate_blob))


def _parse_share(
    ctx: CKKSContext, ring: RingArithmetic, blob: bytes, ct_id: bytes
) -> tuple[int, np.ndarray]:
    _, body = envelope.unwrap(blob, frozenset({BlobKind.DECRYPTION_SHARE}), ctx.fingerprint)
    k, n = len(ring.q_data), ring.n
    size = 8 * k * n
    if len(body) < SHARE_HEADER.size or len(body) > SHARE_HEADER.size + size + 1024:
        raise InvalidArgumentError("decryption share has the wrong length")
    magic, alpha, kk, nn, ct_sha = SHARE_HEADER.unpack_from(body, 0)
    if magic not in (SHARE_MAGIC, SHARE_MAGIC_ZSTD) or (kk, nn) != (k, n):
        raise InvalidArgumentError("malformed decryption share header")
    if ct_sha != ct_id:
        raise InvalidArgumentError("decryption share is for another ciphertext")
    raw = body[SHARE_HEADER.size :]
    if magic == SHARE_MAGIC_ZSTD:
        try:  # bounded: a bomb cannot inflate past one share
            raw = sealbytes.inflate_bounded(raw, size)
        except ValueError as exc:
            raise InvalidArgumentError(f"decryption share: {exc}") from None
    if len(raw) != size:
        raise InvalidArgumentError("decryption share has the wrong length")
    data = np.frombuffer(raw, dtype="<u8").reshape(k, n)
    if not (data < ring.primes("data")).all():
        raise InvalidArgumentError("decryption share value not reduced modulo its prime")
    return int(alpha), data


def fuse(
    ctx: CKKSContext,
    ring: RingArithmetic,
    aggregate_blob: bytes,
    shares: list[bytes],
    weight_sum: float = 1.0,
) -> np.ndarray:
    """c0 + sum of the shares, decoded (one share per active party).

    The values are rounded to the release grid for ``weight_sum`` (:mod:`.release`).
    """
    release.output_grid(ctx.preset, weight_sum)  # bad input changes nothing
    scale = ctx.preset.scale * ctx.preset.weight_scale
    seal = _aggregate_raw(ctx, aggregate_blob)
    ct_id = _content_id(ctx, seal)
    m = sealbytes.ciphertext_array(seal)[0].copy()
    seen = set()
    for blob in shares:
        alpha, data = _parse_share(ctx, ring, blob, ct_id)
        if alpha in seen:
            raise InvalidArgumentError(f"two shares from party {alpha}")
        seen.add(alpha)
        m = addmod(m, data, ring.primes("data"))
    pt = sa.Plaintext()
    sealbytes.load_into(pt, ctx.seal, sealbytes.build_plaintext(ring.pid_data, m, scale))
    decoded = packing.decode(ctx.encoder, ctx.preset, pt)
    return release.public_values(ctx.preset, decoded, weight_sum)


def crs_for(seed: bytes, ring: RingArithmetic) -> np.ndarray:
    """The job's common polynomial ``a`` at the key level."""
    return crs_polynomial(seed, b"fedhe-crs-a", ring.q_key, ring.n)


def ring_for(preset: Preset) -> RingArithmetic:
    """Ring arithmetic for a threshold preset (refuses presets without smudging)."""
    if preset.smudging_bits is None:
        raise InvalidArgumentError(f"preset {preset.name!r} is not a threshold preset")
    return RingArithmetic(preset)
