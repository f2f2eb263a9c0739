"""On-disk accumulators (issue 12, item 2): exact, and memory flat in the model size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedhe_common.crypto.aggregate import CiphertextAggregator
from fedhe_common.errors import InvalidArgumentError
from fedhe_common.mlbridge.accumulate import EncryptedAccumulator, PlainAccumulator
from fedhe_common.mlbridge.chunking import ChunkPlan
from fedhe_common.mlbridge.encrypted_vector import decrypt_chunks
from tests.conftest import holder_for


@pytest.mark.parametrize("preset", ["single-key", "single-key-real-weights", "single-key-strict"])
def test_disk_sum_is_byte_identical_to_the_in_memory_sum(preset: str, tmp_path: Path) -> None:
    holder = holder_for(preset)
    agg = CiphertextAggregator(holder.params)
    total = 3 * holder.preset.values_per_ciphertext + 17
    plan = ChunkPlan(total, holder.preset.values_per_ciphertext)
    memory = EncryptedAccumulator(agg, plan)
    disk = EncryptedAccumulator(agg, plan, tmp_path / "ct.res")
    rng = np.random.default_rng(5)
    expected = np.zeros(total)
    weights = (0.5, 0.25, 1.0) if "real" in preset else (1, 3, 7)
    for w in weights:
        x = rng.uniform(-1, 1, total)
        expected += w * x
        blobs = list(holder.encrypt_vector(x))
        memory.add_upload(blobs, w)
        disk.add_upload(blobs, w)
    for k in range(plan.count):
        assert disk.chunk_blob(k) == memory.chunk_blob(k)
    got = decrypt_chunks(holder, [disk.chunk_blob(k) for k in range(plan.count)], total)
    assert np.abs(got - expected).max() < 1e-4
    assert disk.weight_sum == sum(weights)


def test_disk_plain_sum_equals_memory_and_refuses_bad_chunks(tmp_path: Path) -> None:
    plan = ChunkPlan(10_000, 4096)
    memory, disk = PlainAccumulator(plan), PlainAccumulator(plan, tmp_path / "pt.res")
    rng = np.random.default_rng(1)
    for w in (2, 5):
        x = rng.normal(size=10_000).astype("<f4")
        for k, part in enumerate(plan.split(x)):
            memory.add(k, part.tobytes(), w)
            disk.add(k, part.tobytes(), w)
    assert np.array_equal(disk.sum, memory.sum)
    before = disk.sum.copy()
    with pytest.raises(InvalidArgumentError, match="NaN"):
        disk.add(0, np.full(4096, np.nan, dtype="<f4").tobytes(), 1)
    assert np.array_equal(disk.sum, before)


def test_a_new_disk_accumulator_starts_from_zero(tmp_path: Path) -> None:
    """A half-written file (crash) is truncated: the rebuild starts from nothing."""
    path = tmp_path / "pt.res"
    path.write_bytes(b"\x7f" * 123)
    acc = PlainAccumulator(ChunkPlan(100, 64), path)
    assert not acc.sum.any() and path.stat().st_size == 800


_RSS_SCRIPT = """
import resource, sys
import numpy as np
from pathlib import Path
from fedhe_common.crypto.aggregate import CiphertextAggregator
from fedhe_common.mlbridge.accumulate import EncryptedAccumulator
from fedhe_common.mlbridge.chunking import ChunkPlan
from tests.conftest import holder_for

chunks = int(sys.argv[1])
holder = holder_for("single-key")
agg = CiphertextAggregator(holder.params)
vpc = holder.preset.values_per_ciphertext
blob = list(holder.encrypt_vector(np.ones(vpc)))[0]
plan = ChunkPlan(chunks * vpc, vpc)
acc = EncryptedAccumulator(agg, plan, Path(sys.argv[2]))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for w in (1, 2):
    for k in range(chunks):
        acc.add(k, blob, w)
for k in range(chunks):
    acc.chunk_blob(k)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
"""


def test_server_memory_does_not_grow_with_the_model(tmp_path: Path) -> None:
    """Two model sizes, 8x apart: the peak RSS grows far less than the sums' bytes."""
    growth = {}
    for chunks in (100, 800):
        out = subprocess.run(
            [sys.executable, "-c", _RSS_SCRIPT, str(chunks), str(tmp_path / f"{chunks}.res")],
            check=True,
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        growth[chunks] = int(out.stdout.split()[-1]) * 1024  # ru_maxrss is in KiB
    sums_bytes = 800 * 2 * 4096 * 8  # 800 ciphertext sums of 64 KiB: 52 MB
    assert growth[800] - growth[100] < sums_bytes / 10, growth
    assert (tmp_path / "800.res").stat().st_size == sums_bytes


def test_a_half_written_sum_file_is_rebuilt_after_a_restart(tmp_path: Path) -> None:
    """The server's running sum is derived state: garbage in it (a crash mid-write) is
    replaced by the committed uploads at start-up, and the published aggregate is exact."""
    from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
    from tests.unit.test_round_machine import Clock, _commit, _run

    clock = Clock()
    run = _run(tmp_path, clock, expected=2)
    _commit(run, "a", 1, n=10)
    sums = run.files.accumulator_path(1, pb.STREAM_KIND_PLAINTEXT)
    assert sums.stat().st_size > 0
    sums.write_bytes(b"\xff" * 7)  # the crash left a torn file
    run = _run(tmp_path, clock, expected=2)
    _commit(run, "bbb", 1, n=30)
    run.tick()
    blob = run.files.aggregate_chunk_path(1, pb.STREAM_KIND_PLAINTEXT, 0).read_bytes()
    assert np.allclose(np.frombuffer(blob, dtype="<f4") / 40, (10 * 1 + 30 * 3) / 40)
    assert not sums.parent.exists()  # the published round's sums are gone
