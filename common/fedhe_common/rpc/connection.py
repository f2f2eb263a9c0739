"""One channel to a peer, its bearer token, and unary calls with deadlines and retries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from fedhe_common.config.models import PeerSection
from fedhe_common.rpc.auth import call_metadata, read_secret_file
from fedhe_common.rpc.errors import rpc_errors
from fedhe_common.rpc.retry import call_with_retry
from fedhe_common.rpc.transport import create_channel

UNARY_TIMEOUT_S = 30.0


class PeerConnection:
    """A stub on one long-lived channel; ``call`` maps failures to FedHE errors."""

    def __init__(
        self, peer: PeerSection, stub_factory: Callable[[grpc.Channel], Any], max_message_bytes: int
    ) -> None:
        token = read_secret_file(peer.token_file) if peer.token_file else None
        self.metadata = call_metadata(token) if token else ()
        self.channel = create_channel(peer, max_message_bytes)
        self.stub = stub_factory(self.channel)

    def call(self, name: str, request: object, timeout: float = UNARY_TIMEOUT_S) -> Any:
        """A unary RPC with a deadline, retried on transient statuses only."""
        method = getattr(self.stub, name)
        with rpc_errors():
            return call_with_retry(
                lambda: method(request, timeout=timeout, metadata=self.metadata), what=name
            )

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()
