"""Issue 10, findings 2, 3 and 5: shares only for aggregates verified against signed uploads,
c1 plausibility, and a key authority that substitutes keys is detected.

Each attack runs with the project's own functions, as the review did."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from fedhe_common.crypto import envelope, identity, sealbytes
from fedhe_common.crypto.aggregate import CiphertextAggregator
from fedhe_common.crypto.context import CKKSContext
from fedhe_common.crypto.envelope import BlobKind
from fedhe_common.crypto.provenance import (
    SignedContribution,
    check_c1_plausible,
    sign_upload,
    upload_statement,
    verify_aggregate,
)
from fedhe_common.crypto.public import PublicKeyEncryptor
from fedhe_common.crypto.threshold import (
    ShareRequest,
    check_collective_key,
    collective_public_key,
    crs_for,
    decryption_share,
    fuse,
    pk_share_commitment,
)
from fedhe_common.errors import (
    InvalidCiphertextError,
    KeyMaterialError,
    PermissionDeniedError,
)
from tests.unit.test_threshold import _setup

CLIENTS = ["c1", "c2", "c3"]


def _signed_round(params, pk_blob, weights=(1, 2, 3)):  # type: ignore[no-untyped-def]
    """Three clients encrypt, sign their upload statements; the server sums them."""
    enc = PublicKeyEncryptor(params, pk_blob)
    agg = CiphertextAggregator(params)
    keys = {c: identity.new_private_key() for c in CLIENTS}
    rng = np.random.default_rng(1)
    xs = [rng.uniform(-5, 5, enc.preset.values_per_ciphertext) for _ in CLIENTS]
    contributions, acc = [], None
    for client, w, x in zip(CLIENTS, weights, xs, strict=True):
        blob = enc.encrypt(x)
        contributions.append(_sign(keys[client], client, w, agg.ctx.fingerprint, blob))
        acc = agg.add_weighted(acc, agg.load_upload(blob), w)
    expected = sum(w * x for w, x in zip(weights, xs, strict=True))
    public = {c: identity.public_key(k) for c, k in keys.items()}
    return agg.to_blob(acc), contributions, public, keys, expected


def _sign(key: bytes, client: str, weight: int, fingerprint: bytes, blob: bytes):  # type: ignore[no-untyped-def]
    st = upload_statement(
        "job", 1, client, weight, fingerprint, [hashlib.sha256(blob).digest()], b"\0" * 32
    )
    return SignedContribution(client, st, sign_upload(key, st), blob)


def _forged(ctx: CKKSContext, ring, c0, c1, scale: float) -> bytes:  # type: ignore[no-untyped-def]
    seal = sealbytes.build_ciphertext(ctx.first_parms_id, np.stack([c0, c1]), scale)
    return envelope.wrap(BlobKind.CIPHERTEXT, ctx.fingerprint, seal)


def _small_poly(ring, bound: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """A deviating client's chosen C: moderate coefficients, NTT form at the data level."""
    coeffs = np.random.default_rng(7).integers(-bound, bound, ring.n)
    return ring.to_ntt(ring.residues(coeffs[None], "data"), "data")[0]


def test_honest_signed_round_verifies_and_decrypts(tmp_path: Path) -> None:
    ring, members, params, pk, ledgers = _setup("threshold-practical", 3, None, tmp_path)
    ctx = CKKSContext(params)
    aggregate, contributions, public, _, expected = _signed_round(params, pk)
    verified = verify_aggregate(params, aggregate, "job", 1, 0, contributions, public, 3)
    assert verified.weight_sum == 6 and verified.clients == tuple(CLIENTS)
    request = ShareRequest("job", 1, 0, 3, 3, None, 6)
    shares = [
        decryption_share(p, ledgers[p.alpha], ctx, aggregate, request, verified) for p in members
    ]
    assert np.abs(fuse(ctx, ring, aggregate, shares, 6) - expected).max() < 1e-5


def test_forged_aggregate_or_single_upload_gets_no_share(tmp_path: Path) -> None:
    """Finding 3: a server (with one client) passes off c0=0, c1=constant, or one upload."""
    ring, members, params, pk, ledgers = _setup("threshold-practical", 3, None, tmp_path)
    ctx = CKKSContext(params)
    aggregate, contributions, public, _, _ = _signed_round(params, pk)
    scale = ctx.preset.scale * ctx.preset.weight_scale
    zero = np.zeros((len(ring.q_data), ring.n), dtype=np.uint64)
    forged = _forged(ctx, ring, zero, ring.constant(1, "data"), scale)
    single = CiphertextAggregator(params).to_blob(
        CiphertextAggregator(params).load_upload(contributions[0].blob)
    )
    for target in (forged, single):
        with pytest.raises(PermissionDeniedError, match="not the weighted sum"):
            verify_aggregate(params, target, "job", 1, 0, contributions, public, 3)
    # The single upload with only its own signed statement: too few contributors.
    with pytest.raises(PermissionDeniedError, match="fewer than 3"):
        verify_aggregate(params, single, "job", 1, 0, contributions[:1], public, 3)
    # A verification of the real aggregate does not open a share for another blob.
    verified = verify_aggregate(params, aggregate, "job", 1, 0, contributions, public, 3)
    with pytest.raises(PermissionDeniedError, match="not verified"):
        decryption_share(
            members[0], ledgers[1], ctx, forged, ShareRequest("job", 1, 0, 3, 3, None), verified
        )
    assert ledgers[1].count() == 0


