"""Bearer-token identities: tokens live in 0600 files; configs hold only their sha256."""

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


class CallContext(Protocol):
    """The part of a servicer context (sync or ``grpc.aio``) that authentication reads."""

    def invocation_metadata(self) -> Any:
        """The call's metadata as (key, value) pairs."""
        ...


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
    """Maps presented tokens to configured identities (constant-time compare)."""

    def __init__(self, identities: Iterable[IdentitySection]) -> None:
        self._by_hash = {i.token_sha256: Identity(i.id, i.role) for i in identities}

    def identify(self, context: CallContext) -> Identity:
        """The caller's identity, or :class:`AuthenticationError`."""
        value = dict(context.invocation_metadata() or ()).get(METADATA_KEY, "")
        if not isinstance(value, str) or not value.startswith("Bearer "):
            raise AuthenticationError("missing bearer token")
        digest = token_sha256(value[len("Bearer ") :])
        for known, identity in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return identity
        raise AuthenticationError("unknown token")

    def require(self, context: CallContext, *roles: str) -> Identity:
        """Identify the caller and check its role."""
        identity = self.identify(context)
        if identity.role not in roles:
            raise PermissionDeniedError(
                f"identity {identity.id!r} ({identity.role}) may not do this"
            )
        return identity
