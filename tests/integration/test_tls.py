"""TLS: services with `fedhe certs init` certificates; clients verify against the CA."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from fedhe_cli.app import cli
from fedhe_common._proto.fedhe.keyauth.v1 import keyauth_pb2 as pb
from fedhe_common._proto.fedhe.keyauth.v1 import keyauth_pb2_grpc as pb_grpc
from fedhe_common.config.models import IdentitySection, PeerSection, TLSSection
from fedhe_common.rpc.auth import TokenAuthority, call_metadata, token_sha256
from fedhe_common.rpc.transport import create_channel, create_server
from fedhe_keyauth.servicer import KeyAuthorityServicer
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

    def register(server: grpc.Server) -> list[str]:
        pb_grpc.add_KeyAuthorityServiceServicer_to_server(servicer, server)
        return []

    tls = TLSSection(cert_file=str(pki / "keyauth.crt"), key_file=str(pki / "keyauth.key"))
    server, port, _ = create_server("127.0.0.1:0", False, tls, 4 << 20, register)
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
