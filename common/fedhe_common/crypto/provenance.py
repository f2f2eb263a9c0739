"""Where an aggregate comes from: signed upload statements, c1 plausibility, recomputation.

Public arithmetic only (no key material; the server imports it too).

* :func:`upload_statement`: the canonical bytes a client signs for one upload (its
  manifest and every chunk's sha256: the receipt's input).
* :func:`check_c1_plausible`: an honest ``c1 = a*u + e1`` is uniform mod q; a
  deviating client's chosen ``c1`` with small or repeated coefficients is refused
  (issue 10, finding 2: a statistical check, not a proof; see docs/crypto.md).
* :func:`verify_aggregate`: a threshold party recomputes an aggregate chunk as the
  weighted sum of the signed uploads the server served and requires equality with
  what it is asked to decrypt (finding 3).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import tenseal.sealapi as sa

from fedhe_common.crypto import identity, sealbytes, validate
from fedhe_common.crypto.aggregate import CiphertextAggregator
from fedhe_common.crypto.context import CKKSContext, PublicParams
from fedhe_common.crypto.presets import MIN_THRESHOLD_CLIENTS
from fedhe_common.errors import InvalidArgumentError, InvalidCiphertextError, PermissionDeniedError

UPLOAD_DOMAIN = "upload"
MAX_STATEMENT_BYTES = 1 << 20
# An honest c1 coefficient (centered mod q_j) is below q_j/4 in magnitude with
# probability 1/2. Refuse above SMALL_FRACTION: by Hoeffding the false refusal
# probability per prime is <= exp(-2 N (SMALL_FRACTION - 1/2)^2) <= 2^-266 (N >= 4096).
SMALL_FRACTION = 0.65
# Distinct coefficient values per prime: an honest c1 has at most ~N^2/(2 q_j) < 1
# collision on average (q_j >= 2^40); fewer than N/2 distinct values is refused.
MIN_DISTINCT_FRACTION = 0.5


@dataclass(frozen=True)
class UploadStatement:
    """What a client vouches for with its identity key."""

    job_id: str
    round: int
    client_id: str
    sample_count: int
    fingerprint: bytes
    ciphertext_sha256: tuple[bytes, ...]
    manifest_sha256: bytes


def upload_statement(
    job_id: str,
    number: int,
    client_id: str,
    sample_count: int,
    fingerprint: bytes,
    ciphertext_sha256: list[bytes],
    manifest_sha256: bytes,
) -> bytes:
    """Canonical JSON bytes of an upload statement (signed by the client)."""
    doc = {
        "v": 1,
        "job_id": job_id,
        "round": int(number),
        "client_id": client_id,
        "sample_count": int(sample_count),
        "fingerprint": fingerprint.hex(),
        "ciphertext_sha256": [h.hex() for h in ciphertext_sha256],
        "manifest_sha256": manifest_sha256.hex(),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def parse_statement(data: bytes) -> UploadStatement:
    """Parse untrusted statement bytes (JSON only) or raise InvalidArgumentError."""
    if len(data) > MAX_STATEMENT_BYTES:
        raise InvalidArgumentError("upload statement too large")
    try:
        doc = json.loads(data)
        return UploadStatement(
            str(doc["job_id"]),
            int(doc["round"]),
            str(doc["client_id"]),
            int(doc["sample_count"]),
            bytes.fromhex(doc["fingerprint"]),
            tuple(bytes.fromhex(h) for h in doc["ciphertext_sha256"]),
            bytes.fromhex(doc["manifest_sha256"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgumentError(f"malformed upload statement: {exc}") from None


def sign_upload(private: bytes, statement: bytes) -> bytes:
    """The client's signature over its upload statement."""
    return identity.sign(private, UPLOAD_DOMAIN, statement)


def verify_upload(public: bytes, statement: bytes, signature: bytes) -> UploadStatement:
    """Check the signature, then parse; PermissionDenied if it does not verify."""
    identity.verify(public, signature, UPLOAD_DOMAIN, statement)
    return parse_statement(statement)


