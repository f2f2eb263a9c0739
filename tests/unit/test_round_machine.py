"""The round state machine, table-driven on the core: no gRPC, no sleeping (fake clock)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.load import parse_yaml
from fedhe_common.config.models import JobConfig
from fedhe_server.jobrun import JobRun
from fedhe_server.keymodes import Plain
from fedhe_server.metrics import ServerMetrics
from fedhe_server.rounds import ABORT_POINTS, PUBLISH_POINTS, no_faults
from fedhe_server.staging import JobFiles
from fedhe_server.store import JobState, RoundState, StateDB

NUM_VALUES = 10
JOB = """
job: {{name: sm, rounds: {rounds}, seed: 0}}
encryption: {{mode: none}}
participants: {{min_clients: 2, expected_clients: {expected}, round_timeout_s: 100,
               wait_after_min_s: 10, heartbeat_interval_s: 1000}}
"""


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Crash(BaseException):
    """Stands in for the process dying at a fault point."""


def _run(
    tmp_path: Path,
    clock: Clock,
    rounds: int = 3,
    expected: int = 3,
    faults: Callable[[str], None] = no_faults,
) -> JobRun:
    db = StateDB(tmp_path / "state.sqlite")
    text = JOB.format(rounds=rounds, expected=expected)
    if db.job("sm") is None:
        db.insert_job("sm", text, JobState.RUNNING, None, b"", rounds, clock())
    config = parse_yaml(text, JobConfig)
    run = JobRun(
        db,
        JobFiles(tmp_path, "sm"),
        "sm",
        config,
        Plain(4096),
        threading.Condition(),
        ServerMetrics(db),
        clock=clock,
        faults=faults,
    )
    run.start()
    return run


def _commit(run: JobRun, client: str, number: int, n: int = 10) -> None:
    run.db.register_client("sm", client, run.clock())
    manifest = pb.UploadManifest(
        job_id="sm",
        round=number,
        client_id=client,
        layout_id="L",
        plaintext_chunks=1,
        num_values=NUM_VALUES,
        sample_count=n,
    )
    begun = run.begin_upload(manifest)
    upload_id = begun.upload_id
    if begun.committed:  # a retry after a crash: nothing to send again
        run.commit(upload_id, client)
        return
    payload = np.full(NUM_VALUES, float(len(client)), dtype="<f4").tobytes()
    chunk = pb.Chunk(
        upload_id=upload_id,
        stream=pb.STREAM_KIND_PLAINTEXT,
        index=0,
        num_values=NUM_VALUES,
        payload=payload,
        sha256=hashlib.sha256(payload).digest(),
    )
    run.put_chunk(chunk, client)
    run.commit(upload_id, client)


# (commits, seconds after the round opened, expected clients) -> state of round 1
CASES = [
    (0, 50, 3, RoundState.OPEN),  # nothing yet
    (1, 50, 3, RoundState.OPEN),  # below min_clients
    (2, 5, 3, RoundState.OPEN),  # min reached, waiting wait_after_min_s for the third
    (2, 11, 3, RoundState.PUBLISHED),  # wait_after_min_s passed
    (2, 0, 2, RoundState.PUBLISHED),  # every expected client committed: close at once
    (3, 0, 3, RoundState.PUBLISHED),
    (1, 100, 3, RoundState.ABORTED),  # deadline with fewer than min_clients
    (0, 100, 3, RoundState.ABORTED),
]


@pytest.mark.parametrize(("commits", "after_s", "expected", "state"), CASES)
def test_round_transitions(
    tmp_path: Path, commits: int, after_s: float, expected: int, state: RoundState
) -> None:
    clock = Clock()
    run = _run(tmp_path, clock, expected=expected)
    for i in range(commits):
        _commit(run, f"c{i}", 1)
    clock.t += after_s
    run.tick()
    row = run.db.round("sm", 1)
    assert row is not None and row.state == state
    nxt = run.db.round("sm", 2)
    if state == RoundState.OPEN:
        assert nxt is None
    else:  # closing a round and opening the next is one step
        assert nxt is not None and nxt.state == RoundState.OPEN and nxt.opened == clock.t
        assert row.closed == clock.t
    if state == RoundState.PUBLISHED:
        assert row.contributors == commits and row.weight_sum == 10 * commits


def test_three_aborts_fail_the_job_and_the_last_round_finishes_it(tmp_path: Path) -> None:
    clock = Clock()
    run = _run(tmp_path, clock, rounds=1)
    for _ in range(3):
        clock.t += 100
        run.tick()
    assert run.db.job("sm").state == JobState.FAILED  # type: ignore[union-attr]
    assert [r.state for r in run.db.rounds("sm")] == [RoundState.ABORTED] * 3

    other = tmp_path / "other"
    other.mkdir()
    run = _run(other, clock, rounds=1, expected=2)
    _commit(run, "a", 1)
    _commit(run, "b", 1)
    run.tick()
    assert run.db.job("sm").state == JobState.FINISHED  # type: ignore[union-attr]
    assert run.db.open_round("sm") is None


def test_restart_repairs_a_published_round_without_a_next_round(tmp_path: Path) -> None:
    """Defect 2: a crash between 'round published' and 'next round opened' wedged
    the job forever (no open round, job RUNNING)."""
    clock = Clock()
    run = _run(tmp_path, clock, expected=2)
    _commit(run, "a", 1)
    _commit(run, "b", 1)
    run.tick()
    # Make the state a crash between the old two transactions left behind.
    with run.db.transaction() as tx:
        tx.execute("DELETE FROM rounds WHERE round=2")
        tx.execute("UPDATE jobs SET published=0")
    (tmp_path / "jobs" / "sm" / "rounds" / "1" / "uploads" / "x").mkdir(parents=True)
    clock.t += 5
    run = _run(tmp_path, clock, expected=2)  # restart
    nxt = run.db.round("sm", 2)
    assert nxt is not None and nxt.state == RoundState.OPEN
    assert run.db.job("sm").published == 1  # type: ignore[union-attr]
    assert not (tmp_path / "jobs" / "sm" / "rounds" / "1" / "uploads").exists()


def test_restart_rebuilds_a_missing_aggregate_from_staged_uploads(tmp_path: Path) -> None:
    clock = Clock()
    run = _run(tmp_path, clock, expected=2)
    _commit(run, "a", 1)
    _commit(run, "bb", 1)
    # Old crash: round marked published, aggregate never written, uploads still staged.
    with run.db.transaction() as tx:
        tx.execute("UPDATE rounds SET state='PUBLISHED' WHERE round=1")
    run = _run(tmp_path, clock, expected=2)
    header = run.files.read_aggregate_header(1)
    assert header is not None and header["weight_sum"] == 20
    blob = run.files.aggregate_chunk_path(1, pb.STREAM_KIND_PLAINTEXT, 0).read_bytes()
    assert np.allclose(np.frombuffer(blob, dtype="<f4"), 10 * 1 + 10 * 2)
    assert run.db.open_round("sm") is not None


def _crash_at(point: str) -> Callable[[str], None]:
    def faults(name: str) -> None:
        if name == point:
            raise Crash(name)

    return faults


@pytest.mark.parametrize("point", [*PUBLISH_POINTS, "commit.after_transaction"])
def test_crash_at_each_publish_point_resumes_with_the_same_result(
    tmp_path: Path, point: str
) -> None:
    clock = Clock()
    run = _run(tmp_path, clock, expected=2, faults=_crash_at(point))
    with pytest.raises(Crash):
        _commit(run, "a", 1, n=10)
        _commit(run, "bbb", 1, n=30)
        run.tick()
    run = _run(tmp_path, clock, expected=2)  # restart on the same state
    if run.db.round("sm", 1).state == RoundState.OPEN:  # type: ignore[union-attr]
        for client, n in (("a", 10), ("bbb", 30)):  # clients retry (idempotent)
            _commit(run, client, 1, n=n)
        run.tick()
    states = [r.state for r in run.db.rounds("sm")]
    assert states == [RoundState.PUBLISHED, RoundState.OPEN]
    header = run.files.read_aggregate_header(1)
    assert header is not None and header["weight_sum"] == 40
    blob = run.files.aggregate_chunk_path(1, pb.STREAM_KIND_PLAINTEXT, 0).read_bytes()
    assert np.allclose(np.frombuffer(blob, dtype="<f4") / 40, (10 * 1 + 30 * 3) / 40)
    assert not run.files.staged_rounds()  # round 1's staging is gone


@pytest.mark.parametrize("point", ABORT_POINTS)
def test_crash_after_an_abort_resumes_with_the_next_round(tmp_path: Path, point: str) -> None:
    clock = Clock()
    run = _run(tmp_path, clock, faults=_crash_at(point))
    _commit(run, "a", 1)
    clock.t += 100
    with pytest.raises(Crash):
        run.tick()
    run = _run(tmp_path, clock)
    assert [r.state for r in run.db.rounds("sm")] == [RoundState.ABORTED, RoundState.OPEN]
    assert not run.files.staged_rounds()
