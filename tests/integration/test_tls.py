"""TLS: services with `fedhe certs init` certificates; clients verify against the CA."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from fedhe_cli.app import cli
from fedhe_common._proto.fedhe.keyauth.v1 import keyauth_pb2 as pb
from fedhe_common._proto.fedhe.keyauth.v1 import keyauth_pb2_grpc as pb_grpc
from fedhe_common.config.models import IdentitySection, PeerSection, TLSSection
from fedhe_common.errors import UnavailableError
from fedhe_common.pki import init_pki
from fedhe_common.rpc.auth import TokenAuthority, call_metadata, token_sha256
from fedhe_common.rpc.connection import PeerConnection
from fedhe_common.rpc.serving import create_server
from fedhe_common.rpc.transport import create_channel
from fedhe_keyauth.servicer import KeyAuthorityServicer, register
from fedhe_keyauth.store import KeyStore


def test_keyauth_over_tls(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    result = CliRunner().invoke(cli, ["certs", "init", "--out", str(pki)])
    assert result.exit_code == 0, result.output
    assert (pki / "keyauth.key").stat().st_mode & 0o077 == 0
    token = "t" * 40
    servicer = KeyAuthorityServicer(
        KeyStore(tmp_path / "ka"),
        TokenAuthority(
            [IdentitySection(id="server", role="server", token_sha256=token_sha256(token))]
        ),
    )
    tls = TLSSection(cert_file=str(pki / "keyauth.crt"), key_file=str(pki / "keyauth.key"))
    server = create_server("127.0.0.1:0", False, tls, 4 << 20, register(servicer))
    port = server.port
    try:
        (tmp_path / "tok").write_text(token)
        peer = PeerSection(
            address=f"127.0.0.1:{port}",
            token_file=str(tmp_path / "tok"),
            ca_file=str(pki / "ca.crt"),
        )
        stub = pb_grpc.KeyAuthorityServiceStub(create_channel(peer, 4 << 20))
        reply = stub.CreateJobKeys(
            pb.CreateJobKeysRequest(job_id="j", preset="single-key"),
            metadata=call_metadata(token),
            timeout=30,
        )
        assert len(reply.context_fingerprint) == 32
        # A client trusting another CA cannot connect.
        other = tmp_path / "other"
        CliRunner().invoke(cli, ["certs", "init", "--out", str(other)])
        bad = PeerSection(
            address=f"127.0.0.1:{port}",
            token_file=str(tmp_path / "tok"),
            ca_file=str(other / "ca.crt"),
        )
        with pytest.raises(grpc.RpcError) as exc:
            pb_grpc.KeyAuthorityServiceStub(create_channel(bad, 4 << 20)).CreateJobKeys(
                pb.CreateJobKeysRequest(job_id="j", preset="single-key"),
                metadata=call_metadata(token),
                timeout=10,
            )
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)


def test_server_ca_file_requires_client_certificates(tmp_path: Path) -> None:
    """tls.ca_file on a server means mutual TLS: a client without a certificate is refused."""
    pki = tmp_path / "pki"
    init_pki(pki, ["keyauth", "client-1"], ["127.0.0.1", "localhost"])
    token = "t" * 40
    servicer = KeyAuthorityServicer(
        KeyStore(tmp_path / "ka"),
        TokenAuthority(
            [IdentitySection(id="server", role="server", token_sha256=token_sha256(token))]
        ),
    )
    tls = TLSSection(
        cert_file=str(pki / "keyauth.crt"),
        key_file=str(pki / "keyauth.key"),
        ca_file=str(pki / "ca.crt"),
    )
    server = create_server("127.0.0.1:0", False, tls, 4 << 20, register(servicer))
    (tmp_path / "tok").write_text(token)
    request = pb.CreateJobKeysRequest(job_id="j", preset="single-key")

    def call(peer: PeerSection) -> pb.CreateJobKeysResponse:
        stub = pb_grpc.KeyAuthorityServiceStub(create_channel(peer, 4 << 20))
        return stub.CreateJobKeys(request, metadata=call_metadata(token), timeout=10)

    base = {
        "address": f"127.0.0.1:{server.port}",
        "token_file": str(tmp_path / "tok"),
        "ca_file": str(pki / "ca.crt"),
    }
    try:
        with pytest.raises(grpc.RpcError) as exc:
            call(PeerSection(**base))
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        reply = call(
            PeerSection(
                **base, cert_file=str(pki / "client-1.crt"), key_file=str(pki / "client-1.key")
            )
        )
        assert len(reply.context_fingerprint) == 32
    finally:
        server.stop(None)


def test_certificate_errors_are_not_retried(tmp_path: Path) -> None:
    """A client that does not trust the server's certificate fails at once, not after minutes."""
    pki = tmp_path / "pki"
    init_pki(pki, ["keyauth"], ["127.0.0.1", "localhost"])
    servicer = KeyAuthorityServicer(KeyStore(tmp_path / "ka"), TokenAuthority([]))
    tls = TLSSection(cert_file=str(pki / "keyauth.crt"), key_file=str(pki / "keyauth.key"))
    server = create_server("127.0.0.1:0", False, tls, 4 << 20, register(servicer))
    (tmp_path / "tok").write_text("t" * 40)
    (tmp_path / "tok").chmod(0o600)
    peer = PeerSection(address=f"127.0.0.1:{server.port}", token_file=str(tmp_path / "tok"))
    conn = PeerConnection(peer, pb_grpc.KeyAuthorityServiceStub, 4 << 20)
    try:
        t0 = time.monotonic()
        with pytest.raises(UnavailableError, match="certificate"):
            conn.call("GetPublicContext", pb.GetPublicContextRequest(job_id="j"), timeout=10)
        assert time.monotonic() - t0 < 15
    finally:
        conn.close()
        server.stop(None)
