"""Caller identities: a mutual-TLS certificate's CN, or a bearer token.

Tokens live in 0600 files; configs hold only their sha256. With mutual TLS (a server whose
``tls.ca_file`` is set verifies every client certificate) the certificate names the caller and
the configured identities give its role; a token is then optional.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fedhe_common.config.models import IdentitySection
from fedhe_common.errors import AuthenticationError, ConfigError, PermissionDeniedError

METADATA_KEY = "authorization"
CN_KEY = "x509_common_name"


class CallContext(Protocol):
    """The part of a servicer context (sync or ``grpc.aio``) that authentication reads.

    ``auth_context()`` (the TLS peer's verified properties) is read when present.
    """

    def invocation_metadata(self) -> Any:
        """The call's metadata as (key, value) pairs."""
        ...


def certificate_name(context: CallContext) -> str | None:
    """The CN of the caller's verified client certificate, or None without one."""
    auth_context = getattr(context, "auth_context", None)
    if auth_context is None:
        return None
    props = auth_context() or {}
    if props.get("transport_security_type") != [b"ssl"]:
        return None
    names = props.get(CN_KEY) or []
    if len(names) != 1:
        return None
    name = names[0]
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


@dataclass(frozen=True)
class Identity:
    """An authenticated caller."""

    id: str
    role: str


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def token_sha256(token: str) -> str:
    """The hex sha256 stored in configs instead of the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


def read_secret_file(path: str | Path) -> str:
    """Read a token file, refusing files other users can read."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read token file: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{p}: token file must not be readable by others (chmod 600)")
    return p.read_text().strip()


def write_secret_file(path: str | Path, text: str) -> None:
    """Create a 0600 file holding ``text``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(p, 0o600)


def call_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Metadata to attach to every call."""
    return ((METADATA_KEY, f"Bearer {token}"),)


class TokenAuthority:
    """Names callers: the client certificate's CN first, else the bearer token.

    A certificate whose CN is a configured identity names the caller; a bearer token naming
    someone else on the same call is refused. Tokens compare in constant time.
    """

    def __init__(self, identities: Iterable[IdentitySection]) -> None:
        identities = list(identities)
        self._by_id = {i.id: Identity(i.id, i.role) for i in identities}
        self._by_hash = {
            i.token_sha256: Identity(i.id, i.role) for i in identities if i.token_sha256
        }

    def _from_token(self, context: CallContext) -> Identity | None:
        value = dict(context.invocation_metadata() or ()).get(METADATA_KEY)
        if value is None:
            return None
        if not isinstance(value, str) or not value.startswith("Bearer "):
            raise AuthenticationError("malformed authorization metadata (expected 'Bearer ...')")
        digest = token_sha256(value[len("Bearer ") :])
        for known, identity in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return identity
        raise AuthenticationError("unknown token")

    def identify(self, context: CallContext) -> Identity:
        """The caller's identity, or :class:`AuthenticationError`."""
        cn = certificate_name(context)
        by_cert = self._by_id.get(cn) if cn is not None else None
        by_token = self._from_token(context)
        if by_cert is not None:
            if by_token is not None and by_token != by_cert:
                raise AuthenticationError(
                    f"certificate names {by_cert.id!r} but the bearer token names {by_token.id!r}"
                )
            return by_cert
        if by_token is not None:
            return by_token
        if cn is not None:
            raise AuthenticationError(f"certificate CN {cn!r} is not a configured identity")
        raise AuthenticationError("missing bearer token or client certificate")

    def require(self, context: CallContext, *roles: str) -> Identity:
        """Identify the caller and check its role."""
        identity = self.identify(context)
        if identity.role not in roles:
            raise PermissionDeniedError(
                f"identity {identity.id!r} ({identity.role}) may not do this"
            )
        return identity


IdentityAuthority = TokenAuthority
