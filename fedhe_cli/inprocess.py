"""Key authority and aggregation server in this process, on real loopback gRPC.

For benchmarks and integration tests that need one process's CPU accounting or
direct access to the server's state; the e2e tests and the demo use separate
processes (:mod:`fedhe_cli.cluster`).
"""

from __future__ import annotations

from pathlib import Path

from fedhe_common.config.models import (
    ClientConfig,
    IdentitySection,
    PartitionSection,
    PeerSection,
    ServerConfig,
)
from fedhe_common.rpc.auth import (
    TokenAuthority,
    call_metadata,
    new_token,
    token_sha256,
    write_secret_file,
)
from fedhe_common.rpc.serving import create_server
from fedhe_keyauth.servicer import KeyAuthorityServicer
from fedhe_keyauth.servicer import register as register_keyauth
from fedhe_keyauth.store import KeyStore
from fedhe_server.service import AggregationServer, max_message_bytes
from fedhe_server.servicer import AggregationServicer, register


class InProcessFederation:
    """Both daemons as gRPC servers on 127.0.0.1 inside this process."""

    def __init__(self, workdir: Path, clients: list[str]) -> None:
        self.workdir = workdir
        self.clients = clients
        self.tokens = {n: new_token() for n in ("server", "admin", *clients)}
        for name, token in self.tokens.items():
            write_secret_file(self.token_path(name), token)
        self.keystore = KeyStore(workdir / "keyauth")
        ka_roles = {"server": "server", **dict.fromkeys(clients, "client")}
        ka_servicer = KeyAuthorityServicer(self.keystore, TokenAuthority(self._ids(ka_roles)))
        self._ka_server = create_server(
            "127.0.0.1:0", True, None, 4 << 20, register_keyauth(ka_servicer)
        )
        self.keyauth_port = self._ka_server.port
        config = ServerConfig(
            listen="127.0.0.1:0",
            insecure=True,
            state_dir=str(workdir / "server"),
            keyauth=self.peer("server", self.keyauth_port),
            identities=self._ids({"admin": "admin", **dict.fromkeys(clients, "client")}),
        )
        self.server = AggregationServer(config)
        servicer = AggregationServicer(self.server, TokenAuthority(config.identities))
        self._agg_server = create_server(
            "127.0.0.1:0", True, None, max_message_bytes(), register(servicer)
        )
        self.server_port = self._agg_server.port

    def _ids(self, roles: dict[str, str]) -> list[IdentitySection]:
        return [
            IdentitySection(id=n, role=r, token_sha256=token_sha256(self.tokens[n]))  # type: ignore[arg-type]
            for n, r in roles.items()
        ]

    def token_path(self, name: str) -> Path:
        """Where an identity's token file is."""
        return self.workdir / "tokens" / f"{name}.token"

    def peer(self, name: str, port: int) -> PeerSection:
        """A peer section for ``name`` dialling ``port``."""
        return PeerSection(
            address=f"127.0.0.1:{port}", token_file=str(self.token_path(name)), insecure=True
        )

    def metadata(self, name: str) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying ``name``'s token."""
        return call_metadata(self.tokens[name])

    def client_config(
        self, name: str, index: int, count: int, num_samples: int | None = None
    ) -> ClientConfig:
        """A client config pointing at these services."""
        return ClientConfig(
            client_id=name,
            server=self.peer(name, self.server_port),
            keyauth=self.peer(name, self.keyauth_port),
            progress=False,
            partition=PartitionSection(index=index, count=count, num_samples=num_samples),
        )

    def close(self) -> None:
        """Stop both servers and the round keeper."""
        self._agg_server.stop(None)
        self.server.stop()
        self._ka_server.stop(None)
