"""Servers and channels: one place for TLS, message limits, keepalive and health."""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedhe_common.config.models import PeerSection, TLSSection
from fedhe_common.errors import ConfigError

MESSAGE_MARGIN_BYTES = 64 * 1024
_KEEPALIVE = [
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


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror}") from None


def create_server(
    listen: str,
    insecure: bool,
    tls: TLSSection | None,
    max_message_bytes: int,
    register: Callable[[grpc.Server], list[str]],
    max_workers: int = 16,
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """Build and start a server; ``register`` adds servicers and returns their names.

    Returns (server, bound port, health servicer). Health reports SERVING for
    every registered service once started.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        options=message_options(max_message_bytes) + _KEEPALIVE,
        maximum_concurrent_rpcs=256,
    )
    names = register(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if insecure:
        port = server.add_insecure_port(listen)
    else:
        assert tls is not None
        key, cert = _read(tls.key_file, "TLS key"), _read(tls.cert_file, "TLS certificate")
        assert key is not None and cert is not None
        creds = grpc.ssl_server_credentials([(key, cert)])
        port = server.add_secure_port(listen, creds)
    if port == 0:
        raise ConfigError(f"cannot listen on {listen}")
    server.start()
    for name in [*names, ""]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port, health_servicer


def create_channel(peer: PeerSection, max_message_bytes: int) -> grpc.Channel:
    """One channel per peer for the process lifetime."""
    options = message_options(max_message_bytes) + _KEEPALIVE[:2]
    if peer.insecure:
        return grpc.insecure_channel(peer.address, options=options)
    creds = grpc.ssl_channel_credentials(root_certificates=_read(peer.ca_file, "CA certificate"))
    return grpc.secure_channel(peer.address, creds, options=options)
