"""Both daemons answer gRPC server reflection (``grpcurl HOST:PORT list`` works)."""

from __future__ import annotations

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.integration.conftest import Services

REFLECTION = "grpc.reflection.v1alpha.ServerReflection"
HEALTH = "grpc.health.v1.Health"


def _reflect(port: int, request: reflection_pb2.ServerReflectionRequest) -> object:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        return next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))


def test_both_daemons_list_their_services(services: Services) -> None:
    for port, service in (
        (services.server_port, "fedhe.aggregation.v1.AggregationService"),
        (services.keyauth_port, "fedhe.keyauth.v1.KeyAuthorityService"),
    ):
        reply = _reflect(port, reflection_pb2.ServerReflectionRequest(list_services=""))
        names = {s.name for s in reply.list_services_response.service}  # type: ignore[attr-defined]
        assert names == {service, HEALTH, REFLECTION}
        # A client can fetch the service's schema, not only its name.
        reply = _reflect(
            port, reflection_pb2.ServerReflectionRequest(file_containing_symbol=service)
        )
        files = reply.file_descriptor_response.file_descriptor_proto  # type: ignore[attr-defined]
        assert files and service.split(".")[-1].encode() in files[0]
