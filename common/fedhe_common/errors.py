"""The FedHE exception hierarchy; every error a caller can act on is one of these."""

from __future__ import annotations


class FedHEError(Exception):
    """Base class for all FedHE errors; ``message`` is safe to show to a peer."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(FedHEError):
    """A configuration file or option is invalid."""


class InvalidArgumentError(FedHEError):
    """A request or input value is malformed."""


class InvalidCiphertextError(InvalidArgumentError):
    """Untrusted ciphertext bytes failed structural or semantic validation."""


class ContextMismatchError(InvalidCiphertextError):
    """A blob was made under another CKKS context (fingerprint or parameters differ)."""


class KeyMaterialError(FedHEError):
    """Key material is missing, of the wrong role, or malformed."""


class ValueRangeError(InvalidArgumentError):
    """An aggregate would exceed the preset's value range and wrap silently."""


class ManifestMismatchError(InvalidArgumentError):
    """An upload does not match its manifest (count, layout, mask, round)."""


class AuthenticationError(FedHEError):
    """The caller's identity could not be established."""


class PermissionDeniedError(FedHEError):
    """The caller is known but not allowed to do this."""


class NotFoundError(FedHEError):
    """The named job, round, client or upload does not exist."""


class ConflictError(FedHEError):
    """The request conflicts with what was already accepted (e.g. same chunk, other hash)."""


class WrongRoundError(FedHEError):
    """The request names a round other than the open one."""


class RoundClosedError(WrongRoundError):
    """The round is closed; late uploads are not counted."""


class QuotaExceededError(FedHEError):
    """The request exceeds a size or concurrency limit."""


class UnavailableError(FedHEError):
    """The service is temporarily unable to serve (starting, draining)."""


class IncompleteUploadError(FedHEError):
    """A commit was asked for before every declared chunk arrived."""
