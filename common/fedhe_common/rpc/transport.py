"""Channels and shared transport options: one place for TLS, message limits and keepalive.

Servers are built in :mod:`fedhe_common.rpc.serving` (``grpc.aio``).
"""

from __future__ import annotations

from pathlib import Path

import grpc

from fedhe_common.config.models import PeerSection
from fedhe_common.errors import ConfigError

MESSAGE_MARGIN_BYTES = 64 * 1024
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def message_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Send/receive limits: the largest chunk plus a margin, never gigabytes."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def read_file(path: str, what: str) -> bytes:
    """A key or certificate file's bytes, or a :class:`ConfigError` naming it."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror}") from None


def create_channel(peer: PeerSection, max_message_bytes: int) -> grpc.Channel:
    """One channel per peer for the process lifetime."""
    options = message_options(max_message_bytes) + KEEPALIVE_OPTIONS[:2]
    if peer.insecure:
        return grpc.insecure_channel(peer.address, options=options)
    creds = grpc.ssl_channel_credentials(
        root_certificates=read_file(peer.ca_file, "CA certificate") if peer.ca_file else None,
        private_key=read_file(peer.key_file, "TLS key") if peer.key_file else None,
        certificate_chain=read_file(peer.cert_file, "TLS certificate") if peer.cert_file else None,
    )
    return grpc.secure_channel(peer.address, creds, options=options)
