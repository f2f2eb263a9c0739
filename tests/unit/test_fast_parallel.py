"""``single-key-fast`` (the default preset) with chunk-range workers (issue 15, item 4b).

The server's round core (SQLite, staged files, record files) runs the same uploads with
``aggregation.workers`` 1 and 2 (local backend: spawned processes). The published
aggregate must be byte-identical, with clients whose chunks carry different range
exponents (the common exponent drops in the second worker's range), and an upload that
fails in one worker's range must count in no chunk at all.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.load import parse_yaml
from fedhe_common.config.models import JobConfig
from fedhe_common.crypto import compactwire as cw
from fedhe_common.crypto.compactfast import FastCipher
from fedhe_common.crypto.envelope import HEADER_BYTES
from fedhe_common.errors import ManifestMismatchError
from fedhe_common.mlbridge.chunking import ChunkPlan
from fedhe_common.mlbridge.compact_accumulate import CompactAccumulator
from fedhe_server.jobrun import JobRun
from fedhe_server.keymodes import Fast, aggregation_mode
from fedhe_server.metrics import ServerMetrics
from fedhe_server.staging import JobFiles
from fedhe_server.store import JobState, StateDB, UploadState
from tests.conftest import holder_for
from tests.unit.test_round_machine import Clock

NAME = "single-key-fast"
N = 4096
VALUES = 4 * N + 5  # 5 chunks: worker ranges [0, 3) and [3, 5)
CT = pb.STREAM_KIND_CIPHERTEXT
WEIGHTS = {"a": 3, "bb": 5, "ccc": 7}


def _job(workers: int, preset: str = NAME, backend: str = "local") -> str:
    return f"""
job: {{name: fastpar, rounds: 1, seed: 0}}
encryption: {{mode: ckks, preset: {preset}}}
participants: {{min_clients: 2, expected_clients: 3, round_timeout_s: 100,
               wait_after_min_s: 10, heartbeat_interval_s: 1000}}
