"""The server's SQLite state: liveness bookkeeping and upgrades of older state."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fedhe_server.store import StateDB


def test_state_from_before_heartbeats_gains_last_seen(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE clients (job_id TEXT NOT NULL, client_id TEXT NOT NULL, "
        "registered REAL NOT NULL, PRIMARY KEY (job_id, client_id))"
    )
    old.execute("INSERT INTO clients VALUES ('j', 'old', 100.0)")
    old.commit()
    old.close()

    db = StateDB(path)
    # Never heart-beaten: its registration time counts as last seen.
    assert db.live_clients("j", 99.0) == {"old"}
    assert db.live_clients("j", 101.0) == set()
    assert db.touch_client("j", "old", 200.0)
    assert db.live_clients("j", 150.0) == {"old"}


def test_heartbeats_only_for_registered_clients(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.sqlite")
    db.register_client("j", "a", 10.0)
    db.register_client("j", "a", 50.0)  # registering again refreshes, never duplicates
    db.register_client("j", "b", 10.0)
    assert db.registered_clients("j") == ["a", "b"]
    assert not db.touch_client("j", "stranger", 60.0)
    assert not db.touch_client("other-job", "a", 60.0)
    assert db.live_clients("j", 20.0) == {"a"}
