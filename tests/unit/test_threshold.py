"""Threshold CKKS: N-of-N and t-of-N decryption, coalitions, and the one-share rule."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from fedhe_common.crypto.aggregate import CiphertextAggregator
from fedhe_common.crypto.context import CKKSContext
from fedhe_common.crypto.presets import get_preset
from fedhe_common.crypto.provenance import VerifiedAggregate
from fedhe_common.crypto.public import PublicKeyEncryptor
from fedhe_common.crypto.threshold import (
    ShareLedger,
    ShareRequest,
    ThresholdParty,
    collective_public_key,
    crs_for,
    decryption_share,
    fuse,
    ring_for,
)
from fedhe_common.errors import ConflictError, InvalidArgumentError, PermissionDeniedError


def _share(party, ledger, ctx, blob, request):  # type: ignore[no-untyped-def]
    """decryption_share with the aggregate taken as verified (as many clients as the request
    names): these tests are about the share, the ledger and the active set; verification
    against signed uploads has its own tests (test_verified_aggregates.py)."""
    clients = tuple(f"c{i}" for i in range(request.contributors))
    verified = VerifiedAggregate(
        request.job_id,
        request.round,
        request.chunk,
        clients,
        max(request.weight_sum, len(clients)),
        hashlib.sha256(blob).digest(),
    )
    return decryption_share(party, ledger, ctx, blob, request, verified)


def _setup(preset_name: str, parties: int, threshold: int | None, tmp: Path):  # type: ignore[no-untyped-def]
    ring = ring_for(get_preset(preset_name))
    a = crs_for(os.urandom(32), ring)
    members = [ThresholdParty(ring, alpha) for alpha in range(1, parties + 1)]
    params, pk_blob = collective_public_key(ring, [p.public_key_share(a) for p in members], a)
    if threshold is not None:
        alphas = [p.alpha for p in members]
        dealt = [p.deal(threshold, alphas) for p in members]
        for p in members:
            p.receive_shares([d[p.alpha] for d in dealt])
    ledgers = {p.alpha: ShareLedger(tmp / f"ledger-{p.alpha}.sqlite") for p in members}
    return ring, members, params, pk_blob, ledgers


def _round(params, pk_blob, n_clients: int = 3):  # type: ignore[no-untyped-def]
    enc = PublicKeyEncryptor(params, pk_blob)
    agg = CiphertextAggregator(params)
    rng = np.random.default_rng(0)
    xs = [rng.uniform(-10, 10, enc.preset.values_per_ciphertext) for _ in range(n_clients)]
    uploads = [enc.encrypt(x) for x in xs]
    acc = None
    for w, blob in enumerate(uploads, start=1):
        acc = agg.add_weighted(acc, agg.load_upload(blob), w)
    expected = sum(w * x for w, x in enumerate(xs, start=1))
    return agg.to_blob(acc), uploads, xs, expected


def _request(active, chunk=0, contributors=3):  # type: ignore[no-untyped-def]
    return ShareRequest("job", 1, chunk, contributors, 3, active)


@pytest.mark.parametrize("preset", ["threshold-strict", "threshold-practical"])
def test_n_of_n_decrypts_the_weighted_sum(preset: str, tmp_path: Path) -> None:
    ring, members, params, pk, ledgers = _setup(preset, 3, None, tmp_path)
    ctx = CKKSContext(params)
    aggregate, _, _, expected = _round(params, pk)
    shares = [
        _share(p, ledgers[p.alpha], ctx, aggregate, _request(None)) for p in members
    ]
    got = fuse(ctx, ring, aggregate, shares)
    assert np.abs(got - expected).max() < 1e-5
    # Missing one party's share: nothing useful comes out.
    assert np.abs(fuse(ctx, ring, aggregate, shares[:2]) - expected).max() > 1e3


def test_three_of_five_with_any_active_set(tmp_path: Path) -> None:
    ring, members, params, pk, ledgers = _setup("threshold-practical", 5, 3, tmp_path)
    ctx = CKKSContext(params)
    for chunk, active in enumerate([(1, 2, 3), (3, 4, 5), (1, 3, 5)]):
        aggregate, _, _, expected = _round(params, pk)
        shares = [
            _share(members[a - 1], ledgers[a], ctx, aggregate, _request(active, chunk))
            for a in active
        ]
        assert np.abs(fuse(ctx, ring, aggregate, shares) - expected).max() < 1e-5


def test_coalition_of_server_and_t_minus_1_parties_cannot_decrypt(tmp_path: Path) -> None:
    ring, members, params, pk, _ = _setup("threshold-practical", 5, 3, tmp_path)
    ctx = CKKSContext(params)
    aggregate, uploads, xs, expected = _round(params, pk)
    coalition = members[:2]  # t - 1 = 2 parties plus everything the server stores
    for target, truth in [(aggregate, expected), (uploads[0], xs[0])]:
        for guess in [(1, 2), (1, 2, 3)]:  # Lagrange over what they have / pretend a third
            shares = []
            for p in coalition:
                request = ShareRequest("attack", 9, len(shares) + hash(guess) % 1000, 3, 3, guess)
                ledger = ShareLedger(tmp_path / f"attack-{p.alpha}-{guess}.sqlite")
                blob = (
                    target
                    if target is aggregate
                    else CiphertextAggregator(params).to_blob(
                        CiphertextAggregator(params).load_upload(target)
                    )
                )
                shares.append(_share(p, ledger, ctx, blob, request))
            got = fuse(ctx, ring, blob, shares)
            assert np.abs(got - truth).max() > 1e3, guess


def test_one_share_per_ciphertext_even_across_active_sets_and_restarts(tmp_path: Path) -> None:
    _, members, params, pk, ledgers = _setup("threshold-practical", 5, 3, tmp_path)
    ctx = CKKSContext(params)
    aggregate, _, _, _ = _round(params, pk)
    party = members[0]
    _share(party, ledgers[1], ctx, aggregate, _request((1, 2, 3)))
    with pytest.raises(ConflictError):
        _share(party, ledgers[1], ctx, aggregate, _request((1, 2, 3)))
    with pytest.raises(ConflictError):
        _share(party, ledgers[1], ctx, aggregate, _request((1, 4, 5)))
    restarted = ShareLedger(tmp_path / "ledger-1.sqlite")
    with pytest.raises(ConflictError):
        _share(party, restarted, ctx, aggregate, _request((1, 2, 5)))
    assert restarted.count() == 1


def test_too_few_contributors_or_bad_shares_are_refused(tmp_path: Path) -> None:
    ring, members, params, pk, ledgers = _setup("threshold-practical", 3, None, tmp_path)
    ctx = CKKSContext(params)
    aggregate, uploads, _, _ = _round(params, pk)
    with pytest.raises(PermissionDeniedError):
        _share(members[0], ledgers[1], ctx, aggregate, _request(None, contributors=1))
    assert ledgers[1].count() == 0
    with pytest.raises(InvalidArgumentError):  # not a ciphertext of this context at all
        _share(members[0], ledgers[1], ctx, uploads[0][:-5], _request(None))
    share = _share(members[0], ledgers[1], ctx, aggregate, _request(None))
    other, _, _, _ = _round(params, pk)
    with pytest.raises(InvalidArgumentError, match="another ciphertext"):
        fuse(ctx, ring, other, [share])
    with pytest.raises(InvalidArgumentError):
        fuse(ctx, ring, aggregate, [share[:-8]])
    with pytest.raises(InvalidArgumentError, match="two shares"):
        fuse(ctx, ring, aggregate, [share, share])


def test_practical_shares_are_compressed_and_bombs_refused(tmp_path: Path) -> None:
    import zstandard

    from fedhe_common.crypto import envelope
    from fedhe_common.crypto.envelope import BlobKind
    from fedhe_common.crypto.threshold import SHARE_HEADER, SHARE_MAGIC_ZSTD, ciphertext_id

    ring, members, params, pk, ledgers = _setup("threshold-practical", 3, None, tmp_path)
    ctx = CKKSContext(params)
    aggregate, _, _, _ = _round(params, pk)
    share = _share(members[0], ledgers[1], ctx, aggregate, _request(None))
    raw_size = 8 * len(ring.q_data) * ring.n
    assert len(share) < 0.8 * raw_size  # 40-bit residues compress
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (64 << 20))
    header = SHARE_HEADER.pack(
        SHARE_MAGIC_ZSTD, 1, len(ring.q_data), ring.n, ciphertext_id(ctx, aggregate)
    )
    forged = envelope.wrap(BlobKind.DECRYPTION_SHARE, ctx.fingerprint, header + bomb)
    with pytest.raises(InvalidArgumentError):
        fuse(ctx, ring, aggregate, [forged])
