"""Key authority: secret keys only to client identities; persistent, private key files."""

from __future__ import annotations

import stat

import grpc
import pytest

from fedhe_common._proto.fedhe.keyauth.v1 import keyauth_pb2 as pb
from fedhe_keyauth.store import KeyStore
from tests.integration.conftest import Services


def test_server_gets_public_material_only(services: Services) -> None:
    stub = services.keyauth_stub()
    created = stub.CreateJobKeys(
        pb.CreateJobKeysRequest(job_id="j1", preset="single-key"),
        metadata=services.metadata("server"),
    )
    assert created.created
    with pytest.raises(grpc.RpcError) as exc:
        stub.FetchClientKey(
            pb.FetchClientKeyRequest(job_id="j1"), metadata=services.metadata("server")
        )
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    public = stub.GetPublicContext(
        pb.GetPublicContextRequest(job_id="j1"), metadata=services.metadata("server")
    )
    secret = stub.FetchClientKey(
        pb.FetchClientKeyRequest(job_id="j1"), metadata=services.metadata("c1")
    )
    assert public.context_fingerprint == secret.context_fingerprint == created.context_fingerprint
    sk_body = secret.secret_key[40:]
    for field in public.ListFields():
        value = field[1]
        data = value.encode() if isinstance(value, str) else bytes(value)
        assert sk_body[100:164] not in data
    with pytest.raises(grpc.RpcError) as exc:
        stub.CreateJobKeys(
            pb.CreateJobKeysRequest(job_id="j2", preset="single-key"),
            metadata=services.metadata("c1"),
        )
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as exc:
        stub.GetPublicContext(
            pb.GetPublicContextRequest(job_id="j1"), metadata=(("authorization", "Bearer forged"),)
        )
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_key_files_are_private_and_survive_a_restart(services: Services) -> None:
    stub = services.keyauth_stub()
    fp = stub.CreateJobKeys(
        pb.CreateJobKeysRequest(job_id="j1", preset="single-key"),
        metadata=services.metadata("server"),
    ).context_fingerprint
    folder = services.keystore.root / "j1"
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    restarted = KeyStore(services.keystore.root.parent)
    assert restarted.fingerprint("j1") == fp
    again = stub.CreateJobKeys(
        pb.CreateJobKeysRequest(job_id="j1", preset="single-key"),
        metadata=services.metadata("server"),
    )
    assert not again.created and again.context_fingerprint == fp
    with pytest.raises(grpc.RpcError) as exc:
        stub.CreateJobKeys(
            pb.CreateJobKeysRequest(job_id="j1", preset="threshold-practical"),
            metadata=services.metadata("server"),
        )
    assert exc.value.code() == grpc.StatusCode.ALREADY_EXISTS
