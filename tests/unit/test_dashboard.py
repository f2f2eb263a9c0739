"""The dashboard: its JSON view on a real state database, and real HTTP on loopback.

HTTP checks: 401 without or with bad credentials, 403 for a non-admin identity, 405 for
anything but GET/HEAD, security headers on every answer, no token in any page.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.models import ServerConfig
from fedhe_common.errors import InvalidArgumentError
from fedhe_common.pki import issue, new_ca, write_ca
from fedhe_common.rpc.auth import TokenAuthority, new_token, token_sha256, write_secret_file
from fedhe_server.dashboard.http import Dashboard
from fedhe_server.dashboard.view import STEPS, dashboard_state
from fedhe_server.hostload import host_load
from fedhe_server.service import AggregationServer
from fedhe_server.store import JobState, StateDB
from fedhe_server.store.devices import HostLoad

JOB = """
job: {name: %s, rounds: 4, seed: 0}
encryption: {mode: none}
participants: {min_clients: 2, heartbeat_interval_s: 10}
"""
T0 = 1_000_000.0


def _fill(db: StateDB) -> None:
    """Two jobs; c1 and c2 in the running one, with metrics and step times for round 2."""
    db.insert_job("old", JOB % "old", JobState.FINISHED, None, b"", 4, T0 - 500)
    db.insert_job("live", JOB % "live", JobState.RUNNING, None, b"", 4, T0 - 100)
    with db.transaction() as tx:
        for n in (1, 2, 3):
            db.insert_round(tx, "live", n, T0 - 90 + 10 * n, T0 + 100)
    db.register_client("old", "c1", T0 - 400)
    db.register_client("live", "c1", T0 - 5)  # seen 5 s ago: online (2 x 10 s)
    db.register_client("live", "c2", T0 - 25)  # 25 s ago: offline
    gpu = ("Tesla T4", 1 << 30, 16 << 30, 55.0)
    db.put_host_load("c1", HostLoad(37.5, 2 << 30, 8 << 30, *gpu), T0 - 5)
    for n, acc in ((1, 0.5), (2, 0.7)):
        for cid in ("c1", "c2"):
            steps = {s: 0.1 * (i + 1) for i, s in enumerate(STEPS)} if n == 2 else {}
            db.report_metrics("live", n, cid, {"accuracy": acc, "loss": 1 - acc, **steps}, 32)
    with db.transaction() as tx:  # round 3: only the server's aggregate_s so far
        db.put_metric(tx, "live", 3, "c1", "aggregate_s", 0.5)
    db.report_client_error("live", "c2", 2, "train", "CUDA out of memory <script>", T0 - 30)


def test_view_devices_jobs_rounds_and_overheads(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.sqlite")
    _fill(db)
    state = dashboard_state(db, T0, lambda job: 10.0)
    devices = {d["client_id"]: d for d in state["devices"]}
    assert devices["c1"]["online"] is True and devices["c2"]["online"] is False
    assert devices["c1"]["last_job"] == "live" and devices["c1"]["jobs"] == 2
    host = devices["c1"]["host"]
    assert host["cpu_percent"] == 37.5 and host["ram_total_bytes"] == 8 << 30
    assert host["gpu"] == {"name": "Tesla T4", "memory_used_bytes": 1 << 30,
                           "memory_total_bytes": 16 << 30, "utilization_percent": 55.0}  # fmt: skip
    assert devices["c2"]["host"] is None
    jobs = {j["job_id"]: j for j in state["jobs"]}
    assert jobs["live"]["open_round"] == 3 and jobs["live"]["clients"] == 2
    job = state["job"]
    assert job["job_id"] == "live"  # the running job is shown by default
    assert [r["round"] for r in job["rounds"]] == [1, 2, 3]
    assert job["rounds"][1]["metrics"]["accuracy"] == pytest.approx(0.7)
    over = job["overhead"]
    assert over["round"] == 2 and [c["client_id"] for c in over["clients"]] == ["c1", "c2"]
    assert over["clients"][0]["steps"]["decrypt_s"] == pytest.approx(0.6)
    assert job["errors"][0]["client_id"] == "c2" and job["errors"][0]["phase"] == "train"
    # the server's clock decides liveness: 20 s later c1 is offline too
    later = dashboard_state(db, T0 + 20, lambda job: 10.0)
    assert not any(d["online"] for d in later["devices"])
    assert dashboard_state(db, T0, lambda job: 10.0, job_id="old")["job"]["job_id"] == "old"
    json.dumps(state)  # plain JSON


def test_heartbeat_host_load_is_bounded() -> None:
    stats = pb.HostStats(cpu_percent=12, ram_used_bytes=1, ram_total_bytes=2)
    stats.gpu_utilization_percent = -1
    ok = pb.SendHeartbeatRequest(host=stats)
    load = host_load(ok)
    assert load is not None and load.cpu_percent == 12 and load.gpu_util == -1
    assert host_load(pb.SendHeartbeatRequest()) is None
    bad = [
        pb.HostStats(cpu_percent=101),
        pb.HostStats(cpu_percent=float("nan")),
        pb.HostStats(ram_used_bytes=3, ram_total_bytes=2),
        pb.HostStats(ram_total_bytes=1 << 60),
        pb.HostStats(gpu_name="x" * 200),
        pb.HostStats(gpu_name="bad\nname"),
        pb.HostStats(gpu_utilization_percent=-5),
    ]
    for stats in bad:
        with pytest.raises(InvalidArgumentError):
            host_load(pb.SendHeartbeatRequest(host=stats))


TOKENS = {"admin": new_token(), "c1": new_token()}


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[Dashboard]:
    write_secret_file(tmp_path / "server.token", new_token())
    config = ServerConfig.model_validate({
        "listen": "127.0.0.1:0", "insecure": True, "state_dir": str(tmp_path / "state"),
        "keyauth": {"address": "127.0.0.1:1", "insecure": True,
                    "token_file": str(tmp_path / "server.token")},
        "identities": [
            {"id": "admin", "role": "admin", "token_sha256": token_sha256(TOKENS["admin"])},
            {"id": "c1", "role": "client", "token_sha256": token_sha256(TOKENS["c1"])},
        ],
        "dashboard": {"listen": "127.0.0.1:0"},
    })  # fmt: skip
    server = AggregationServer(config, clock=lambda: T0)
    _fill(server.db)
    board = Dashboard(server, config, TokenAuthority(config.identities)).start()
    try:
        yield board
    finally:
        board.stop()
        server.stop()


def _get(
    board: Dashboard,
    path: str,
    method: str = "GET",
    context: ssl.SSLContext | None = None,
    **headers: str,
) -> tuple[int, Any, bytes]:
    request = urllib.request.Request(board.url.rstrip("/") + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as reply:
            return reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def _basic(user: str, token: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()


def test_http_auth_and_read_only(dashboard: Dashboard) -> None:
    admin = {"Authorization": f"Bearer {TOKENS['admin']}"}
    status, headers, _ = _get(dashboard, "/")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert _get(dashboard, "/api/state", Authorization="Bearer wrong")[0] == 401
    assert _get(dashboard, "/api/state", Authorization="Basic !!!")[0] == 401
    assert _get(dashboard, "/api/state", Authorization=_basic("c1", TOKENS["admin"]))[0] == 401
    assert _get(dashboard, "/api/state", Authorization=f"Bearer {TOKENS['c1']}")[0] == 403
    assert _get(dashboard, "/", Authorization=_basic("c1", TOKENS["c1"]))[0] == 403
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = _get(dashboard, "/api/state", method=method, **admin)
        assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert _get(dashboard, "/api/state", method="POST")[0] == 401
    assert _get(dashboard, "/../state.sqlite", **admin)[0] == 404
    assert _get(dashboard, "/api/state?job=../x", **admin)[0] == 400

    status, headers, body = _get(dashboard, "/", Authorization=_basic("admin", TOKENS["admin"]))
    assert status == 200 and b'<script src="app.js"' in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert headers["Cache-Control"] == "no-store" and headers["X-Content-Type-Options"] == "nosniff"
    for page in ("/app.js", "/style.css"):
        status, headers, body = _get(dashboard, page, **admin)
        assert status == 200 and headers["Cache-Control"] == "no-store"
        assert b"http://" not in body.replace(b"http://www.w3.org/2000/svg", b"")  # no CDN
    status, headers, body = _get(dashboard, "/api/state", **admin)
    assert status == 200 and headers["Content-Type"] == "application/json"
    state = json.loads(body)
    assert {d["client_id"] for d in state["devices"]} == {"c1", "c2"}
    assert state["job"]["overhead"]["round"] == 2
    for token in TOKENS.values():
        assert token.encode() not in body
    assert b"config_yaml" not in body and b"token" not in body


def test_dashboard_outside_loopback_needs_tls(tmp_path: Path) -> None:
    base = {"listen": "127.0.0.1:0", "insecure": True, "state_dir": str(tmp_path),
            "keyauth": {"address": "127.0.0.1:1", "insecure": True, "token_file": "t"},
            "identities": []}  # fmt: skip
    ServerConfig.model_validate({**base, "dashboard": {"listen": "127.0.0.1:8080"}})
    with pytest.raises(ValueError, match=r"dashboard\.listen outside loopback needs TLS"):
        ServerConfig.model_validate({**base, "dashboard": {"listen": "0.0.0.0:8080"}})


def test_https_with_the_admin_client_certificate(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    ca = new_ca()
    ca_file, _ = write_ca(ca, pki)
    for name in ("server", "admin", "c1"):
        issue(ca, name, ["127.0.0.1"], pki / f"{name}.crt", pki / f"{name}.key")
    write_secret_file(tmp_path / "server.token", new_token())
    config = ServerConfig.model_validate({
        "listen": "127.0.0.1:0", "state_dir": str(tmp_path / "state"),
        "tls": {"cert_file": str(pki / "server.crt"), "key_file": str(pki / "server.key"),
                "ca_file": str(ca_file)},
        "keyauth": {"address": "127.0.0.1:1", "insecure": True,
                    "token_file": str(tmp_path / "server.token")},
        "identities": [{"id": "admin", "role": "admin"}, {"id": "c1", "role": "client"}],
        "dashboard": {"listen": "127.0.0.1:0"},
    })  # fmt: skip
    server = AggregationServer(config, clock=lambda: T0)
    _fill(server.db)
    board = Dashboard(server, config, TokenAuthority(config.identities)).start()
    try:
        assert board.url.startswith("https://127.0.0.1:")

        def context(cert: str | None) -> ssl.SSLContext:
            ctx = ssl.create_default_context(cafile=str(ca_file))
            if cert is not None:
                ctx.load_cert_chain(pki / f"{cert}.crt", pki / f"{cert}.key")
            return ctx

        status, headers, body = _get(board, "/api/state", context=context("admin"))
        assert status == 200 and len(json.loads(body)["devices"]) == 2
        assert headers["Strict-Transport-Security"].startswith("max-age=")
        assert _get(board, "/api/state", context=context(None))[0] == 401
        assert _get(board, "/api/state", context=context("c1"))[0] == 403
        with pytest.raises(urllib.error.URLError):  # the server's certificate is checked
            _get(board, "/api/state", context=ssl.create_default_context())
    finally:
        board.stop()
        server.stop()


class _Cuda:
    """torch.cuda as a GPU host without NVML shows it (no GPU on this machine)."""

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def current_device(self) -> int:
        return 0

    def mem_get_info(self, device: int) -> tuple[int, int]:
        return 30 << 30, 80 << 30

    def get_device_name(self, device: int) -> str:
        return "NVIDIA H100"

    def utilization(self, device: int) -> int:
        raise ModuleNotFoundError("pynvml")


def test_client_host_stats_cpu_ram_and_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    from fedhe_client.heartbeat import host_stats

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    stats = host_stats()
    assert stats is not None and 0 < stats.ram_used_bytes <= stats.ram_total_bytes
    assert 0 <= stats.cpu_percent <= 100 and stats.gpu_name == ""
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=_Cuda()))
    stats = host_stats()
    assert stats is not None and stats.gpu_name == "NVIDIA H100"
    assert stats.gpu_memory_used_bytes == 50 << 30 and stats.gpu_memory_total_bytes == 80 << 30
    assert stats.gpu_utilization_percent == -1  # no NVML: unknown, not 0
    load = host_load(pb.SendHeartbeatRequest(host=stats))  # what the server keeps
    assert load is not None and load.gpu_name == "NVIDIA H100" and load.gpu_util == -1
