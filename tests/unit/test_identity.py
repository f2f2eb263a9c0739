"""Caller identity: a verified certificate's CN first, the bearer token second."""

from __future__ import annotations

from typing import Any

import pytest

from fedhe_common.config.models import IdentitySection, PeerSection
from fedhe_common.errors import AuthenticationError, PermissionDeniedError
from fedhe_common.rpc.auth import TokenAuthority, call_metadata, token_sha256


class Context:
    """The two servicer-context methods the authority reads (as grpc.aio provides them)."""

    def __init__(self, cn: str | None = None, token: str | None = None, ssl: bool = True) -> None:
        self._props: dict[str, list[bytes]] = {}
        if ssl:
            self._props["transport_security_type"] = [b"ssl"]
        if cn is not None:
            self._props["x509_common_name"] = [cn.encode()]
        self._metadata = call_metadata(token) if token else ()

    def invocation_metadata(self) -> Any:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._props


AUTH = TokenAuthority(
    [
        IdentitySection(id="site-a", role="client"),
        IdentitySection(id="site-b", role="client", token_sha256=token_sha256("b" * 40)),
        IdentitySection(id="alice", role="admin"),
    ]
)


def test_certificate_names_the_caller_and_config_gives_the_role() -> None:
    who = AUTH.require(Context(cn="site-a"), "client")
    assert (who.id, who.role) == ("site-a", "client")
    with pytest.raises(PermissionDeniedError):
        AUTH.require(Context(cn="alice"), "client")


def test_certificate_and_token_naming_different_callers_is_refused() -> None:
    with pytest.raises(AuthenticationError, match="bearer token names 'site-b'"):
        AUTH.identify(Context(cn="site-a", token="b" * 40))
    assert AUTH.identify(Context(cn="site-b", token="b" * 40)).id == "site-b"


def test_token_still_works_and_unknown_callers_are_refused() -> None:
    assert AUTH.identify(Context(token="b" * 40)).id == "site-b"
    assert AUTH.identify(Context(cn="unlisted", token="b" * 40)).id == "site-b"
    with pytest.raises(AuthenticationError, match="not a configured identity"):
        AUTH.identify(Context(cn="unlisted"))
    with pytest.raises(AuthenticationError, match="missing"):
        AUTH.identify(Context())
    with pytest.raises(AuthenticationError, match="unknown token"):
        AUTH.identify(Context(token="x" * 40))
    # A CN outside TLS (not verified) names nobody.
    with pytest.raises(AuthenticationError):
        AUTH.identify(Context(cn="site-a", ssl=False))


def test_peer_without_token_needs_a_certificate() -> None:
    PeerSection(address="h:1", ca_file="ca", cert_file="c", key_file="k")
    with pytest.raises(ValueError, match="token_file"):
        PeerSection(address="h:1", ca_file="ca")
    with pytest.raises(ValueError, match="token_file"):
        PeerSection(address="127.0.0.1:1", insecure=True)
