"""Issue 10 over real gRPC: the key authority is not trusted (finding 5), the server keeps
no power to have forged or unsigned aggregates decrypted (findings 2, 3).

Three in-process threshold parties run the real key generation against the in-process
key authority; a dishonest key authority is played by editing its state on disk."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedhe_client.threshold_member import ThresholdMember
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.load import parse_yaml
from fedhe_common.config.models import JobConfig
from fedhe_common.crypto import e2e, envelope, identity, sealbytes
from fedhe_common.crypto.envelope import BlobKind
from fedhe_common.crypto.public import PublicKeyEncryptor
from fedhe_common.crypto.threshold import collective_public_key, crs_for
from fedhe_common.errors import KeyMaterialError, PermissionDeniedError
from tests.integration.conftest import CLIENTS, Services

JOB = """
job: {name: trust, rounds: 1, seed: 0}
participants: {min_clients: 3, round_timeout_s: 120, wait_after_min_s: 60}
keys: {mode: threshold, parties: 3, threshold: 2, preset: threshold-practical}
model: {name: mlp, hidden: 8}
"""


def _member(services: Services, name: str, job: JobConfig) -> ThresholdMember:
    index = CLIENTS.index(name)
    config = services.client_config(name, index, len(CLIENTS)).model_copy(
        update={"state_dir": str(services.workdir / "parties" / name), "job_id": "trust"}
    )
    return ThresholdMember(config, "trust", job)


def _keygen(services: Services) -> tuple[JobConfig, dict[str, ThresholdMember]]:
    services.agg_stub().SubmitJob(
        pb.SubmitJobRequest(job_yaml=JOB), metadata=services.metadata("admin")
    )
    job = parse_yaml(JOB, JobConfig, "job")
    members: dict[str, ThresholdMember] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            member = _member(services, name, job)
            member.generate_keys()
            members[name] = member
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in CLIENTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return job, members


def test_key_authority_substitutions_are_detected(services: Services) -> None:
    job, members = _keygen(services)
    assert len({m.public_key for m in members.values()}) == 1
    ka_job = services.workdir / "keyauth" / "jobs" / "trust"
    # 1. The key authority hands out a collective key of its own (it would hold the secret).
    honest_pk = (ka_job / "public_key.bin").read_bytes()
    ring = members["c1"].ring
    a = crs_for(members["c1"].crs_seed, ring)
    evil = members["c1"].party.__class__(ring, 7)
    _, evil_pk = collective_public_key(ring, [evil.public_key_share(a)], a)
    (ka_job / "public_key.bin").write_bytes(evil_pk)
    with pytest.raises(KeyMaterialError, match="not the sum of the committed shares"):
        _member(services, "c1", job).generate_keys()
    (ka_job / "public_key.bin").write_bytes(honest_pk)
    _member(services, "c1", job).generate_keys()  # honest again: accepted
    # 2. It substitutes another party's X25519 sealing key (to open the Shamir shares sealed to it).
    session = json.loads((ka_job / "dkg" / "session.json").read_text())
    other = next(m for m in session["members"] if m["client_id"] != "c1")
    other["key"] = e2e.public_key(e2e.new_private_key()).hex()
    (ka_job / "dkg" / "session.json").write_text(json.dumps(session))
    with pytest.raises(PermissionDeniedError, match="sealing-key: signature does not verify"):
        _member(services, "c1", job).generate_keys()


def test_pinned_identity_keys_are_enforced(services: Services) -> None:
    _, members = _keygen(services)
    digests = {
        c: identity.key_digest(identity.public_key(m.identity_private)) for c, m in members.items()
    }
    _member(services, "c1", _pinned(digests)).generate_keys()  # the admin's pins match
    wrong = {**digests, "c2": hashlib.sha256(b"other").hexdigest()}
    with pytest.raises(PermissionDeniedError, match="does not match the job's pinned"):
        _member(services, "c1", _pinned(wrong)).generate_keys()
    # A job whose t differs from the key generation's: the party refuses to act on it.
    other_t = parse_yaml(JOB.replace("threshold: 2", "threshold: 3"), JobConfig, "job")
    with pytest.raises(KeyMaterialError, match="threshold"):
        _member(services, "c1", other_t).generate_keys()


def _pinned(digests: dict[str, str]) -> JobConfig:
    text = JOB.replace(
        "wait_after_min_s: 60}", f"wait_after_min_s: 60, identity_keys: {json.dumps(digests)}}}"
    )
    return parse_yaml(text, JobConfig, "job")


def _wait_running(services: Services) -> None:
    deadline = time.monotonic() + 30
    while services.server.db.round("trust", 1) is None:
        assert time.monotonic() < deadline, "the server never opened round 1"
        time.sleep(0.2)


def test_server_refuses_unsigned_and_non_uniform_uploads(services: Services) -> None:
    _, members = _keygen(services)
    _wait_running(services)
    m = members["c1"]
    assert m.params is not None
    enc = PublicKeyEncryptor(m.params, m.public_key)
    stub = services.agg_stub()
    md = services.metadata("c1")
    stub.RegisterClient(pb.RegisterClientRequest(client_id="c1", job_id="trust"), metadata=md)
    n = enc.preset.values_per_ciphertext
    manifest = pb.UploadManifest(
        job_id="trust",
        round=1,
        client_id="c1",
        layout_id="L" * 64,
        context_fingerprint=enc.fingerprint,
        ciphertext_chunks=1,
        num_values=n,
        sample_count=5,
    )
    # Finding 2: c0 = 0, c1 = a small chosen C is refused at UploadChunks.
    ctx = enc.ctx
    ring = m.ring
    zero = np.zeros((len(ring.q_data), ring.n), dtype=np.uint64)
    small = np.random.default_rng(3).integers(-(1 << 12), 1 << 12, ring.n)
    c1 = ring.to_ntt(ring.residues(small[None], "data"), "data")[0]
    attack = envelope.wrap(
        BlobKind.CIPHERTEXT,
        ctx.fingerprint,
        sealbytes.build_ciphertext(ctx.first_parms_id, np.stack([zero, c1]), ctx.preset.scale),
    )
    upload_id = stub.BeginUpload(pb.BeginUploadRequest(manifest=manifest), metadata=md).upload_id

    def send(payload: bytes) -> None:
        chunk = pb.Chunk(
            upload_id=upload_id,
            stream=pb.STREAM_KIND_CIPHERTEXT,
            index=0,
            num_values=n,
            payload=payload,
            sha256=hashlib.sha256(payload).digest(),
        )
        stub.UploadChunks(iter([pb.UploadChunksRequest(chunk=chunk)]), metadata=md)

    with pytest.raises(grpc.RpcError, match="not plausibly uniform"):
        send(attack)
    honest = enc.encrypt(np.zeros(n))
    send(honest)
    # Finding 3: an unsigned commit, or one signed by another key, is refused; nothing changes.
    with pytest.raises(grpc.RpcError) as unsigned:
        stub.CommitUpload(pb.CommitUploadRequest(upload_id=upload_id), metadata=md)
    assert unsigned.value.code() == grpc.StatusCode.PERMISSION_DENIED
    statement, _ = m.sign_upload(manifest, [honest])
    forged = identity.sign(identity.new_private_key(), "upload", statement)
    with pytest.raises(grpc.RpcError) as bad:
        stub.CommitUpload(
            pb.CommitUploadRequest(upload_id=upload_id, statement=statement, signature=forged),
            metadata=md,
        )
    assert bad.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert services.server.db.committed_uploads("trust", 1) == []
    statement, signature = m.sign_upload(manifest, [honest])
    stub.CommitUpload(
        pb.CommitUploadRequest(upload_id=upload_id, statement=statement, signature=signature),
        metadata=md,
    )
    assert len(services.server.db.committed_uploads("trust", 1)) == 1
    # Contributions are served only for a decrypting round.
    with pytest.raises(grpc.RpcError) as early:
        list(
            stub.GetContributions(
                pb.GetContributionsRequest(job_id="trust", client_id="c1", round=1, chunk=0),
                metadata=md,
            )
        )
    assert early.value.code() != grpc.StatusCode.OK


def test_identity_key_file_is_private(services: Services) -> None:
    _, members = _keygen(services)
    path = Path(members["c1"].folder) / "identity.key"
    assert path.stat().st_mode & 0o777 == 0o600


def test_decryption_shares_carry_their_party_signature(services: Services) -> None:
    """Every client holds the group key, so the seal alone would let c1 pose as c2 (finding 8)."""
    _, members = _keygen(services)
    c1, c2, c3 = (members[c] for c in CLIENTS)
    share = b"\x01" * 64
    sealed = c1.seal_share(1, 0, share)
    assert c3.open_share(1, 0, c1.alpha, sealed) == share
    # c1 re-labels its own signed share as party c2's: the seal opens, the signature fails.
    assert c1.group_key is not None
    plain = e2e.group_decrypt(c1.group_key, sealed, _aad_of(c1, 1, 0, c1.alpha))
    forged = e2e.group_encrypt(c1.group_key, plain, _aad_of(c1, 1, 0, c2.alpha))
    with pytest.raises(KeyMaterialError, match="not signed"):
        c3.open_share(1, 0, c2.alpha, forged)
    # Another round or chunk cannot reuse a signed share either.
    replay = e2e.group_encrypt(c1.group_key, plain, _aad_of(c1, 2, 0, c1.alpha))
    with pytest.raises(KeyMaterialError, match="not signed"):
        c3.open_share(2, 0, c1.alpha, replay)


def _aad_of(member: ThresholdMember, number: int, index: int, alpha: int) -> bytes:
    from fedhe_client.threshold_member import _aad

    return _aad(member.job_id, number, index, alpha)
