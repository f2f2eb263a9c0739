"""Bounded retries with exponential backoff and full jitter, only for transient failures.

Every FedHE RPC is idempotent (repeats are recognised by the server), so a call that
ran out of time (``DEADLINE_EXCEEDED``), found the peer down (``UNAVAILABLE``) or busy
(``RESOURCE_EXHAUSTED``) is sent again. A TLS certificate failure is not transient.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import grpc

from fedhe_common.rpc.errors import is_certificate_error

logger = logging.getLogger(__name__)
T = TypeVar("T")
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)


def call_with_retry(
    fn: Callable[[], T],
    *,
    what: str,
    max_elapsed_s: float = 120.0,
    base_s: float = 0.25,
    cap_s: float = 5.0,
    retryable: frozenset[grpc.StatusCode] = RETRYABLE,
) -> T:
    """Call ``fn`` until it succeeds, a non-retryable status arrives, or time runs out.

    ``fn`` must rebuild any request iterator itself: a consumed stream is never reused.
    """
    start = time.monotonic()
    attempt = 0
    while True:
        try:
            return fn()
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            elapsed = time.monotonic() - start
            detail = exc.details() if hasattr(exc, "details") else ""
            if code not in retryable or elapsed >= max_elapsed_s or is_certificate_error(detail):
                raise
            delay = min(cap_s, base_s * 2**attempt) * random.random()
            attempt += 1
            logger.info("%s: %s, retry %d in %.2fs", what, code.name, attempt, delay)
            time.sleep(min(delay, max(0.0, max_elapsed_s - elapsed)))