def test_signatures_distinct_clients_and_chunk_hashes_are_checked(tmp_path: Path) -> None:
    _, _, params, pk, _ = _setup("threshold-practical", 3, None, tmp_path)
    aggregate, contributions, public, keys, _ = _signed_round(params, pk)
    fp = CKKSContext(params).fingerprint
    c1, c2, c3 = contributions
    # The server re-signs nothing: a statement signed by another key is refused.
    other = _sign(identity.new_private_key(), "c3", 3, fp, c3.blob)
    # Three copies of one client's upload (the weights add up the same) are not 3 clients.
    dup = [c1, _sign(keys["c1"], "c1", 2, fp, c1.blob), _sign(keys["c1"], "c1", 3, fp, c1.blob)]
    tampered = SignedContribution("c3", c3.statement, c3.signature, c2.blob)
    outsider = _sign(identity.new_private_key(), "mallory", 3, fp, c3.blob)
    for bad, why in [
        ([c1, c2, other], "does not verify"),
        (dup, "two contributions"),
        ([c1, c2, tampered], "signed sha256"),
        ([c1, c2, outsider], "not an enrolled party"),
    ]:
        with pytest.raises(PermissionDeniedError, match=why):
            verify_aggregate(params, aggregate, "job", 1, 0, bad, public, 3)
    # Another round's statements do not verify this round's aggregate.
    with pytest.raises(PermissionDeniedError, match="another job, round"):
        verify_aggregate(params, aggregate, "job", 2, 0, contributions, public, 3)
    # min_clients pinned at key generation above the contributor count.
    with pytest.raises(PermissionDeniedError, match="fewer than 4"):
        verify_aggregate(params, aggregate, "job", 1, 0, contributions, public, 4)


@pytest.mark.parametrize("preset", ["threshold-strict", "threshold-practical"])
def test_deviating_client_c1_is_refused_honest_uploads_pass(preset: str, tmp_path: Path) -> None:
    """Finding 2: c0 = 0, c1 = a chosen moderate C (so C*s passes max_update_abs)."""
    ring, _, params, pk, _ = _setup(preset, 3, None, tmp_path)
    ctx = CKKSContext(params)
    agg = CiphertextAggregator(params)
    zero = np.zeros((len(ring.q_data), ring.n), dtype=np.uint64)
    for c1 in (_small_poly(ring, 1 << 12), ring.constant(12345, "data"), _small_poly(ring, 2)):
        attack = _forged(ctx, ring, zero, c1, ctx.preset.scale)
        ct = agg.load_upload(attack)  # well-formed: the form checks accept it
        with pytest.raises(InvalidCiphertextError, match="not plausibly uniform"):
            check_c1_plausible(ctx, ct)
    enc = PublicKeyEncryptor(params, pk)
    for _ in range(20):  # false refusal probability <= 2^-266 per prime (module docstring)
        check_c1_plausible(ctx, agg.load_upload(enc.encrypt(np.zeros(8))))
    # A party refuses the attack too, even inside a correctly summed aggregate.
    aggregate, contributions, public, keys, _ = _signed_round(params, pk)
    attack = _forged(ctx, ring, zero, _small_poly(ring, 1 << 12), ctx.preset.scale)
    signed = _sign(keys["c3"], "c3", 1, ctx.fingerprint, attack)
    with pytest.raises(InvalidCiphertextError, match="not plausibly uniform"):
        verify_aggregate(params, aggregate, "job", 1, 0, [*contributions[:2], signed], public, 3)


def test_key_authority_substituting_the_collective_key_is_detected(tmp_path: Path) -> None:
    """Finding 5: shares are committed, published and recomputed by every party."""
    ring, members, _, _, _ = _setup("threshold-practical", 3, None, tmp_path)
    seed = os.urandom(32)
    a = crs_for(seed, ring)
    shares = {p.alpha: p.public_key_share(a).astype("<u8").tobytes() for p in members}
    commits = {k: pk_share_commitment("job", k, v) for k, v in shares.items()}
    arrays = [np.frombuffer(shares[k], dtype="<u8").reshape(-1, ring.n) for k in sorted(shares)]
    _, honest_pk = collective_public_key(ring, arrays, a)
    _, got = check_collective_key(ring, seed, "job", shares, commits, honest_pk)
    assert got == honest_pk
    # A key authority that hands out a key of its own (it knows the secret).
    evil = members[0].__class__(ring, 9)
    _, evil_pk = collective_public_key(ring, [evil.public_key_share(a)], a)
    with pytest.raises(KeyMaterialError, match="not the sum"):
        check_collective_key(ring, seed, "job", shares, commits, evil_pk)
    # ... or substitutes one party's share after the commitments were in.
    swapped = dict(shares)
    swapped[2] = evil.public_key_share(a).astype("<u8").tobytes()
    with pytest.raises(KeyMaterialError, match="does not open"):
        check_collective_key(ring, seed, "job", swapped, commits, honest_pk)
