"""In-process key authority and aggregation server on real loopback gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2_grpc
from fedhe_common._proto.fedhe.keyauth.v1 import keyauth_pb2_grpc
from fedhe_common.config.models import IdentitySection, PeerSection, ServerConfig
from fedhe_common.rpc.auth import (
    TokenAuthority,
    call_metadata,
    new_token,
    token_sha256,
    write_secret_file,
)
from fedhe_common.rpc.transport import create_server
from fedhe_keyauth.servicer import KeyAuthorityServicer
from fedhe_keyauth.store import KeyStore
from fedhe_server.service import AggregationServer, max_message_bytes
from fedhe_server.servicer import AggregationServicer, register

CLIENTS = ("c1", "c2", "c3")


@dataclass
class Services:
    tmp: Path
    tokens: dict[str, str]
    keyauth_port: int
    server_port: int
    server: AggregationServer
    keystore: KeyStore

    def metadata(self, name: str) -> tuple[tuple[str, str], ...]:
        return call_metadata(self.tokens[name])

    def agg_stub(self) -> aggregation_pb2_grpc.AggregationServiceStub:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.server_port}")
        return aggregation_pb2_grpc.AggregationServiceStub(channel)

    def keyauth_stub(self) -> keyauth_pb2_grpc.KeyAuthorityServiceStub:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.keyauth_port}")
        return keyauth_pb2_grpc.KeyAuthorityServiceStub(channel)

    def peer(self, name: str, port: int) -> PeerSection:
        return PeerSection(
            address=f"127.0.0.1:{port}", token_file=str(self.tmp / f"{name}.token"), insecure=True
        )


def _identities(tokens: dict[str, str], roles: dict[str, str]) -> list[IdentitySection]:
    return [
        IdentitySection(id=n, role=r, token_sha256=token_sha256(tokens[n]))  # type: ignore[arg-type]
        for n, r in roles.items()
    ]


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    tokens = {n: new_token() for n in ("server", "admin", *CLIENTS)}
    for name, token in tokens.items():
        write_secret_file(tmp_path / f"{name}.token", token)
    roles = {"server": "server", **dict.fromkeys(CLIENTS, "client")}
    store = KeyStore(tmp_path / "keyauth")
    ka_servicer = KeyAuthorityServicer(store, TokenAuthority(_identities(tokens, roles)))

    def reg_keyauth(server: grpc.Server) -> list[str]:
        keyauth_pb2_grpc.add_KeyAuthorityServiceServicer_to_server(ka_servicer, server)
        return ["fedhe.keyauth.v1.KeyAuthorityService"]

    ka_server, ka_port, _ = create_server("127.0.0.1:0", True, None, 4 << 20, reg_keyauth)
    server_roles = {"admin": "admin", **dict.fromkeys(CLIENTS, "client")}
    config = ServerConfig(
        listen="127.0.0.1:0",
        insecure=True,
        state_dir=str(tmp_path / "server"),
        keyauth=PeerSection(
            address=f"127.0.0.1:{ka_port}", token_file=str(tmp_path / "server.token"), insecure=True
        ),
        identities=_identities(tokens, server_roles),
    )
    service = AggregationServer(config)
    servicer = AggregationServicer(service, TokenAuthority(config.identities))
    srv, port, _ = create_server("127.0.0.1:0", True, None, max_message_bytes(), register(servicer))
    yield Services(tmp_path, tokens, ka_port, port, service, store)
    srv.stop(None)
    service.stop()
    ka_server.stop(None)