def check_c1_plausible(ctx: CKKSContext, ct: sa.Ciphertext) -> None:
    """Refuse a ciphertext whose c1 is not plausibly uniform mod q (coefficient form)."""
    c1 = sealbytes.ciphertext_array(sealbytes.save_bytes(ct))[1]
    if ct.is_ntt_form():
        copy = sa.Ciphertext()
        data = sealbytes.build_ciphertext(ctx.first_parms_id, np.stack([c1, c1]), 1.0)
        sealbytes.load_into(copy, ctx.seal, data)
        ctx.evaluator.transform_from_ntt_inplace(copy)
        c1 = sealbytes.ciphertext_array(sealbytes.save_bytes(copy))[1]
    primes = [int(q.value()) for q in ctx.seal.first_context_data().parms().coeff_modulus()]
    n = c1.shape[1]
    for j, q in enumerate(primes):
        row = c1[j]
        centered = np.minimum(row, np.uint64(q) - row)  # |x| for x centered in (-q/2, q/2]
        small = float(np.count_nonzero(centered < np.uint64(q // 4))) / n
        distinct = len(np.unique(row)) / n
        if small > SMALL_FRACTION or distinct < MIN_DISTINCT_FRACTION:
            raise InvalidCiphertextError(
                f"invalid ciphertext: c1 is not plausibly uniform (prime {j}: "
                f"{small:.2f} of coefficients below q/4, {distinct:.2f} distinct); "
                "an honest encryption's c1 is uniform"
            )


@dataclass(frozen=True)
class SignedContribution:
    """One upload's share of an aggregate chunk, as the server serves it."""

    client_id: str
    statement: bytes
    signature: bytes
    blob: bytes  # this chunk's uploaded ciphertext


@dataclass(frozen=True)
class VerifiedAggregate:
    """An aggregate chunk proven to be the weighted sum of these signed uploads."""

    job_id: str
    round: int
    chunk: int
    clients: tuple[str, ...]
    weight_sum: int
    aggregate_sha256: bytes  # the exact blob that was verified


def verify_aggregate(
    params: PublicParams,
    aggregate_blob: bytes,
    job_id: str,
    number: int,
    chunk: int,
    contributions: list[SignedContribution],
    identity_keys: dict[str, bytes],
    min_clients: int,
) -> VerifiedAggregate:
    """Recompute the chunk from signed uploads of distinct clients; refuse any mismatch.

    ``identity_keys`` and ``min_clients`` are the party's own pinned record (from key
    generation), never the server's word.
    """
    floor = max(min_clients, MIN_THRESHOLD_CLIENTS)
    if len(contributions) < floor:
        raise PermissionDeniedError(
            f"aggregate chunk {chunk} comes with {len(contributions)} signed uploads, fewer "
            f"than {floor}: no share is produced for it"
        )
    if len(contributions) > len(identity_keys):
        raise PermissionDeniedError("more contributions than enrolled parties")
    agg = CiphertextAggregator(params)
    ctx = agg.ctx
    seen: set[str] = set()
    acc: sa.Ciphertext | None = None
    weight_sum = 0
    for c in contributions:
        if c.client_id in seen:
            raise PermissionDeniedError(f"two contributions from client {c.client_id!r}")
        seen.add(c.client_id)
        key = identity_keys.get(c.client_id)
        if key is None:
            raise PermissionDeniedError(f"client {c.client_id!r} is not an enrolled party")
        st = verify_upload(key, c.statement, c.signature)
        if (st.job_id, st.round, st.client_id) != (job_id, number, c.client_id):
            raise PermissionDeniedError("signed upload is for another job, round or client")
        if st.fingerprint != ctx.fingerprint:
            raise PermissionDeniedError("signed upload is for another context")
        if not 0 <= chunk < len(st.ciphertext_sha256):
            raise PermissionDeniedError(f"signed upload has no ciphertext chunk {chunk}")
        if hashlib.sha256(c.blob).digest() != st.ciphertext_sha256[chunk]:
            raise PermissionDeniedError("uploaded chunk does not match its signed sha256")
        ct = agg.load_upload(c.blob)
        check_c1_plausible(ctx, ct)
        weight = agg.check_weight(st.sample_count)
        acc = agg.add_weighted(acc, ct, weight)
        weight_sum += st.sample_count
    assert acc is not None
    scale = agg.aggregate_scale
    _, seal = validate.raw_ciphertext_bytes(ctx, aggregate_blob, validate.AGGREGATE_KINDS, scale)
    served = sealbytes.ciphertext_array(seal)
    recomputed = sealbytes.ciphertext_array(sealbytes.save_bytes(acc))
    if served.shape != recomputed.shape or not np.array_equal(served, recomputed):
        raise PermissionDeniedError(
            f"aggregate chunk {chunk} is not the weighted sum of its {len(contributions)} "
            "signed uploads: no share is produced for it"
        )
    return VerifiedAggregate(
        job_id,
        number,
        chunk,
        tuple(sorted(seen)),
        weight_sum,
        hashlib.sha256(aggregate_blob).digest(),
    )


def manifest_digest(manifest: Any) -> bytes:
    """sha256 over an UploadManifest's fields that the statement does not name itself."""
    doc = {
        "layout_id": manifest.layout_id,
        "mask_id": manifest.mask_id,
        "ciphertext_chunks": int(manifest.ciphertext_chunks),
        "plaintext_chunks": int(manifest.plaintext_chunks),
        "num_values": int(manifest.num_values),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).digest()
