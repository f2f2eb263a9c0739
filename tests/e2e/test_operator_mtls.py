"""Issue 14's operator run over REAL provisioned kits: ``fedhe provision``, key authority,
server and 3 long-lived clients each started from its own kit (mutual TLS, no tokens), two
jobs one after the other, a third cancelled mid-round, impersonation and a foreign CA refused.

The command lines are the README's operator walkthrough ("Operating a federation").
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedhe_cli.cluster import stop_processes
from fedhe_client.connection import ServerConnection
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2_grpc as pb_grpc
from fedhe_common.config.models import PeerSection
from fedhe_common.errors import NotFoundError
from fedhe_common.rpc.transport import create_channel
from tests.e2e.helpers import free_port, job_yaml

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
BIN = Path(sys.executable).parent
SITES = ["site-a", "site-b", "site-c"]
PROJECT = """name: {name}
keyauth: {{id: keyauth, hosts: [localhost, 127.0.0.1], port: {ka_port}, listen_host: 127.0.0.1}}
server: {{id: server, hosts: [localhost, 127.0.0.1], port: {srv_port}, listen_host: 127.0.0.1}}
admins: [{{id: alice}}]
sites:
  - {{id: site-a, hosts: [localhost]}}
  - {{id: site-b, hosts: [localhost]}}
  - {{id: site-c, hosts: [localhost]}}