aggregation: {{workers: {workers}, backend: {backend}}}
"""


def _run(root: Path, workers: int, preset: str = NAME, backend: str = "local") -> JobRun:
    holder = holder_for(preset)
    clock = Clock()
    root.mkdir(parents=True, exist_ok=True)
    db = StateDB(root / "state.sqlite")
    params = holder.params.to_json()
    text = _job(workers, preset, backend)
    db.insert_job("fp", text, JobState.RUNNING, params, holder.fingerprint, 1, clock())
    config = parse_yaml(text, JobConfig)
    mode = aggregation_mode(config, params, holder.fingerprint)
    assert isinstance(mode, Fast) == (preset == NAME)
    run = JobRun(
        db, JobFiles(root, "fp"), "fp", config, mode, threading.Condition(),
        ServerMetrics(db), clock=clock,
    )  # fmt: skip
    run.start()
    return run


def _updates() -> dict[str, list[bytes]]:
    """Three clients' encrypted updates with differing range exponents per chunk: "bb" is
    ~2^14 finer than "a" and arrives second (the common exponent drops, in both workers'
    ranges), "ccc" is coarser again; all-zero chunks join any sum."""
    rng = np.random.default_rng(15)
    xs = {
        "a": rng.uniform(-10, 10, VALUES),
        "bb": rng.uniform(-1e-3, 1e-3, VALUES),
        "ccc": rng.uniform(-16, 16, VALUES),
    }
    xs["bb"][N : 2 * N] = 0.0
    xs["ccc"][3 * N : 4 * N] = 0.0
    xs["a"][4 * N :] *= 1e-6
    return {
        c: list(FastCipher(holder_for(NAME), f"fp/{c}").encrypt_vector(x)) for c, x in xs.items()
    }


def _stage(run: JobRun, client: str, blobs: list[bytes]) -> str:
    """Begin an upload and send its chunks; return its id."""
    run.db.register_client("fp", client, run.clock())
    manifest = pb.UploadManifest(
        job_id="fp", round=1, client_id=client, layout_id="L", ciphertext_chunks=len(blobs),
        num_values=VALUES, sample_count=WEIGHTS[client], context_fingerprint=run.fingerprint,
    )  # fmt: skip
    upload_id = run.begin_upload(manifest).upload_id
    for k, blob in enumerate(blobs):
        chunk = pb.Chunk(
            upload_id=upload_id, stream=CT, index=k, num_values=min(N, VALUES - k * N),
            payload=blob, sha256=hashlib.sha256(blob).digest(),
        )  # fmt: skip
        run.put_chunk(chunk, client)
    return upload_id


def _commit(run: JobRun, client: str, blobs: list[bytes]) -> None:
    run.commit(_stage(run, client, blobs), client)


def _published(run: JobRun) -> tuple[list[bytes], dict]:
    run.clock.t += 20  # type: ignore[attr-defined]  # past wait_after_min_s
    run.tick()
    header = run.files.read_aggregate_header(1)
    assert header is not None, "round 1 was not published"
    count = int(header["ciphertext_chunks"])  # type: ignore[call-overload]
    return [run.files.aggregate_chunk_path(1, CT, k).read_bytes() for k in range(count)], header


def _serial(uploads: list[tuple[list[bytes], int]]) -> list[bytes]:
    holder = holder_for(NAME)
    acc = CompactAccumulator(holder.preset, holder.fingerprint, ChunkPlan(VALUES, N))
    for blobs, w in uploads:
        acc.add_upload(blobs, w)
    return [acc.chunk_blob(k) for k in range(acc.plan.count)]


def _exponent(blob: bytes) -> int:
    return int(cw.SUM_HEAD.unpack_from(blob, HEADER_BYTES)[0])


def test_two_workers_publish_the_serial_bytes_with_differing_exponents(tmp_path: Path) -> None:
    ups = _updates()
    runs = {w: _run(tmp_path / f"w{w}", w) for w in (1, 2)}
    try:
        assert runs[1].adder() is None and runs[2].adder() is not None  # both paths ran
        for client in ("a", "bb", "ccc"):
            for run in runs.values():
                _commit(run, client, ups[client])
        (one, h1), (two, h2) = _published(runs[1]), _published(runs[2])
        assert two == one == _serial([(ups[c], WEIGHTS[c]) for c in ("a", "bb", "ccc")])
        assert h2["contributors"] == 3 and h2["weight_sum"] == 15 and h1 == h2
        exps = [_exponent(b) for b in two]
        assert len(set(exps)) >= 3  # the chunks really sit at different common scales
        cipher = FastCipher(holder_for(NAME), "fp/reader")
        parts = [cipher.decrypt_chunk(b, 15) for b in two]  # each chunk on its own
        assert np.all(np.isfinite(np.concatenate(parts)))
    finally:
        for run in runs.values():
            run.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_an_upload_failing_in_one_range_counts_in_no_chunk(tmp_path: Path, workers: int) -> None:
    ups = _updates()
    retry = list(FastCipher(holder_for(NAME), "fp/bb").encrypt_vector(np.ones(VALUES)))
    mixed = ups["bb"][:4] + retry[4:]  # chunk 4 (second range) carries another seed id
    run = _run(tmp_path, workers)
    try:
        _commit(run, "a", ups["a"])
        upload_id = _stage(run, "bb", mixed)
        with pytest.raises(ManifestMismatchError, match="another seed id"):
            run.commit(upload_id, "bb")
        row = run.db.upload(upload_id)
        assert row is not None and row.state == UploadState.REJECTED
        _commit(run, "ccc", ups["ccc"])
        got, header = _published(run)
        assert got == _serial([(ups["a"], 3), (ups["ccc"], 7)])  # bb's first range is gone
        assert header["contributors"] == 2 and header["weight_sum"] == 10
        assert sorted(header["clients"]) == ["a", "ccc"]  # type: ignore[call-overload]
    finally:
        run.close()


def test_compact_sums_stay_in_the_server_process_and_say_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fedhe_server.jobrun"):
        run = _run(tmp_path, 2, "single-key-compact")
    try:
        assert run.adder() is None
        assert "aggregation.workers 2 ignored: single-key-compact" in caplog.text
    finally:
        run.close()


@pytest.mark.slow  # a local Ray starts in ~10 s
@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="Ray is not installed (optional extra: pip install -e '.[ray]', or make test-ray)",
)
def test_ray_tasks_publish_the_serial_bytes(tmp_path: Path) -> None:
    ups = _updates()
    run = _run(tmp_path, 2, backend="ray")
    try:
        for client in ("a", "bb", "ccc"):
            _commit(run, client, ups[client])
        got, header = _published(run)
        assert got == _serial([(ups[c], WEIGHTS[c]) for c in ("a", "bb", "ccc")])
        assert header["contributors"] == 3
    finally:
        run.close()
