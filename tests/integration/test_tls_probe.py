"""``tls_problem``: the TLS probe that turns a refused or unverifiable certificate into one
line before gRPC retries it, against a real mutual-TLS gRPC server on loopback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedhe_common.config.models import PeerSection, TLSSection
from fedhe_common.pki import issue, new_ca, tls_problem, write_ca
from fedhe_common.rpc.serving import ServerHandle, create_server
from fedhe_common.rpc.transport import create_channel
from tests.e2e.helpers import free_port

BIN = Path(sys.executable).parent


def _pki(root: Path, name: str, leaves: list[str]) -> Path:
    ca = new_ca(f"{name} CA")
    write_ca(ca, root / name)
    for leaf in leaves:
        issue(ca, leaf, ["localhost", "127.0.0.1"], root / name / f"{leaf}.crt",
              root / name / f"{leaf}.key")  # fmt: skip
    return root / name


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Path, Path]:
    return _pki(tmp_path, "ours", ["server", "site"]), _pki(tmp_path, "other", ["site"])


@pytest.fixture
def server(pki: tuple[Path, Path]) -> Iterator[ServerHandle]:
    ours = pki[0]
    tls = TLSSection(cert_file=str(ours / "server.crt"), key_file=str(ours / "server.key"),
                     ca_file=str(ours / "ca.crt"))  # fmt: skip
    handle = create_server("127.0.0.1:0", False, tls, 1 << 20, lambda _server: [])
    yield handle
    handle.stop()


def _peer(port: int, ca: Path, leaf: Path | None, host: str = "localhost") -> PeerSection:
    if leaf is None:
        return PeerSection(address=f"{host}:{port}", ca_file=str(ca), token_file="unused")
    return PeerSection(address=f"{host}:{port}", ca_file=str(ca),
                       cert_file=f"{leaf}.crt", key_file=f"{leaf}.key")  # fmt: skip


def test_probe_tells_refused_and_unverifiable_certificates(
    pki: tuple[Path, Path], server: ServerHandle
) -> None:
    ours, other = pki
    port = server.port
    good = _peer(port, ours / "ca.crt", ours / "site")
    assert tls_problem(good) is None
    assert tls_problem(_peer(port, ours / "ca.crt", ours / "site", host="127.0.0.1")) is None
    # The good peer really gets through (the probe did not break the server).
    stub = health_pb2_grpc.HealthStub(create_channel(good, 1 << 20))
    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # Another CA's certificate: gRPC would say only "Socket closed"; the probe names it.
    refused = tls_problem(_peer(port, ours / "ca.crt", other / "site"))
    assert refused is not None and "refused this side's certificate" in refused
    assert str(other / "site.crt") in refused and "\n" not in refused
    foreign = _peer(port, ours / "ca.crt", other / "site")
    with pytest.raises(grpc.RpcError) as exc:
        health_pb2_grpc.HealthStub(create_channel(foreign, 1 << 20)).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "certificate" not in (exc.value.details() or "").lower()  # why the probe exists
    # A ca_file that does not verify the server.
    distrust = tls_problem(_peer(port, other / "ca.crt", ours / "site"))
    assert distrust is not None and "does not verify with ca_file" in distrust
    # No client certificate at all.
    anonymous = tls_problem(_peer(port, ours / "ca.crt", None))
    assert anonymous is not None and "wants a client certificate" in anonymous


def test_probe_says_nothing_when_it_cannot_tell(pki: tuple[Path, Path]) -> None:
    ours = pki[0]
    down = _peer(free_port(), ours / "ca.crt", ours / "site")
    assert tls_problem(down) is None  # nobody listening: gRPC's retries handle that
    insecure = PeerSection(address="127.0.0.1:1", token_file="t", insecure=True)
    assert tls_problem(insecure) is None


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_one_job_client_and_server_stop_at_once_on_a_refused_certificate(
    pki: tuple[Path, Path], server: ServerHandle, tmp_path: Path
) -> None:
    """``fedhe-client run --once`` and ``fedhe-server serve`` (towards its key authority)
    exit with one TLS line instead of retrying a certificate the peer refuses."""
    ours, other = pki
    peer = {"address": f"localhost:{server.port}", "ca_file": str(ours / "ca.crt"),
            "cert_file": str(other / "site.crt"), "key_file": str(other / "site.key")}  # fmt: skip
    client = {"client_id": "site", "server": peer, "keyauth": peer,
              "partition": {"index": 0, "count": 1}}  # fmt: skip
    (tmp_path / "client.yaml").write_text(yaml.safe_dump(client))
    done = _run(
        [str(BIN / "fedhe-client"), "run", "--once", "--config", str(tmp_path / "client.yaml")]
    )
    assert done.returncode != 0
    assert (
        "TLS certificate error" in done.stderr and "refused this side's certificate" in done.stderr
    )
    server_config = {
        "state_dir": str(tmp_path / "state"), "listen": "127.0.0.1:0", "insecure": True,
        "keyauth": peer, "identities": [{"id": "admin", "role": "admin", "token_sha256": "0" * 64}],
    }  # fmt: skip
    (tmp_path / "server.yaml").write_text(yaml.safe_dump(server_config))
    done = _run([str(BIN / "fedhe-server"), "serve", "--config", str(tmp_path / "server.yaml")])
    assert done.returncode != 0
    assert "TLS certificate error (key authority)" in done.stderr
