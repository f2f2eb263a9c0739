"""Distributed key generation sessions, coordinated (not trusted) by the key authority.

The authority hands out party numbers and a CRS seed, stores each party's
public-key share and relays end-to-end sealed blobs (Shamir shares, the clients'
group key). Once every public-key share is in, it publishes the collective public
key. It never sees a secret: the blobs are sealed to the parties' X25519 keys.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedhe_common.crypto.presets import get_preset
from fedhe_common.crypto.threshold import (
    check_threshold,
    collective_public_key,
    crs_for,
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

    def members(self) -> list[Member]:
        """Parties that joined, by alpha."""
        return [
            Member(m["alpha"], m["client_id"], bytes.fromhex(m["key"]))
            for m in self.meta()["members"]
        ]  # type: ignore[union-attr]

    def join(self, client_id: str, e2e_public_key: bytes) -> int:
        """Give a client its party number (the same one again on a retry)."""
        if len(e2e_public_key) != 32:
            raise InvalidArgumentError("e2e_public_key must be 32 bytes (X25519)")
        with self._lock:
            meta = self.meta()
            members = meta["members"]
            for m in members:  # type: ignore[union-attr]
                if m["client_id"] == client_id:
                    if bytes.fromhex(m["key"]) != e2e_public_key:
                        raise ConflictError("client already joined with another key")
                    return int(m["alpha"])
            if len(members) >= int(meta["parties"]):  # type: ignore[arg-type, call-overload]
                raise PermissionDeniedError("all parties of this job have joined")
            alpha = len(members) + 1  # type: ignore[arg-type]
            members.append(
                {
                    "alpha": alpha,
                    "client_id": client_id,  # type: ignore[union-attr]
                    "key": e2e_public_key.hex(),
                }
            )
            self._write_meta(meta)
            return alpha

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
        secret_shares: dict[int, bytes],
        group_keys: dict[int, bytes],
    ) -> None:
        """Store a party's public-key share and the blobs it sealed to others."""
        meta = self.meta()
        parties, threshold = int(meta["parties"]), int(meta["threshold"])  # type: ignore[call-overload]
        if len(self.members()) != parties:
            raise ConflictError("not every party has joined yet")
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
        for blob in [*secret_shares.values(), *group_keys.values()]:
            if len(blob) > MAX_BLOB_BYTES:
                raise InvalidArgumentError("sealed blob too large")
        with self._lock:
            path = self.folder / f"pkshare-{alpha}.bin"
            if path.exists():
                if path.read_bytes() != pk_share:
                    raise ConflictError("this party already submitted other shares")
                return
            for to, blob in secret_shares.items():
                atomic_write(self.folder / f"share-{alpha}-{to}.bin", blob, 0o600)
            for to, blob in group_keys.items():
                atomic_write(self.folder / f"groupkey-{to}.bin", blob, 0o600)
            atomic_write(path, pk_share, 0o600)  # last: marks the submission complete

    def submitted(self) -> list[int]:
        """Parties whose submission is complete."""
        return sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("pkshare-*.bin"))

    def sealed_for(self, alpha: int) -> tuple[dict[int, bytes], bytes | None]:
        """(Shamir shares sealed to ``alpha`` by sender, group key sealed to ``alpha``)."""
        shares = {
            int(p.stem.split("-")[1]): p.read_bytes()
            for p in self.folder.glob(f"share-*-{alpha}.bin")
        }
        gk = self.folder / f"groupkey-{alpha}.bin"
        return shares, gk.read_bytes() if gk.exists() else None

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
