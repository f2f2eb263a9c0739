"""`fedhe provision`: kits with mutual TLS; real daemons name callers by their certificates."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from click.testing import CliRunner

from fedhe_cli.app import cli
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2_grpc as pb_grpc
from fedhe_common.config.models import PeerSection
from fedhe_common.rpc.transport import create_channel

BIN = Path(sys.executable).parent
PROJECT = """
name: test
keyauth: {id: keyauth, hosts: [localhost, 127.0.0.1], port: 7001}
server: {id: server, hosts: [localhost, 127.0.0.1], port: 7000}
admins: [{id: alice}]
sites:
  - {id: site-a, hosts: [site-a.example.org]}
  - {id: site-b}
"""
JOB = "job: {name: mtls-job, rounds: 2}\n"


def _start(tmp: Path, name: str, args: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    port_file = tmp / f"{name}.port"
    log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(
        [str(BIN / f"fedhe-{name}"), "serve", *args, "--port-file", str(port_file)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return proc, int(port_file.read_text())
        if proc.poll() is not None:
            raise RuntimeError((tmp / f"{name}.log").read_text())
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError((tmp / f"{name}.log").read_text())


def _rewrite(path: Path, **changes: object) -> Path:
    doc = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = doc
        for p in parents:
            node = node[p]
        node[leaf] = value
    out = path.with_name(f"local-{path.name}")
    out.write_text(yaml.safe_dump(doc))
    return out


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "project.yaml").write_text(PROJECT)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["provision", str(tmp_path / "project.yaml"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def daemons(project: Path, tmp_path: Path) -> Iterator[int]:
    """Key authority and server from the kits (listening on 127.0.0.1:0); the server's port."""
    kits = project / "kits"
    procs = []
    try:
        ka_cfg = _rewrite(kits / "keyauth" / "keyauth.yaml", listen="127.0.0.1:0")
        ka, ka_port = _start(tmp_path, "keyauth", ["--config", str(ka_cfg)])
        procs.append(ka)
        srv_cfg = _rewrite(
            kits / "server" / "server.yaml",
            listen="127.0.0.1:0",
            keyauth__address=f"127.0.0.1:{ka_port}",
        )
        (tmp_path / "job.yaml").write_text(JOB)
        srv, port = _start(
            tmp_path, "server", ["--config", str(srv_cfg), "--job", str(tmp_path / "job.yaml")]
        )
        procs.append(srv)
        yield port
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


def _stub(
    kit: Path, filename: str, port: int, **override: object
) -> pb_grpc.AggregationServiceStub:
    doc = yaml.safe_load((kit / filename).read_text())
    peer = doc if filename == "admin.yaml" else doc["server"]
    peer = {**peer, "address": f"127.0.0.1:{port}", **override}
    return pb_grpc.AggregationServiceStub(create_channel(PeerSection(**peer), 4 << 20))


def _register(stub: pb_grpc.AggregationServiceStub, client_id: str) -> pb.RegisterClientResponse:
    return stub.RegisterClient(pb.RegisterClientRequest(client_id=client_id), timeout=30)


def test_site_kits_call_as_themselves_only(project: Path, daemons: int) -> None:
    kits = project / "kits"
    site_a = _stub(kits / "site-a", "client.yaml", daemons)
    assert _register(site_a, "site-a").job_id == "mtls-job"  # server -> keyauth also mTLS
    # Site A's certificate claiming to be site B is refused.
    with pytest.raises(grpc.RpcError) as exc:
        _register(site_a, "site-b")
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # An admin's certificate is an admin, not a client.
    admin = _stub(kits / "alice", "admin.yaml", daemons)
    with pytest.raises(grpc.RpcError) as exc:
        _register(admin, "alice")
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    status = admin.GetJobStatus(pb.GetJobStatusRequest(job_id="mtls-job"), timeout=30)
    assert status.job_id == "mtls-job" and status.rounds == 2
    # The admin CLI with the kit's admin.yaml (its certificate, no token).
    admin_doc = yaml.safe_load((kits / "alice" / "admin.yaml").read_text())
    peer_file = project / "alice-local.yaml"
    peer_file.write_text(yaml.safe_dump({**admin_doc, "address": f"127.0.0.1:{daemons}"}))
    result = CliRunner().invoke(cli, ["job", "status", "mtls-job", "--peer", str(peer_file)])
    assert result.exit_code == 0, result.output
    assert "mtls-job" in result.output
    # No client certificate: the TLS handshake itself fails.
    anonymous = _stub(
        kits / "site-a",
        "client.yaml",
        daemons,
        cert_file=None,
        key_file=None,
        token_file=str(project / "none"),
    )
    with pytest.raises(grpc.RpcError) as exc:
        _register(anonymous, "site-a")
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


def test_ca_key_in_no_kit_and_keys_private(project: Path) -> None:
    ca_key = (project / "ca" / "ca.key").read_bytes()
    assert (project / "ca" / "ca.key").stat().st_mode & 0o077 == 0
    files = [p for p in (project / "kits").rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert path.name != "ca.key"
        assert path.read_bytes() != ca_key and ca_key.strip() not in path.read_bytes()
        if path.suffix == ".key":
            assert path.stat().st_mode & 0o077 == 0


def test_add_site_later_with_the_same_ca(project: Path, tmp_path: Path) -> None:
    from cryptography import x509

    before = (project / "kits" / "site-a" / "site-a.crt").read_bytes()
    result = CliRunner().invoke(
        cli,
        [
            "provision",
            str(tmp_path / "project.yaml"),
            "--out",
            str(project),
            "--add-site",
            "site-c",
            "--host",
            "c.example.org",
        ],
    )
    assert result.exit_code == 0, result.output
    kit = project / "kits" / "site-c"
    cert = x509.load_pem_x509_certificate((kit / "site-c.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((project / "ca" / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.rfc4514_string() == "CN=site-c"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["c.example.org"]
    for service, name in (("server", "server.yaml"), ("keyauth", "keyauth.yaml")):
        ids = yaml.safe_load((project / "kits" / service / name).read_text())["identities"]
        assert {"id": "site-c", "role": "client"} in ids
    assert (project / "kits" / "site-a" / "site-a.crt").read_bytes() == before  # not reissued
    again = CliRunner().invoke(
        cli,
        [
            "provision",
            str(tmp_path / "project.yaml"),
            "--out",
            str(project),
            "--add-site",
            "site-c",
        ],
    )
    assert again.exit_code != 0 and "unique" in again.output
    redo = CliRunner().invoke(
        cli, ["provision", str(tmp_path / "project.yaml"), "--out", str(project)]
    )
    assert redo.exit_code != 0 and "already provisioned" in redo.output
