"""Idempotent receipt of content-addressed pieces (upload chunks, decryption shares)."""

from __future__ import annotations

import hashlib
from typing import Any

from fedhe_common.errors import ConflictError, InvalidArgumentError


def verified_digest(payload: bytes, claimed: bytes, what: str) -> bytes:
    """sha256 of ``payload``, which must equal the sender's ``claimed`` hash."""
    digest = hashlib.sha256(payload).digest()
    if digest != bytes(claimed):
        raise InvalidArgumentError(f"{what} sha256 does not match its payload")
    return digest


def is_repeat(stored: list[tuple[Any, ...]], digest: bytes, what: str) -> bool:
    """True if the identical piece was already received; a different one is a conflict."""
    if not stored:
        return False
    if bytes(stored[0][0]) != digest:
        raise ConflictError(f"{what} was already received with another hash")
    return True
