"""Every daemon serves grpc.health.v1."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration.conftest import Services


def test_both_daemons_report_serving(services: Services) -> None:
    for port, service in (
        (services.server_port, "fedhe.aggregation.v1.AggregationService"),
        (services.keyauth_port, "fedhe.keyauth.v1.KeyAuthorityService"),
    ):
        stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        for name in ("", service):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
