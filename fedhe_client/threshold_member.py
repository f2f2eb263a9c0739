"""A client's part in a threshold job: key generation, decryption duty, fusion.

Everything secret stays in the client's ``state_dir`` (mode 0600 files): its X25519
key, its secret key share, its Shamir share, the clients' group key, the ledger of
ciphertexts it produced decryption shares for, and the sealed shares it sent (so a
retry re-sends the identical share instead of making a second one).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedhe_client.connection import ServerConnection
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as apb
from fedhe_common._proto.fedhe.keyauth.v1 import keyauth_pb2 as kpb
from fedhe_common._proto.fedhe.keyauth.v1 import keyauth_pb2_grpc as kpb_grpc
from fedhe_common.config.models import ClientConfig, JobConfig
from fedhe_common.crypto import e2e, identity
from fedhe_common.crypto.context import CKKSContext, PublicParams
from fedhe_common.crypto.presets import MIN_THRESHOLD_CLIENTS, get_preset
from fedhe_common.crypto.provenance import (
    SignedContribution,
    manifest_digest,
    sign_upload,
    upload_statement,
    verify_aggregate,
)
from fedhe_common.crypto.threshold import (
    ShareLedger,
    ShareRequest,
    ThresholdParty,
    check_collective_key,
    crs_for,
    decryption_share,
    fuse,
    pk_share_commitment,
    ring_for,
)
from fedhe_common.errors import (
    ConfigError,
    FedHEError,
    KeyMaterialError,
    PermissionDeniedError,
    WrongRoundError,
)
from fedhe_common.mlbridge.chunking import ChunkPlan
from fedhe_common.rpc.auth import read_secret_file, write_secret_file
from fedhe_common.rpc.connection import PeerConnection
from fedhe_common.rpc.errors import rpc_errors
from fedhe_common.storage.atomic import atomic_write

logger = logging.getLogger(__name__)
POLL_S = 0.5
KEYGEN_TIMEOUT_S = 600.0
CONTRIBUTIONS_TIMEOUT_S = 120.0


def _aad(*parts: object) -> bytes:
    return "|".join(str(p) for p in ("fedhe-threshold-v1", *parts)).encode()


class ThresholdMember:
    """Key generation with the other parties, decryption shares, and fusion."""

    def __init__(self, config: ClientConfig, job_id: str, job: JobConfig) -> None:
        if not config.state_dir:
            raise ConfigError("a threshold job needs state_dir in the client config")
        self.job_id = job_id
        self.job = job
        self.client_id = config.client_id
        self.folder = Path(config.state_dir) / job_id
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._keyauth = PeerConnection(config.keyauth, kpb_grpc.KeyAuthorityServiceStub, 8 << 20)
        self.e2e_private = self._load_or_create_key("e2e.key", e2e.new_private_key)
        self.identity_private = self._load_or_create_key("identity.key", identity.new_private_key)
        e2e_public = e2e.public_key(self.e2e_private)
        join = self._keyauth.call(
            "JoinKeyGeneration",
            kpb.JoinKeyGenerationRequest(
                job_id=job_id,
                e2e_public_key=e2e_public,
                identity_public_key=identity.public_key(self.identity_private),
                e2e_key_signature=self._sign(identity.SEALING_KEY, self.client_id, e2e_public),
            ),
        )
        self.alpha, self.parties, self.threshold = join.alpha, join.parties, join.threshold
        self.crs_seed = bytes(join.crs_seed)
        self.ring = ring_for(get_preset(join.preset))
        self.party = ThresholdParty(
            self.ring, self.alpha, self._load("secret"), self._load("shamir")
        )
        self._save("secret", self.party.secret)
        self.ledger = ShareLedger(self.folder / "ledger.sqlite")
        self.group_key = self._read_secret("group.key")
        self.params: PublicParams | None = None
        self.public_key = b""
        self.ctx: CKKSContext | None = None
        self.identity_keys: dict[str, bytes] = {}
        self._alpha_identity: dict[int, bytes] = {}
        self._peers: dict[int, bytes] = {}
        self.pinned: dict[str, object] = {}
        logger.info(
            "threshold party %d of %d (t=%d) for job %s",
            self.alpha,
            self.parties,
            self.threshold,
            job_id,
        )

    # ------------------------------------------------------------ local state
    def _read_secret(self, name: str) -> bytes | None:
        path = self.folder / name
        return bytes.fromhex(read_secret_file(path)) if path.exists() else None

    def _load_or_create_key(self, name: str, new: Callable[[], bytes]) -> bytes:
        """A private key kept 0600 in the state dir (made once)."""
        key = self._read_secret(name)
        if key is None:
            key = new()
            write_secret_file(self.folder / name, key.hex())
        return key

    def _load(self, name: str) -> np.ndarray | None:
        path = self.folder / f"{name}.npy"
        return np.load(path, allow_pickle=False) if path.exists() else None

    def _save(self, name: str, array: np.ndarray) -> None:
        path = self.folder / f"{name}.npy"
        if not path.exists():
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                np.save(f, array, allow_pickle=False)

    # ---------------------------------------------------------- key generation
    def generate_keys(self) -> tuple[PublicParams, bytes]:
        """Run the distributed key generation; return the collective public key.

        Nothing from the key authority is believed unchecked: identity keys (pinned
        by the job when it names them), signed sealing keys, signed commitments to
        every public-key share, and the collective key recomputed from the shares.
        """
        if (self.job.keys.parties, self.job.keys.threshold) != (self.parties, self.threshold):
            raise KeyMaterialError(
                f"the key authority's key generation has parties={self.parties}, threshold="
                f"{self.threshold}; the job says {self.job.keys.parties}, "
                f"{self.job.keys.threshold}"
            )
        deadline = time.monotonic() + KEYGEN_TIMEOUT_S
        status = self._wait(
            lambda s: len(s.parties) == s.expected_parties, deadline, "all parties to join"
        )
        self.identity_keys = self._check_parties(status)
        a = crs_for(self.crs_seed, self.ring)
        share_path = self.folder / "pkshare.bin"
        if not share_path.exists():  # one share, ever: a retry commits to the same bytes
            atomic_write(share_path, self.party.public_key_share(a).astype("<u8").tobytes())
        own_share = share_path.read_bytes()
        commitment = pk_share_commitment(self.job_id, self.alpha, own_share)
        self._keyauth.call(
            "CommitKeyShare",
            kpb.CommitKeyShareRequest(
                job_id=self.job_id,
                alpha=self.alpha,
                pk_share_commitment=commitment,
                commitment_signature=self._sign(identity.COMMITMENT, self.alpha, commitment),
            ),
        )
        status = self._wait(
            lambda s: all(p.pk_share_commitment for p in s.parties), deadline, "commitments"
        )
        commitments = self._check_commitments(status)
        if commitments[self.alpha] != commitment:
            raise KeyMaterialError("the key authority altered this party's commitment")
        if not (self.folder / "submitted").exists():
            self._submit_shares(status, own_share)
            (self.folder / "submitted").write_text("yes")

        def ready(s: kpb.GetKeyGenerationResponse) -> bool:
            shares_in = self.threshold == self.parties or len(s.secret_shares) == self.parties
            published = all(p.public_key_share for p in s.parties)
            return bool(s.complete and shares_in and s.HasField("group_key") and published)

        status = self._wait(ready, deadline, "the other parties' shares")
        shares = {p.alpha: bytes(p.public_key_share) for p in status.parties}
        if shares[self.alpha] != own_share:
            raise KeyMaterialError("the key authority published another share for this party")
        self.params, self.public_key = check_collective_key(
            self.ring, self.crs_seed, self.job_id, shares, commitments, bytes(status.public_key)
        )
        if self.group_key is None:
            self.group_key = e2e.open_sealed(
                self.e2e_private,
                self._verified_blob(status.group_key, "group-key"),
                _aad(self.job_id, "group-key", self.alpha),
            )
            write_secret_file(self.folder / "group.key", self.group_key.hex())
        if self.threshold < self.parties and self.party.shamir is None:
            parts = [
                np.frombuffer(
                    e2e.open_sealed(
                        self.e2e_private,
                        self._verified_blob(s, "shamir"),
                        _aad(self.job_id, "shamir", s.from_alpha, self.alpha),
                    ),
                    dtype="<u8",
                ).reshape(-1, self.ring.n)
                for s in status.secret_shares
            ]
            self.party.receive_shares(parts)
            self._save("shamir", self.party.shamir)  # type: ignore[arg-type]
        self.ctx = CKKSContext(self.params)
        self.pinned = self._pin()
        return self.params, self.public_key

    def _sign(self, domain: str, *parts: bytes | str | int) -> bytes:
        return identity.sign(self.identity_private, domain, self.job_id, *parts)

    def _check_parties(self, status: kpb.GetKeyGenerationResponse) -> dict[str, bytes]:
        """Identity keys by client (pins checked) after verifying every signed X25519 key."""
        pins = getattr(self.job.participants, "identity_keys", None)
        keys: dict[str, bytes] = {}
        alphas = sorted(p.alpha for p in status.parties)
        if alphas != list(range(1, self.parties + 1)):
            raise KeyMaterialError(f"the key authority lists parties {alphas}")
        for p in status.parties:
            public = bytes(p.identity_public_key)
            identity.check_pin(p.client_id, public, pins)
            identity.verify(
                public,
                bytes(p.e2e_key_signature),
                identity.SEALING_KEY,
                self.job_id,
                p.client_id,
                bytes(p.e2e_public_key),
            )
            if p.client_id in keys:
                raise KeyMaterialError(f"client {p.client_id!r} holds two party numbers")
            keys[p.client_id] = public
        if keys.get(self.client_id) != identity.public_key(self.identity_private):
            raise KeyMaterialError("the key authority lists another identity key for this party")
        self._alpha_identity = {p.alpha: bytes(p.identity_public_key) for p in status.parties}
        self._peers = {p.alpha: bytes(p.e2e_public_key) for p in status.parties}
        return keys

    def _check_commitments(self, status: kpb.GetKeyGenerationResponse) -> dict[int, bytes]:
        out = {}
        for p in status.parties:
            commitment = bytes(p.pk_share_commitment)
            identity.verify(
                self._alpha_identity[p.alpha],
                bytes(p.commitment_signature),
                identity.COMMITMENT,
                self.job_id,
                p.alpha,
                commitment,
            )
            out[p.alpha] = commitment
        return out

    def _verified_blob(self, sealed: kpb.SealedShare, purpose: str) -> bytes:
        """A sealed blob after checking its sender's identity signature."""
        sender = self._alpha_identity.get(sealed.from_alpha)
        if sender is None or sealed.to_alpha != self.alpha:
            raise KeyMaterialError(f"sealed {purpose} blob from an unknown party")
        identity.verify(
            sender,
            bytes(sealed.signature),
            identity.SEALED,
            self.job_id,
            purpose,
            sealed.from_alpha,
            sealed.to_alpha,
            bytes(sealed.blob),
        )
        return bytes(sealed.blob)

    def _pin(self) -> dict[str, object]:
        """Record (once) what this party decrypts under; refuse a job that changed it."""
        now = {
            "min_clients": max(self.job.participants.min_clients, MIN_THRESHOLD_CLIENTS),
            "parties": self.parties,
            "threshold": self.threshold,
            "identity_keys": {c: k.hex() for c, k in sorted(self.identity_keys.items())},
        }
        path = self.folder / "pinned.json"
        if path.exists():
            before = json.loads(path.read_text())
            if before != now:
                raise KeyMaterialError(
                    "the job's min_clients, parties, threshold or identity keys changed "
                    "since key generation: this party refuses to decrypt under them"
                )
        else:
            atomic_write(path, json.dumps(now, sort_keys=True).encode(), 0o600)
        return now

    def _wait(self, done, deadline: float, what: str) -> kpb.GetKeyGenerationResponse:  # type: ignore[no-untyped-def]
        while True:
            status = self._keyauth.call(
                "GetKeyGeneration", kpb.GetKeyGenerationRequest(job_id=self.job_id)
            )
            if done(status):
                return status  # type: ignore[return-value]
            if time.monotonic() > deadline:
                raise KeyMaterialError(f"timed out waiting for {what}")
            time.sleep(POLL_S)

    def _submit_shares(self, status: kpb.GetKeyGenerationResponse, own_share: bytes) -> None:
        request = kpb.SubmitKeySharesRequest(
            job_id=self.job_id, alpha=self.alpha, public_key_share=own_share
        )
        peers = self._peers
        if self.threshold < self.parties:
            for to, share in self.party.deal(self.threshold, sorted(peers)).items():
                blob = e2e.seal_to(
                    peers[to],
                    share.astype("<u8").tobytes(),
                    _aad(self.job_id, "shamir", self.alpha, to),
                )
                sig = self._sign(identity.SEALED, "shamir", self.alpha, to, blob)
                request.secret_shares.add(
                    from_alpha=self.alpha, to_alpha=to, blob=blob, signature=sig
                )
        if self.alpha == 1:
            group_key = os.urandom(32)
            for to, pub in peers.items():
                blob = e2e.seal_to(pub, group_key, _aad(self.job_id, "group-key", to))
                sig = self._sign(identity.SEALED, "group-key", 1, to, blob)
                request.group_keys.add(from_alpha=1, to_alpha=to, blob=blob, signature=sig)
        self._keyauth.call("SubmitKeyShares", request)
        logger.info("party %d: public-key share and sealed shares submitted", self.alpha)

    # ------------------------------------------------------------- uploads
    def sign_upload(
        self, manifest: apb.UploadManifest, ciphertext: list[bytes]
    ) -> tuple[bytes, bytes]:
        """(statement, signature) for one upload: what parties verify aggregates against."""
        statement = upload_statement(
            manifest.job_id,
            manifest.round,
            manifest.client_id,
            manifest.sample_count,
            bytes(manifest.context_fingerprint),
            [hashlib.sha256(c).digest() for c in ciphertext],
            manifest_digest(manifest),
        )
        return statement, sign_upload(self.identity_private, statement)

    def contributions(
        self, conn: ServerConnection, client_id: str, number: int, chunk: int
    ) -> list[SignedContribution]:
        """The signed uploads the server says went into one aggregate chunk."""
        with rpc_errors():
            stream = conn.stub.GetContributions(
                apb.GetContributionsRequest(
                    job_id=self.job_id, client_id=client_id, round=number, chunk=chunk
                ),
                timeout=CONTRIBUTIONS_TIMEOUT_S,
                metadata=conn.metadata,
            )
            out: list[SignedContribution] = []
            for c in stream:
                if len(out) >= len(self.identity_keys):
                    raise PermissionDeniedError("more contributions than enrolled parties")
                out.append(
                    SignedContribution(
                        c.client_id, bytes(c.statement), bytes(c.signature), bytes(c.payload)
                    )
                )
            return out

    # ------------------------------------------------------------- decryption
    def decrypt_duty(self, conn: ServerConnection, client_id: str, number: int) -> None:
        """Volunteer for a round's decryption and, if active, send sealed shares."""
        assert self.ctx is not None and self.group_key is not None
        deadline = time.monotonic() + self.job.participants.round_timeout_s
        try:
            while True:
                offer = conn.volunteer(self.job_id, client_id, number)
                if offer.active_parties or time.monotonic() > deadline:
                    break
                time.sleep(POLL_S)
        except WrongRoundError as exc:  # aborted (too few parties) or already complete
            logger.warning("round %d decryption ended without this party: %s", number, exc)
            return
        active = list(offer.active_parties)
        if self.alpha not in active:
            logger.info("round %d: not in the active set %s", number, active)
            return
        header, chunks = conn.download(self.job_id, number)
        request_active = tuple(active) if self.threshold < self.parties else None
        sealed: list[apb.Chunk] = []
        for chunk in chunks:
            if chunk.stream != apb.STREAM_KIND_CIPHERTEXT:
                continue
            path = self.folder / f"share-{number}-{chunk.index}.bin"
            if not path.exists():  # produced once; a retry re-sends the same bytes
                verified = verify_aggregate(
                    self.params,  # type: ignore[arg-type]
                    chunk.payload,
                    self.job_id,
                    number,
                    chunk.index,
                    self.contributions(conn, client_id, number, chunk.index),
                    self.identity_keys,
                    int(self.pinned["min_clients"]),  # type: ignore[call-overload]
                )
                share = decryption_share(
                    self.party,
                    self.ledger,
                    self.ctx,
                    chunk.payload,
                    ShareRequest(
                        self.job_id,
                        number,
                        chunk.index,
                        header.contributors,
                        int(self.pinned["min_clients"]),  # type: ignore[call-overload]
                        request_active,
                        max(1, int(header.weight_sum)),
                        self.parties,
                        self.threshold,
                    ),
                    verified,
                )
                atomic_write(path, self.seal_share(number, chunk.index, share), 0o600)
            sealed.append(
                apb.Chunk(
                    stream=apb.STREAM_KIND_DECRYPTION_SHARE,
                    index=chunk.index,
                    party=self.alpha,
                    payload=path.read_bytes(),
                )
            )
        conn.submit_shares(self.job_id, number, sealed)
        logger.info(
            "round %d: %d decryption shares sent (active set %s)", number, len(sealed), active
        )

    def seal_share(self, number: int, index: int, share: bytes) -> bytes:
        """This party's decryption share, signed with its identity key, sealed to the group."""
        assert self.group_key is not None
        digest = hashlib.sha256(share).digest()
        signature = self._sign(identity.DECRYPTION_SHARE, number, index, self.alpha, digest)
        aad = _aad(self.job_id, number, index, self.alpha)
        return e2e.group_encrypt(self.group_key, share + signature, aad)

    def open_share(self, number: int, index: int, party: int, payload: bytes) -> bytes:
        """A relayed share, after checking that party ``party`` signed it.

        Every client holds the group key, so the seal alone does not say who made a
        share; the identity signature does (a client cannot pose as another party).
        """
        assert self.group_key is not None
        sender = self._alpha_identity.get(party)
        if sender is None:
            raise KeyMaterialError(f"decryption share from unknown party {party}")
        plain = e2e.group_decrypt(self.group_key, payload, _aad(self.job_id, number, index, party))
        if len(plain) <= identity.SIGNATURE_BYTES:
            raise KeyMaterialError(f"decryption share of party {party} is too short")
        share, signature = plain[: -identity.SIGNATURE_BYTES], plain[-identity.SIGNATURE_BYTES :]
        digest = hashlib.sha256(share).digest()
        try:
            identity.verify(
                sender, signature, identity.DECRYPTION_SHARE, self.job_id, number, index, party,
                digest,
            )
        except FedHEError as exc:
            raise KeyMaterialError(
                f"decryption share of party {party} is not signed by it: {exc.message}"
            ) from None
        return share

    def decode(
        self, header: apb.AggregateHeader, chunks: list[apb.Chunk], plan: ChunkPlan | None = None
    ) -> np.ndarray:
        """Fuse the active parties' shares with each ciphertext chunk (the weighted sums).

        ``plan`` is the ciphertext stream's chunk plan (all values when omitted).
        """
        assert self.ctx is not None and self.group_key is not None
        if plan is None:
            plan = ChunkPlan(int(header.num_values), self.ctx.preset.values_per_ciphertext)
        total = plan.total
        cts = {c.index: c.payload for c in chunks if c.stream == apb.STREAM_KIND_CIPHERTEXT}
        shares: dict[int, list[bytes]] = {}
        for c in chunks:
            if c.stream == apb.STREAM_KIND_DECRYPTION_SHARE:
                shares.setdefault(c.index, []).append(
                    self.open_share(header.round, c.index, c.party, c.payload)
                )
        if len(cts) != plan.count or any(
            len(shares.get(k, [])) != len(header.active_parties) for k in range(plan.count)
        ):
            raise FedHEError("aggregate or decryption shares incomplete")
        weight_sum = max(1, int(header.weight_sum))  # sizes the release grid
        out = np.empty(total)
        for k in range(plan.count):
            start, stop = plan.bounds(k)
            fused = fuse(self.ctx, self.ring, cts[k], shares[k], weight_sum)
            out[start:stop] = fused[: stop - start]
        return out

    def close(self) -> None:
        """Close the key authority channel."""
        self._keyauth.close()
