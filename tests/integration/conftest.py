"""In-process key authority and aggregation server on real loopback gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fedhe_cli.inprocess import InProcessFederation
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2_grpc
from fedhe_common._proto.fedhe.keyauth.v1 import keyauth_pb2_grpc

CLIENTS = ["c1", "c2", "c3"]


class Services(InProcessFederation):
    """The in-process federation plus raw stubs for poking at the APIs."""

    def agg_stub(self) -> aggregation_pb2_grpc.AggregationServiceStub:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.server_port}")
        return aggregation_pb2_grpc.AggregationServiceStub(channel)

    def keyauth_stub(self) -> keyauth_pb2_grpc.KeyAuthorityServiceStub:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.keyauth_port}")
        return keyauth_pb2_grpc.KeyAuthorityServiceStub(channel)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    federation = Services(tmp_path, CLIENTS)
    yield federation
    federation.close()
