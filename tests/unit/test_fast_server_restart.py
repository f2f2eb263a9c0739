"""``single-key-fast`` in the server's round core with 2 chunk-range workers: a restart
with a torn sum file rebuilds the sums from the committed uploads and the published
aggregate is exact."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.load import parse_yaml
from fedhe_common.config.models import JobConfig
from fedhe_common.crypto.compactfast import FastCipher
from fedhe_server.jobrun import JobRun
from fedhe_server.keymodes import Fast, aggregation_mode
from fedhe_server.metrics import ServerMetrics
from fedhe_server.staging import JobFiles
from fedhe_server.store import JobState, StateDB
from tests.conftest import holder_for
from tests.unit.test_round_machine import Clock

N = 4096
VALUES = 2 * N + 5
JOB = """
job: {name: fast, rounds: 2, seed: 0}
encryption: {mode: ckks, preset: single-key-fast}
participants: {min_clients: 2, expected_clients: 3, round_timeout_s: 100,
               wait_after_min_s: 10, heartbeat_interval_s: 1000}
aggregation: {workers: 2}
"""


def _run(tmp_path: Path, clock: Clock) -> JobRun:
    holder = holder_for("single-key-fast")
    db = StateDB(tmp_path / "state.sqlite")
    params = holder.params.to_json()
    if db.job("fast") is None:
        db.insert_job("fast", JOB, JobState.RUNNING, params, holder.fingerprint, 2, clock())
    config = parse_yaml(JOB, JobConfig)
    mode = aggregation_mode(config, params, holder.fingerprint)
    assert isinstance(mode, Fast)
    run = JobRun(
        db,
        JobFiles(tmp_path, "fast"),
        "fast",
        config,
        mode,
        threading.Condition(),
        ServerMetrics(db),
        clock=clock,
    )
    run.start()
    return run


def _commit(run: JobRun, client: str, values: np.ndarray, n: int) -> None:
    run.db.register_client("fast", client, run.clock())
    blobs = list(FastCipher(holder_for("single-key-fast"), f"fast/{client}").encrypt_vector(values))
    manifest = pb.UploadManifest(
        job_id="fast",
        round=1,
        client_id=client,
        layout_id="L",
        ciphertext_chunks=len(blobs),
        num_values=VALUES,
        sample_count=n,
        context_fingerprint=run.fingerprint,
    )
    upload_id = run.begin_upload(manifest).upload_id
    for k, blob in enumerate(blobs):
        chunk = pb.Chunk(
            upload_id=upload_id,
            stream=pb.STREAM_KIND_CIPHERTEXT,
            index=k,
            num_values=min(N, VALUES - k * N),
            payload=blob,
            sha256=hashlib.sha256(blob).digest(),
        )
        run.put_chunk(chunk, client)
    run.commit(upload_id, client)


def test_restart_with_a_torn_sum_file_publishes_the_exact_mean(tmp_path: Path) -> None:
    clock = Clock()
    rng = np.random.default_rng(3)
    xs = {c: rng.uniform(-5, 5, VALUES) for c in ("a", "bb", "ccc")}
    weights = {"a": 10, "bb": 20, "ccc": 30}
    run = _run(tmp_path, clock)
    assert run.adder() is not None  # sums made by worker processes
    _commit(run, "a", xs["a"], weights["a"])
    _commit(run, "bb", xs["bb"], weights["bb"])
    run.close()
    sums = run.files.accumulator_path(1, pb.STREAM_KIND_CIPHERTEXT)
    # 3 chunks of c0 and c1, 2 limbs, each after its 16-byte state (exponent, E, count)
    assert sums.stat().st_size == 3 * (16 + 2 * 2 * N * 8)
    sums.write_bytes(b"\xff" * 11)  # the crash left a torn file
    run = _run(tmp_path, clock)  # the restarted server rebuilds from committed uploads
    _commit(run, "ccc", xs["ccc"], weights["ccc"])
    run.tick()
    run.close()
    blobs = [
        run.files.aggregate_chunk_path(1, pb.STREAM_KIND_CIPHERTEXT, k).read_bytes()
        for k in range(3)
    ]
    cipher = FastCipher(holder_for("single-key-fast"), "fast/reader")
    parts = [cipher.decrypt_chunk(b, 60) for b in blobs]  # each chunk on its own
    mean = np.concatenate(parts)[:VALUES] / 60
    exact = sum(weights[c] * xs[c] for c in xs) / 60
    assert np.abs(mean - exact).max() <= 1e-9