"""
PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]*PRIVATE KEY)-----.*?-----END \1-----", re.S)
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def fedhe(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the ``fedhe`` console script exactly as an operator would."""
    return subprocess.run(
        [str(BIN / "fedhe"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env=ENV, check=False,
    )  # fmt: skip


def provision(tmp: Path, name: str) -> Path:
    """``fedhe provision project.yaml --out fl`` in a folder of its own; the kits folder."""
    folder = tmp / name
    folder.mkdir()
    ports = {"ka_port": free_port(), "srv_port": free_port()}
    (folder / "project.yaml").write_text(PROJECT.format(name=name, **ports))
    done = fedhe(folder, "provision", "project.yaml", "--out", "fl")
    assert done.returncode == 0, done.stderr
    return folder / "fl" / "kits"


class Federation:
    """The processes started from the kits (each with its own log file)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(argv, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, env=ENV)
        self.procs[name] = proc
        return proc

    def serve(self, name: str, config: str) -> None:
        """Start ``fedhe-<name> serve --config CONFIG`` and wait until it listens."""
        port_file = self.root / f"{name}.port"
        proc = self.start(name, [str(BIN / f"fedhe-{name}"), "serve", "--config", config,
                                 "--port-file", str(port_file)])  # fmt: skip
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None, self.log(name)
            assert time.monotonic() < deadline, self.log(name)
            time.sleep(0.05)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def stop(self) -> None:
        stop_processes(self.procs.values())


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    fed = Federation(tmp_path / "project")
    yield fed
    fed.stop()


def private_key_blocks(data: bytes) -> list[bytes]:
    return [m.group(0) for m in PEM_BLOCK.finditer(data)]


def check_kits(kits: Path) -> None:
    """The CA key (PEM, DER or its raw scalar) is in no kit; each kit holds only its own key."""
    ca_pem = (kits.parent / "ca" / "ca.key").read_bytes()
    ca_key = serialization.load_pem_private_key(ca_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_der = ca_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip
    scalar = ca_key.private_numbers().private_value.to_bytes(32, "big")
    kit_dirs = sorted(p for p in kits.iterdir() if p.is_dir())
    assert [p.name for p in kit_dirs] == sorted(["keyauth", "server", "alice", *SITES])
    for kit in kit_dirs:
        own = (kit / f"{kit.name}.key").read_bytes()
        assert private_key_blocks(own) == [own.strip()]
        files = [p for p in kit.rglob("*") if p.is_file()]
        assert len(files) >= 4  # certificate, key, CA certificate, config
        for path in files:
            data = path.read_bytes()
            assert ca_pem.strip() not in data and ca_der not in data, path
            assert scalar not in data and scalar.hex().encode() not in data, path
            for block in private_key_blocks(data):
                assert block == own.strip(), f"{path}: a private key that is not {kit.name}'s"


def admin_peer(kits: Path) -> PeerSection:
    return PeerSection(**yaml.safe_load((kits / "alice" / "admin.yaml").read_text()))


def wait_status(
    fed: Federation,
    kits: Path,
    job: str,
    done: Callable[[pb.GetJobStatusResponse], bool],
    timeout_s: float = 90,
) -> pb.GetJobStatusResponse:
    deadline = time.monotonic() + timeout_s
    conn = ServerConnection(admin_peer(kits))
    try:
        while True:
            try:
                status = conn.job_status(job)
            except NotFoundError:  # a background `job submit` that has not submitted yet
                status = pb.GetJobStatusResponse()
            if status.job_id and done(status):
                return status
            for site in SITES:
                assert fed.alive(site), fed.log(site)
            assert time.monotonic() < deadline, f"{job}: {status}\n{fed.log('site-a')[-3000:]}"
            time.sleep(0.3)
    finally:
        conn.close()


def site_stub(kit: Path, **override: object) -> pb_grpc.AggregationServiceStub:
    peer = {**yaml.safe_load((kit / "client.yaml").read_text())["server"], **override}
    return pb_grpc.AggregationServiceStub(create_channel(PeerSection(**peer), 4 << 20))


def check_impersonation(kits: Path) -> None:
    """Site A's certificate claiming to be site B is refused on every call naming a client."""
    stub = site_stub(kits / "site-a")
    calls = [
        lambda: stub.RegisterClient(pb.RegisterClientRequest(client_id="site-b"), timeout=30),
        lambda: stub.ReportError(
            pb.ReportErrorRequest(job_id="job-a", client_id="site-b", round=1, phase="train",
                                  message="forged"), timeout=30),
        lambda: stub.ListJobs(pb.ListJobsRequest(client_id="site-b", wait_s=0), timeout=30),
    ]  # fmt: skip
    for call in calls:
        with pytest.raises(grpc.RpcError) as exc:
            call()
        assert exc.value.code() in (
            grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED
        ), exc.value  # fmt: skip
    # As itself the same certificate is fine.
    assert stub.ListJobs(pb.ListJobsRequest(client_id="site-a", wait_s=0), timeout=30) is not None


def check_foreign_ca(fed: Federation, kits: Path, rogue: Path) -> None:
    """Certificates of another CA: one clear error line, at once, no retry loop."""
    site_doc = yaml.safe_load((kits / "site-a" / "client.yaml").read_text())
    cases = {
        # The rogue kit as it is: trusts its own CA, so the server's certificate fails here.
        "rogue-kit": yaml.safe_load((rogue / "site-a" / "client.yaml").read_text()),
        # Our CA file, the rogue site's certificate: the server refuses the client.
        "rogue-cert": {**site_doc, "server": {**site_doc["server"],
                       "cert_file": str(rogue / "site-a" / "site-a.crt"),
                       "key_file": str(rogue / "site-a" / "site-a.key")}},
        # Our certificate, the rogue CA file: this side cannot verify the server.
        "rogue-ca": {**site_doc, "server": {**site_doc["server"],
                     "ca_file": str(rogue / "site-a" / "ca.crt")}},
    }  # fmt: skip
    procs = {}
    for name, doc in cases.items():  # started together: start-up (torch import) is slow
        doc["server"]["address"] = site_doc["server"]["address"]
        doc["keyauth"]["address"] = site_doc["keyauth"]["address"]
        config = fed.root / f"{name}.yaml"
        config.write_text(yaml.safe_dump(doc))
        procs[name] = fed.start(name, [str(BIN / "fedhe-client"), "run", "--config",
                                       str(config)])  # fmt: skip
    for name, proc in procs.items():
        try:  # a retry loop would never end
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name}: still running (retrying?) after 60 s:\n{fed.log(name)}")
        lines = [ln for ln in fed.log(name).splitlines() if ln.strip()]
        assert code != 0 and "waiting for jobs" in lines[0], (name, code, lines)
        # The error comes at once (a retry loop would go on for minutes), no retries.
        started = time.mktime(time.strptime(lines[0][:19], "%Y-%m-%d %H:%M:%S"))
        assert (fed.root / f"{name}.log").stat().st_mtime - started < 10, (name, lines)
        errors = [ln for ln in lines if "certificate" in ln.lower()]
        assert len(errors) == 1 and errors[0].startswith("Error: TLS certificate"), (name, lines)
        assert not any("retry" in ln or "Traceback" in ln for ln in lines), (name, lines)
    # The admin CLI with the rogue admin kit, then with our CA file: one line, non-zero exit.
    rogue_admin = yaml.safe_load((rogue / "alice" / "admin.yaml").read_text())
    rogue_admin["address"] = site_doc["server"]["address"]
    ours = yaml.safe_load((kits / "alice" / "admin.yaml").read_text())
    for doc in (rogue_admin, {**rogue_admin, "ca_file": ours["ca_file"]}):
        (fed.root / "rogue-admin.yaml").write_text(yaml.safe_dump(doc))
        t0 = time.monotonic()
        done = fedhe(fed.root, "job", "list", "--peer", "rogue-admin.yaml")
        assert done.returncode != 0 and time.monotonic() - t0 < 20, done
        lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
        assert len(lines) == 1 and "certificate" in lines[0].lower(), lines


def wait_logs(fed: Federation, needle: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(needle in fed.log(s) for s in SITES):
        assert time.monotonic() < deadline, {s: fed.log(s)[-2000:] for s in SITES}
        time.sleep(0.3)


def test_operator_run_over_provisioned_kits(tmp_path: Path, federation: Federation) -> None:
    t0 = time.monotonic()
    fed = federation
    kits = provision(tmp_path, "project")
    rogue = provision(tmp_path, "rogue")
    check_kits(kits)
    check_kits(rogue)
    # Start: every process from its own kit's config (paths relative to the project folder).
    fed.serve("keyauth", "fl/kits/keyauth/keyauth.yaml")
    fed.serve("server", "fl/kits/server/server.yaml")
    for site in SITES:
        fed.start(site, [str(BIN / "fedhe-client"), "run", "--config",
                         f"fl/kits/{site}/client.yaml"])  # fmt: skip
    admin = "fl/kits/alice/admin.yaml"
    finished = pb.JOB_STATE_FINISHED
    for job in ("job-a", "job-b", "job-c"):
        rounds = 50 if job == "job-c" else 2
        (fed.root / f"{job}.yaml").write_text(job_yaml(job, rounds, min_clients=3, hidden=16))
    # Job A: submitted and followed (one line per round) as in the README.
    follow_a = fed.start("follow-a", [str(BIN / "fedhe"), "job", "submit", "job-a.yaml",
                                      "--peer", admin, "--follow"])  # fmt: skip
    check_impersonation(kits)  # while job A runs
    check_foreign_ca(fed, kits, rogue)
    assert follow_a.wait(timeout=120) == 0, fed.log("follow-a")
    lines = fed.log("follow-a").splitlines()
    assert lines[0] == "job job-a created" and lines[-1] == "job job-a: FINISHED", lines
    assert [ln.split(":")[0] for ln in lines if ln.startswith("round ")] == [
        "round 1/2 PUBLISHED", "round 2/2 PUBLISHED"], lines  # fmt: skip
    # Round 1's metrics are in before round 2 closes; round 2's within the follow's grace.
    assert lines[1].startswith("round 1/2 PUBLISHED: 3 clients, accuracy "), lines
    assert lines[2].startswith("round 2/2 PUBLISHED: 3 clients, "), lines
    # Job B after A: the same agents take it without a restart.
    done = fedhe(fed.root, "job", "submit", "job-b.yaml", "--peer", admin)
    assert done.returncode == 0 and "job job-b created" in done.stdout, done
    for job in ("job-a", "job-b"):
        status = wait_status(fed, kits, job, lambda s: s.state == finished)
        assert [(r.round, r.contributors) for r in status.history] == [(1, 3), (2, 3)]
        assert sorted(c.client_id for c in status.clients) == SITES
        assert all(not c.error.phase for c in status.clients), status.clients  # none forged
    # Job C: cancelled mid-round with `fedhe job cancel`; its follower exits 1.
    follow_c = fed.start("follow-c", [str(BIN / "fedhe"), "job", "submit", "job-c.yaml",
                                      "--peer", admin, "--follow"])  # fmt: skip
    wait_status(fed, kits, "job-c", lambda s: s.current_round >= 2)
    done = fedhe(fed.root, "job", "cancel", "job-c", "--peer", admin, "--json")
    assert done.returncode == 0, done
    assert '"state": "JOB_STATE_CANCELLED"' in done.stdout, done.stdout
    assert follow_c.wait(timeout=60) == 1, fed.log("follow-c")
    assert fed.log("follow-c").splitlines()[-1] == "job job-c: CANCELLED", fed.log("follow-c")
    wait_logs(fed, "job job-c was cancelled")
    # Watch and export, as in the README.
    history = fedhe(fed.root, "job", "history", "job-b", "--csv", "--peer", admin)
    assert history.returncode == 0, history
    rows = history.stdout.strip().splitlines()
    assert len(rows) == 1 + 2 * 3 and "train_s" in rows[0], rows  # header + rounds x clients
    export = fedhe(fed.root, "model", "export", "fl/kits/site-a/state/models/job-b",
                   "--out", "model.pt")  # fmt: skip
    assert export.returncode == 0 and "job job-b round 2" in export.stdout, export
    assert (fed.root / "model.pt").stat().st_size > 0
    time.sleep(1)
    for site in SITES:  # still up, waiting for the next job
        assert fed.alive(site), fed.log(site)
        log = fed.log(site)
        assert '"job_id": "job-a"' in log and '"job_id": "job-b"' in log
        assert "Traceback" not in log
    print(f"operator mTLS e2e: {time.monotonic() - t0:.1f}s")
