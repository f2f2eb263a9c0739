"""Distributed key generation sessions, coordinated (not trusted) by the key authority.

The authority hands out party numbers and a CRS seed, stores each party's
public-key share and relays end-to-end sealed blobs (Shamir shares, the clients'
group key). Once every public-key share is in, it publishes the collective public
key. It never sees a secret: the blobs are sealed to the parties' X25519 keys.

It is not trusted (issue 10, finding 5): every party registers an Ed25519 identity
key and signs its X25519 key, a sha256 commitment to its public-key share (all
commitments are in before any share is accepted or published) and every sealed
blob; parties verify all of it and recompute the collective key from the
published shares (:func:`fedhe_common.crypto.threshold.check_collective_key`).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedhe_common.crypto import identity
from fedhe_common.crypto.presets import get_preset
from fedhe_common.crypto.threshold import (
    check_threshold,
    collective_public_key,
    crs_for,
    pk_share_commitment,
    ring_for,
)
from fedhe_common.errors import (
    ConflictError,
    InvalidArgumentError,
    PermissionDeniedError,
)
from fedhe_common.storage.atomic import atomic_write

MAX_BLOB_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Member:
    """One party of a session."""

    alpha: int
    client_id: str
    e2e_public_key: bytes
    identity_public_key: bytes = b""
    e2e_key_signature: bytes = b""
    commitment: bytes = b""
    commitment_signature: bytes = b""


class DKGSession:
    """Files under ``<job>/dkg/``; every write is atomic, so a restart resumes it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ setup
    @classmethod
    def create(cls, folder: Path, preset: str, parties: int, threshold: int) -> DKGSession:
        """Start a session (idempotent for the same parameters)."""
        session = cls(folder)
        if session.exists():
            meta = session.meta()
            if (meta["preset"], meta["parties"], meta["threshold"]) != (preset, parties, threshold):
                raise ConflictError("a key generation with other parameters exists")
            return session
        check_threshold(threshold, parties)  # t >= 2: t = 1 hands out the whole key
        ring_for(get_preset(preset))  # refuses presets without smudging
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        session._write_meta(
            {
                "preset": preset,
                "parties": parties,
                "threshold": threshold,
                "crs_seed": os.urandom(32).hex(),
                "members": [],
            }
        )
        return session

    def exists(self) -> bool:
        """True when a session was created here."""
        return (self.folder / "session.json").exists()

    def meta(self) -> dict[str, Any]:
        """The session's JSON document."""
        return json.loads((self.folder / "session.json").read_text())  # type: ignore[no-any-return]

    def _write_meta(self, meta: dict[str, object]) -> None:
        atomic_write(self.folder / "session.json", json.dumps(meta).encode(), 0o600)

    @property
    def job_id(self) -> str:
        """The job this session belongs to (``<job>/dkg``)."""
        return self.folder.parent.name

    def members(self) -> list[Member]:
        """Parties that joined, by alpha."""
        return [
            Member(
                m["alpha"],
                m["client_id"],
                bytes.fromhex(m["key"]),
                bytes.fromhex(m.get("identity", "")),
                bytes.fromhex(m.get("e2e_sig", "")),
                bytes.fromhex(m.get("commitment", "")),
                bytes.fromhex(m.get("commitment_sig", "")),
            )
            for m in self.meta()["members"]
        ]

    def join(
        self,
        client_id: str,
        e2e_public_key: bytes,
        identity_public_key: bytes = b"",
        e2e_key_signature: bytes = b"",
    ) -> int:
        """Give a client its party number (the same one again on a retry).

        The X25519 key must come signed by the party's Ed25519 identity key."""
        if len(e2e_public_key) != 32:
            raise InvalidArgumentError("e2e_public_key must be 32 bytes (X25519)")
        if len(identity_public_key) != identity.KEY_BYTES:
            raise InvalidArgumentError("identity_public_key must be 32 bytes (Ed25519)")
        identity.verify(
            identity_public_key,
            e2e_key_signature,
            identity.SEALING_KEY,
            self.job_id,
            client_id,
            e2e_public_key,
        )
        with self._lock:
            meta = self.meta()
            members = meta["members"]
            for m in members:
                if m["client_id"] == client_id:
                    same_identity = bytes.fromhex(m.get("identity", "")) == identity_public_key
                    if bytes.fromhex(m["key"]) != e2e_public_key or not same_identity:
                        raise ConflictError("client already joined with another key")
                    return int(m["alpha"])
            if len(members) >= int(meta["parties"]):
                raise PermissionDeniedError("all parties of this job have joined")
            alpha = len(members) + 1
            members.append(
                {
                    "alpha": alpha,
                    "client_id": client_id,
                    "key": e2e_public_key.hex(),
                    "identity": identity_public_key.hex(),
                    "e2e_sig": e2e_key_signature.hex(),
                }
            )
            self._write_meta(meta)
            return alpha

    def commit(self, alpha: int, commitment: bytes, signature: bytes) -> int:
        """Record a party's signed pk-share commitment; return how many committed."""
        if len(commitment) != 32:
            raise InvalidArgumentError("a commitment is a sha256 (32 bytes)")
        with self._lock:
            meta = self.meta()
            if len(meta["members"]) != int(meta["parties"]):
                raise ConflictError("not every party has joined yet")
            member = next(m for m in meta["members"] if int(m["alpha"]) == alpha)
            identity.verify(
                bytes.fromhex(member["identity"]),
                signature,
                identity.COMMITMENT,
                self.job_id,
                alpha,
                commitment,
            )
            if member.get("commitment"):
                if bytes.fromhex(member["commitment"]) != commitment:
                    raise ConflictError("this party already committed to another share")
            else:
                member["commitment"] = commitment.hex()
                member["commitment_sig"] = signature.hex()
                self._write_meta(meta)
            return sum(1 for m in meta["members"] if m.get("commitment"))

    def all_committed(self) -> bool:
        """True once every party's commitment is in (shares may then be published)."""
        members = self.members()
        return len(members) == int(self.meta()["parties"]) and all(
            m.commitment for m in members
        )

    def public_key_share(self, alpha: int) -> bytes:
        """A party's submitted share, published only after every commitment is in."""
        path = self.folder / f"pkshare-{alpha}.bin"
        return path.read_bytes() if self.all_committed() and path.exists() else b""

    def alpha_of(self, client_id: str) -> int:
        """The party number of a client, or PermissionDenied."""
        for m in self.members():
            if m.client_id == client_id:
                return m.alpha
        raise PermissionDeniedError(f"client {client_id!r} is not a party of this job")

    # ----------------------------------------------------------------- shares
    def submit(
        self,
        alpha: int,
        pk_share: bytes,
        secret_shares: dict[int, tuple[bytes, bytes]],
        group_keys: dict[int, tuple[bytes, bytes]],
    ) -> None:
        """Store a party's public-key share and the (blob, signature)s it sealed to others.

        Only after every party committed, and only a share that opens this party's
        commitment; every sealed blob must carry the sender's identity signature."""
        meta = self.meta()
        parties, threshold = int(meta["parties"]), int(meta["threshold"])
        if not self.all_committed():
            raise ConflictError("not every party has committed to its public-key share yet")
        member = next(m for m in self.members() if m.alpha == alpha)
        if pk_share_commitment(self.job_id, alpha, pk_share) != member.commitment:
            raise PermissionDeniedError("public-key share does not open this party's commitment")
        for purpose, blobs in (("shamir", secret_shares), ("group-key", group_keys)):
            for to, (blob, sig) in blobs.items():
                identity.verify(
                    member.identity_public_key,
                    sig,
                    identity.SEALED,
                    self.job_id,
                    purpose,
                    alpha,
                    to,
                    blob,
                )
        ring = ring_for(get_preset(str(meta["preset"])))
        expected = 8 * len(ring.q_key) * ring.n
        share = np.frombuffer(pk_share, dtype="<u8")
        if len(pk_share) != expected or not (share.reshape(-1, ring.n) < ring.primes("key")).all():
            raise InvalidArgumentError("malformed public-key share")
        alphas = set(range(1, parties + 1))
        if threshold < parties and set(secret_shares) != alphas:
            raise InvalidArgumentError("need one sealed Shamir share for every party")
        if alpha == 1 and set(group_keys) != alphas:
            raise InvalidArgumentError("party 1 must seal the group key to every party")
        for blob, _ in [*secret_shares.values(), *group_keys.values()]:
            if len(blob) > MAX_BLOB_BYTES:
                raise InvalidArgumentError("sealed blob too large")
        with self._lock:
            path = self.folder / f"pkshare-{alpha}.bin"
            if path.exists():
                if path.read_bytes() != pk_share:
                    raise ConflictError("this party already submitted other shares")
                return
            for to, (blob, sig) in secret_shares.items():
                atomic_write(self.folder / f"share-{alpha}-{to}.bin", sig + blob, 0o600)
            for to, (blob, sig) in group_keys.items():
                atomic_write(self.folder / f"groupkey-{to}.bin", sig + blob, 0o600)
            atomic_write(path, pk_share, 0o600)  # last: marks the submission complete

    def submitted(self) -> list[int]:
        """Parties whose submission is complete."""
        return sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("pkshare-*.bin"))

    def sealed_for(
        self, alpha: int
    ) -> tuple[dict[int, tuple[bytes, bytes]], tuple[bytes, bytes] | None]:
        """(Shamir (blob, signature)s sealed to ``alpha`` by sender, the group key's)."""
        shares = {
            int(p.stem.split("-")[1]): _split(p.read_bytes())
            for p in self.folder.glob(f"share-*-{alpha}.bin")
        }
        gk = self.folder / f"groupkey-{alpha}.bin"
        return shares, _split(gk.read_bytes()) if gk.exists() else None

    def collective_key(self) -> tuple[str, bytes, bytes] | None:
        """(params JSON, public key blob, fingerprint) once every share is in."""
        meta = self.meta()
        parties = int(meta["parties"])  # type: ignore[call-overload]
        if len(self.submitted()) != parties:
            return None
        ring = ring_for(get_preset(str(meta["preset"])))
        a = crs_for(bytes.fromhex(str(meta["crs_seed"])), ring)
        shares = [
            np.frombuffer((self.folder / f"pkshare-{i}.bin").read_bytes(), dtype="<u8").reshape(
                -1, ring.n
            )
            for i in range(1, parties + 1)
        ]
        params, pk_blob = collective_public_key(ring, shares, a)
        from fedhe_common.crypto.context import CKKSContext

        return params.to_json(), pk_blob, CKKSContext(params).fingerprint


def _split(data: bytes) -> tuple[bytes, bytes]:
    """A stored sealed blob: (blob, the sender's 64-byte signature in front of it)."""
    return data[identity.SIGNATURE_BYTES :], data[: identity.SIGNATURE_BYTES]
