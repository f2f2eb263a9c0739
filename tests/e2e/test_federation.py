"""The three services as separate processes on loopback (real gRPC, SEAL, SQLite, torch)."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from fedhe_cli.cluster import ClientSpec, LocalCluster
from tests.conftest import scrape_metrics
from tests.e2e.faulty_client import launcher
from tests.e2e.helpers import (
    exported_global,
    files_containing,
    free_port,
    job_yaml,
    plain_fedavg,
    secret_key_probe,
    server_db,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_two_rounds_equal_plaintext_fedavg_with_unequal_weights(tmp_path: Path) -> None:
    specs = [ClientSpec(f"c{i}", i, 3, n) for i, n in enumerate((100, 200, 300))]
    with LocalCluster(tmp_path, specs, export=True) as cluster:
        cluster.start_keyauth()
        cluster.start_server(job_yaml("e2e", rounds=2, min_clients=3))
        cluster.start_clients()
        for s in specs:
            assert cluster.wait(s.client_id, 180) == 0, cluster.log_tail(s.client_id)
        names = [s.client_id for s in specs]
        for number in (1, 2):
            expected = plain_fedavg(cluster, names, number)
            for name in names:
                got = exported_global(cluster, name, number)
                assert np.abs(got - expected).max() <= 1e-6
        rows = (
            server_db(cluster)
            .execute("SELECT round, weight_sum, contributors FROM rounds ORDER BY round")
            .fetchall()
        )
        assert rows == [(1, 600, 3), (2, 600, 3)]
        # The server never held the secret key: not in its state, not in its logs.
        probe = secret_key_probe(cluster, "e2e")
        assert files_containing(tmp_path / "server-state", probe) == []
        assert probe not in (cluster.logs / "server.log").read_bytes()


def test_client_killed_mid_upload_is_excluded(tmp_path: Path) -> None:
    # hidden=512 gives 38,922 values = 10 ciphertext chunks; c3 dies after 5 of them.
    specs = [ClientSpec(f"c{i}", i, 4) for i in range(4)]
    specs[3].command = launcher("exit_after_chunks", 5)
    with LocalCluster(tmp_path, specs, export=True) as cluster:
        cluster.start_keyauth()
        metrics_port = free_port()
        cluster.start_server(
            job_yaml("drop", rounds=1, min_clients=3, hidden=512, wait_after_min_s=2.0),
            metrics_port=metrics_port,
        )
        cluster.start_clients()
        assert cluster.wait("c3", 120) == 137
        for name in ("c0", "c1", "c2"):
            assert cluster.wait(name, 120) == 0, cluster.log_tail(name)
        expected = plain_fedavg(cluster, ["c0", "c1", "c2"], 1)
        assert np.abs(exported_global(cluster, "c0", 1) - expected).max() <= 1e-6
        db = server_db(cluster)
        assert db.execute("SELECT contributors FROM rounds WHERE round=1").fetchone() == (3,)
        states = dict(db.execute("SELECT client_id, state FROM uploads").fetchall())
        assert states["c3"] == "RECEIVING"
        metrics = scrape_metrics(metrics_port)
        assert metrics[("fedhe_clients_dropped_total", (("reason", "timeout"),))] == 1
        assert metrics[("fedhe_clients_accepted_total", ())] == 3
        assert not [key for key in metrics if key[0] == "fedhe_chunks_rejected_total"]


def test_client_that_stops_heartbeating_is_not_waited_for(tmp_path: Path) -> None:
    # c3 dies after its first chunk. Its heartbeats stop, so once the three live
    # clients have committed the round closes, instead of waiting out
    # wait_after_min_s (60 s) for a client that will never commit.
    specs = [ClientSpec(f"c{i}", i, 4) for i in range(4)]
    specs[3].command = launcher("exit_after_chunks", 1)
    with LocalCluster(tmp_path, specs) as cluster:
        cluster.start_keyauth()
        cluster.start_server(
            job_yaml(
                "beat", rounds=1, min_clients=3, wait_after_min_s=60.0, heartbeat_interval_s=1.0
            )
        )
        cluster.start_clients()
        assert cluster.wait("c3", 120) == 137
        for name in ("c0", "c1", "c2"):
            assert cluster.wait(name, 120) == 0, cluster.log_tail(name)
        db = server_db(cluster)
        closed, min_reached, contributors = db.execute(
            "SELECT closed, min_reached, contributors FROM rounds WHERE round=1"
        ).fetchone()
        assert contributors == 3
        assert closed - min_reached < 20, cluster.log_tail("server")


def _committed(cluster: LocalCluster) -> int:
    path = cluster.workdir / "server-state" / "state.sqlite"
    if not path.exists():
        return 0
    try:
        row = server_db(cluster).execute(
            "SELECT COUNT(*) FROM uploads WHERE state='COMMITTED'"
        ).fetchone()
    except sqlite3.OperationalError:  # tables not created yet
        return 0
    return int(row[0])


def test_server_sigkill_after_two_commits_then_restart(tmp_path: Path) -> None:
    specs = [ClientSpec(f"c{i}", i, 3) for i in range(3)]
    with LocalCluster(tmp_path, specs, export=True) as cluster:
        cluster.start_keyauth()
        port = cluster.start_server(job_yaml("restart", rounds=1, min_clients=3))
        cluster.start_clients()
        deadline = time.monotonic() + 120  # SIGKILL the server once two commits are durable
        while _committed(cluster) < 2:
            assert time.monotonic() < deadline, cluster.log_tail("server")
            time.sleep(0.02)
        cluster.kill("server")
        assert cluster.wait("server", 30) == -signal.SIGKILL
        db = server_db(cluster)
        committed_before = db.execute(
            "SELECT upload_id, client_id FROM uploads WHERE state='COMMITTED'"
        ).fetchall()
        assert len(committed_before) >= 2  # a third may land before the kill
        time.sleep(0.5)
        cluster.start_server(port=port)  # same state dir, same port; clients retry
        for s in specs:
            assert cluster.wait(s.client_id, 180) == 0, cluster.log_tail(s.client_id)
        names = [s.client_id for s in specs]
        expected = plain_fedavg(cluster, names, 1)
        assert np.abs(exported_global(cluster, "c0", 1) - expected).max() <= 1e-6
        db = server_db(cluster)
        committed = db.execute(
            "SELECT upload_id, client_id FROM uploads WHERE state='COMMITTED'"
        ).fetchall()
        assert len(committed) == 3 and set(committed_before) <= set(committed)
        assert db.execute("SELECT weight_sum, contributors FROM rounds").fetchone() == (1438, 3)
        # The committed clients did not upload again: one upload line each.
        for _upload_id, client in committed_before:
            log = (cluster.logs / f"{client}.log").read_text()
            assert log.count("round 1: trained") == 1, client
            assert "(2 chunks sent)" in log, client
