"""The server's state store: liveness, upgrades of older state, and its contract."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fedhe_common.errors import InvalidArgumentError
from fedhe_server.store import JobState, RoundState, StateDB, UploadState


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


# ----------------------------------------------------------- store contract tests
def _db_with_job(tmp_path: Path) -> StateDB:
    db = StateDB(tmp_path / "state.sqlite")
    db.insert_job("j", "yaml", JobState.RUNNING, None, b"", 3, 1.0)
    return db


def test_states_are_stored_as_their_text(tmp_path: Path) -> None:
    db = _db_with_job(tmp_path)
    with db.transaction() as tx:
        db.insert_round(tx, "j", 1, 10.0, 20.0)
    row = db.round("j", 1)
    assert row is not None and row.state == RoundState.OPEN and row.state == "OPEN"
    assert db.query("SELECT state FROM jobs")[0][0] == "RUNNING"
    assert db.jobs_in_state(JobState.RUNNING, JobState.KEYGEN) == ["j"]
    assert db.jobs_in_state(JobState.FINISHED) == []


def test_a_failed_transition_changes_nothing(tmp_path: Path) -> None:
    db = _db_with_job(tmp_path)
    with db.transaction() as tx:
        db.insert_round(tx, "j", 1, 10.0, 20.0)
    with pytest.raises(RuntimeError), db.transaction() as tx:
        db.close_round(tx, "j", 1, RoundState.PUBLISHED, 15.0, 7, 2, 100)
        db.set_job_progress(tx, "j", 1, JobState.RUNNING)
        raise RuntimeError("crash before the next round is opened")
    row = db.round("j", 1)
    assert row is not None and row.state == RoundState.OPEN and row.weight_sum is None
    assert db.job("j").published == 0  # type: ignore[union-attr]


def test_close_round_and_counts(tmp_path: Path) -> None:
    db = _db_with_job(tmp_path)
    with db.transaction() as tx:
        for r in (0, 1, 2):
            db.insert_round(tx, "j", r, 1.0, 2.0)
        db.close_round(tx, "j", 0, RoundState.PUBLISHED, 3.0, 1, 1)
        db.close_round(tx, "j", 1, RoundState.PUBLISHED, 3.0, 5, 2, 99)
        db.close_round(tx, "j", 2, RoundState.ABORTED, 3.0, None, 1)
        assert db.count_published(tx, "j") == 1  # round 0 (the mask round) does not count
    assert db.round_totals("j") == {"PUBLISHED": 2, "ABORTED": 1}
    assert db.last_published("j") == 1
    assert db.round_in_state("j", RoundState.ABORTED).round == 2  # type: ignore[union-attr]


def test_rounds_page_is_newest_first_window_in_order(tmp_path: Path) -> None:
    db = _db_with_job(tmp_path)
    with db.transaction() as tx:
        for r in range(1, 11):
            db.insert_round(tx, "j", r, 1.0, 2.0)
    page, more = db.rounds_page("j", 3)
    assert [r.round for r in page] == [8, 9, 10] and more
    page, more = db.rounds_page("j", 3, before=3)
    assert [r.round for r in page] == [1, 2] and not more


def test_uploads_supersede_and_weights_count_committed_only(tmp_path: Path) -> None:
    db = _db_with_job(tmp_path)
    db.add_upload("u1", "j", 1, "a", b"m1", 10, 1.0)
    db.add_upload("u2", "j", 1, "a", b"m2", 20, 2.0)  # a new attempt supersedes u1
    assert db.upload("u1").state == UploadState.SUPERSEDED  # type: ignore[union-attr]
    assert db.committed_weight("j", 1) == 0
    db.add_chunk("u2", 2, 0, b"h" * 32, 40)
    db.add_chunk("u2", 2, 0, b"h" * 32, 40)  # idempotent
    with db.transaction() as tx:
        db.commit_upload(tx, "u2", b"r")
    assert db.committed_weight("j", 1) == 20
    assert db.committed_upload_of("j", 1, "a") == "u2"
    assert db.committed_bytes("j", 1) == 40
    assert db.chunk_hashes("u2") == {(2, 0): b"h" * 32}


def test_metric_names_are_bounded_per_client_and_round(tmp_path: Path) -> None:
    db = _db_with_job(tmp_path)
    db.report_metrics("j", 1, "a", {"x": 1.0, "y": 2.0}, max_names=3)
    db.report_metrics("j", 1, "a", {"x": 3.0}, max_names=3)  # replacing a name is free
    with pytest.raises(InvalidArgumentError):
        db.report_metrics("j", 1, "a", {"z": 1.0, "w": 1.0}, max_names=3)
    db.report_metrics("j", 1, "b", {"x": 5.0}, max_names=3)
    assert db.round_metrics("j", 1) == {"x": 4.0, "y": 2.0}
    assert db.round_metrics("j", 1, limit=1) == {"x": 4.0}


def test_active_set_is_fixed_once_at_threshold_offers(tmp_path: Path) -> None:
    db = _db_with_job(tmp_path)
    assert db.volunteer("j", 1, 3, "c3", 1.0, threshold=2) == []
    assert db.volunteer("j", 1, 1, "c1", 2.0, threshold=2) == [3, 1]
    assert db.volunteer("j", 1, 2, "c2", 3.0, threshold=2) == []  # already fixed
    assert db.active_parties("j", 1) == [1, 3]
    assert db.has_volunteered("j", 1, 2) and not db.has_volunteered("j", 1, 4)
    db.add_share("j", 1, 1, 0, b"s")
    assert db.share_count("j", 1) == 1 and db.share_count("j", 1, 3) == 0
