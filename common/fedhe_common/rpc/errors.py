"""FedHE errors <-> gRPC status codes, translated in exactly one place per side."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import grpc

from fedhe_common import errors as e

logger = logging.getLogger(__name__)
# Trailing-metadata key naming the FedHE error class behind a failed call.
ERROR_CLASS_KEY = "fedhe-error-class"

STATUS_MAP: dict[type[e.FedHEError], grpc.StatusCode] = {
    e.InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    e.ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
    e.KeyMaterialError: grpc.StatusCode.FAILED_PRECONDITION,
    e.AuthenticationError: grpc.StatusCode.UNAUTHENTICATED,
    e.PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    e.NotFoundError: grpc.StatusCode.NOT_FOUND,
    e.ConflictError: grpc.StatusCode.ALREADY_EXISTS,
    e.WrongRoundError: grpc.StatusCode.FAILED_PRECONDITION,
    e.IncompleteUploadError: grpc.StatusCode.FAILED_PRECONDITION,
    e.QuotaExceededError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.UnavailableError: grpc.StatusCode.UNAVAILABLE,
}
_REVERSE: dict[grpc.StatusCode, type[e.FedHEError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: e.InvalidArgumentError,
    grpc.StatusCode.UNAUTHENTICATED: e.AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: e.PermissionDeniedError,
    grpc.StatusCode.NOT_FOUND: e.NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: e.ConflictError,
    grpc.StatusCode.FAILED_PRECONDITION: e.WrongRoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: e.QuotaExceededError,
    grpc.StatusCode.UNAVAILABLE: e.UnavailableError,
}


def status_for(exc: e.FedHEError) -> grpc.StatusCode:
    """The gRPC status of a FedHE error (most specific class wins)."""
    for cls in type(exc).__mro__:
        if cls in STATUS_MAP:
            return STATUS_MAP[cls]  # type: ignore[index]
    return grpc.StatusCode.INTERNAL


def is_certificate_error(detail: str | None) -> bool:
    """True when a failed call's detail says the TLS certificates did not verify."""
    return "certificate" in (detail or "").lower()


def _error_class(exc: grpc.RpcError) -> type[e.FedHEError] | None:
    """The FedHE error class the peer named in its trailing metadata, if a known one."""
    trailers = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    pairs: Sequence[tuple[str, str | bytes]] = trailers or ()  # type: ignore[assignment]
    for key, value in pairs:
        if key == ERROR_CLASS_KEY:
            cls = getattr(e, str(value), None)
            if isinstance(cls, type) and issubclass(cls, e.FedHEError):
                return cls
    return None


def error_from_rpc(exc: grpc.RpcError) -> e.FedHEError:
    """A FedHE error for a failed call (the peer's public message kept).

    The class is the one the server raised (carried in trailing metadata), so that
    e.g. "mask not agreed yet" is never read as "wrong round"; else it follows the code.
    """
    code = exc.code() if hasattr(exc, "code") else None
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    cls = _error_class(exc) or _REVERSE.get(code, e.FedHEError)  # type: ignore[arg-type]
    if is_certificate_error(detail):
        detail = f"TLS certificate error (check ca_file, cert_file and key_file): {detail}"
    err = cls(f"{code.name if code else 'UNKNOWN'}: {detail}")
    err.status = code  # type: ignore[attr-defined]
    return err


@contextmanager
def rpc_errors() -> Iterator[None]:
    """Client side: turn ``grpc.RpcError`` into FedHE errors."""
    try:
        yield
    except grpc.RpcError as exc:
        raise error_from_rpc(exc) from None
