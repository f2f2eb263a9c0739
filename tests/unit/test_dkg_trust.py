"""The key authority's side of issue 10, finding 5: signed sealing keys, commitments
before shares, signed sealed blobs (DKGSession refuses anything else, changing nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedhe_common.crypto import e2e, identity
from fedhe_common.crypto.presets import get_preset
from fedhe_common.crypto.threshold import (
    ThresholdParty,
    crs_for,
    pk_share_commitment,
    ring_for,
)
from fedhe_common.errors import ConflictError, InvalidArgumentError, PermissionDeniedError
from fedhe_keyauth.dkg import DKGSession


def _join(session: DKGSession, client: str, key: bytes) -> int:
    x = e2e.public_key(e2e.new_private_key())
    sig = identity.sign(key, identity.SEALING_KEY, "job", client, x)
    return session.join(client, x, identity.public_key(key), sig)


def test_session_refuses_unsigned_keys_uncommitted_shares_and_unsigned_blobs(
    tmp_path: Path,
) -> None:
    session = DKGSession.create(tmp_path / "job" / "dkg", "threshold-practical", 3, 3)
    keys = {c: identity.new_private_key() for c in ("c1", "c2", "c3")}
    x = e2e.public_key(e2e.new_private_key())
    with pytest.raises(InvalidArgumentError):  # no identity key
        session.join("c1", x)
    forged = identity.sign(identity.new_private_key(), identity.SEALING_KEY, "job", "c1", x)
    with pytest.raises(PermissionDeniedError, match="does not verify"):
        session.join("c1", x, identity.public_key(keys["c1"]), forged)
    assert session.members() == []
    alphas = {c: _join(session, c, k) for c, k in keys.items()}
    ring = ring_for(get_preset("threshold-practical"))
    a = crs_for(bytes.fromhex(session.meta()["crs_seed"]), ring)
    shares = {
        c: ThresholdParty(ring, alphas[c]).public_key_share(a).astype("<u8").tobytes()
        for c in keys
    }
    with pytest.raises(ConflictError, match="committed"):  # shares only after commitments
        session.submit(alphas["c1"], shares["c1"], {}, {})
    for c, key in keys.items():
        commitment = pk_share_commitment("job", alphas[c], shares[c])
        with pytest.raises(PermissionDeniedError):  # signed by another party
            session.commit(alphas[c], commitment, identity.sign(
                keys["c2" if c != "c2" else "c1"], identity.COMMITMENT, "job", alphas[c],
                commitment))
        assert session.public_key_share(alphas[c]) == b""
        session.commit(
            alphas[c], commitment, identity.sign(key, identity.COMMITMENT, "job", alphas[c],
                                                 commitment)
        )
    other = ThresholdParty(ring, 9).public_key_share(a).astype("<u8").tobytes()
    with pytest.raises(PermissionDeniedError, match="does not open"):
        session.submit(alphas["c2"], other, {}, {})
    blob = b"sealed group key"
    bad = {1: (blob, identity.sign(keys["c2"], identity.SEALED, "job", "group-key", 1, 1, blob))}
    with pytest.raises(PermissionDeniedError, match="does not verify"):
        session.submit(alphas["c2"], shares["c2"], {}, bad)
    assert session.submitted() == []
    session.submit(alphas["c2"], shares["c2"], {}, {})
    assert session.public_key_share(alphas["c2"]) == shares["c2"]
