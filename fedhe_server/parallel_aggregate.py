"""Add one committed upload into the round's sums with N workers over chunk ranges.

Chunk k of every client is added into record k of the round's record files, so
the work splits by chunk range with no shared state: worker j adds chunks
``[a_j, b_j)`` of the upload (read from its staged files) into the same records
(``pwrite`` at disjoint offsets). The commit decides membership, never a worker:
:meth:`JobRun.commit` calls :meth:`ParallelAdder.add_upload` and records the
upload as committed only after every range has succeeded; if one range fails,
the upload is rejected and the round's sums are rebuilt from the committed
uploads, so a client counts in every chunk or in none.

Backends: ``local`` is a process pool (spawn, never fork, after SEAL objects
exist); ``ray`` sends the same task function as Ray tasks to the cluster named by
``RAY_ADDRESS`` (workers must see the server's ``state_dir``). Workers build the
job's :class:`CiphertextAggregator` from public parameters only (cached per
process).

``single-key-fast`` (the coefficient sums of c0 and c1) works the same way: each
record of its sum file carries the chunk's state at add time (common exponent,
effective weight, contributor count), so a worker opens the file and adds its range
with numpy. The seed-id registry stays in the server process: the upload's seed id
is claimed there before dispatch, and every worker checks that each chunk of its
range carries that id. ``single-key-compact`` publishes every contributor's shift
per chunk, kept in the server process: its sums are always made there.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.crypto.aggregate import CiphertextAggregator
from fedhe_common.crypto.context import PublicParams
from fedhe_common.errors import ConfigError, ManifestMismatchError
from fedhe_common.mlbridge.accumulate import EncryptedAccumulator, PlainAccumulator
from fedhe_common.mlbridge.chunking import ChunkPlan
from fedhe_common.mlbridge.compact_accumulate import CompactAccumulator

if TYPE_CHECKING:
    from fedhe_server.rounds import RoundAccumulators
    from fedhe_server.staging import JobFiles

CT = pb.STREAM_KIND_CIPHERTEXT
PT = pb.STREAM_KIND_PLAINTEXT
logger = logging.getLogger(__name__)
_AGGREGATORS: dict[str, CiphertextAggregator] = {}  # per worker process, by params sha256


@dataclass(frozen=True)
class RangeTask:
    """Add chunks ``[start, start + len(chunk_paths))`` of one upload, times ``weight``.

    ``params_json`` is the job's public parameters for the ciphertext stream and
    None for the plaintext stream. A coefficient (``single-key-fast``) task names
    the context fingerprint and the upload's claimed seed id and base id, which every
    chunk of the range must carry."""

    params_json: str | None
    total: int
    values_per_chunk: int
    accumulator: str
    start: int
    chunk_paths: tuple[str, ...]
    weight: float
    fingerprint: bytes = b""
    upload_id: bytes = b""
    base_id: bytes = b""


def _aggregator(params_json: str) -> CiphertextAggregator:
    key = hashlib.sha256(params_json.encode()).hexdigest()
    agg = _AGGREGATORS.get(key)
    if agg is None:
        agg = _AGGREGATORS[key] = CiphertextAggregator(PublicParams.from_json(params_json))
    return agg


def add_range(task: RangeTask) -> float | None:
    """Worker side: add the task's chunks into the existing record file; return the
    ciphertext scale (None for plaintext)."""
    plan = ChunkPlan(task.total, task.values_per_chunk)
    path = Path(task.accumulator)
    if task.params_json is None:
        plain = PlainAccumulator(plan, path, fresh=False)
        for k, chunk in enumerate(task.chunk_paths, task.start):
            plain.add(k, Path(chunk).read_bytes(), task.weight)
        return None
    if task.upload_id:  # coefficient sums: numpy on the record file, no SEAL
        preset = PublicParams.from_json(task.params_json).preset
        sums = CompactAccumulator(preset, task.fingerprint, plan, path, fresh=False)
        sums.expect(task.upload_id, task.base_id)
        for k, chunk in enumerate(task.chunk_paths, task.start):
            sums.add(k, Path(chunk).read_bytes(), task.weight)
        return None
    acc = EncryptedAccumulator(_aggregator(task.params_json), plan, path, fresh=False)
    for k, chunk in enumerate(task.chunk_paths, task.start):
        acc.add(k, Path(chunk).read_bytes(), task.weight)
    return acc.scale


def split_ranges(count: int, parts: int) -> list[range]:
    """``count`` chunks as at most ``parts`` contiguous, non-empty, balanced ranges."""
    parts = max(1, min(parts, count))
    base, extra = divmod(count, parts)
    ranges, start = [], 0
    for j in range(parts):
        stop = start + base + (1 if j < extra else 0)
        ranges.append(range(start, stop))
        start = stop
    return [r for r in ranges if len(r)]


class RayExecutor:
    """``map`` over Ray tasks (the cluster in ``RAY_ADDRESS``, else a local Ray)."""

    def __init__(self, workers: int) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "aggregation.backend ray needs Ray on the server: pip install 'fedhe[ray]'"
            ) from None
        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False)
        self._ray = ray
        self._remote = ray.remote(num_cpus=1)(add_range)
        self.workers = workers

    def map(self, fn: Callable[[RangeTask], Any], tasks: Sequence[RangeTask]) -> list[Any]:
        """Run ``add_range`` for every task on the cluster; re-raise the first failure."""
        refs = [self._remote.remote(t) for t in tasks]
        self._ray.wait(refs, num_returns=len(refs))  # every range ends before any error
        try:
            return list(self._ray.get(refs))
        except self._ray.exceptions.RayTaskError as exc:
            raise exc.as_instanceof_cause() from None

    def shutdown(self) -> None:
        """Leave the Ray cluster running (it is not ours)."""


class ParallelAdder:
    """Adds uploads into a round's record files with ``workers`` chunk-range workers."""

    def __init__(self, workers: int, backend: str, params_json: str | None) -> None:
        self.workers = workers
        self.backend = backend
        self.params_json = params_json
        self._pool: Executor | RayExecutor | None = None

    def _executor(self) -> Executor | RayExecutor:
        if self._pool is None:
            logger.info("aggregation: %d %s workers over chunk ranges", self.workers, self.backend)
            if self.backend == "ray":
                self._pool = RayExecutor(self.workers)
            else:
                ctx = multiprocessing.get_context("spawn")
                self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx)
        return self._pool

    def add_stream(
        self,
        plan: ChunkPlan,
        accumulator: Path,
        chunk_paths: list[Path],
        weight: float,
        encrypted: bool,
        coefficient: tuple[bytes, bytes, bytes] | None = None,
    ) -> float | None:
        """Add one stream of one upload; return the ciphertext scale (None for plaintext).

        ``coefficient``: (fingerprint, seed id, base id) of a claimed ``single-key-fast``
        upload. Raises the first worker's error after every range has finished (the
        caller then rejects the upload and rebuilds the sums)."""
        fp, uid, base = coefficient or (b"", b"", b"")
        tasks = [
            RangeTask(
                self.params_json if encrypted else None,
                plan.total,
                plan.values_per_chunk,
                str(accumulator),
                r.start,
                tuple(str(chunk_paths[k]) for k in r),
                weight,
                fp,
                uid,
                base,
            )
            for r in split_ranges(plan.count, self.workers)
        ]
        executor = self._executor()
        if isinstance(executor, RayExecutor):
            scales = executor.map(add_range, tasks)
        else:
            futures = [executor.submit(add_range, t) for t in tasks]
            wait(futures)  # every range ends before the caller may rebuild the file
            scales = [f.result() for f in futures]
        return scales[0] if scales else None

    def close(self) -> None:
        """Stop the local worker processes."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def add_upload(
        self,
        acc: RoundAccumulators,
        files: JobFiles,
        number: int,
        upload_id: str,
        ciphertext_chunks: int,
        plaintext_chunks: int,
        weight: float,
    ) -> None:
        """Add both streams of one staged upload (the caller counts its weight)."""
        if ciphertext_chunks:
            sums = acc.encrypted
            assert sums is not None
            paths = [files.chunk_path(number, upload_id, CT, k) for k in range(ciphertext_chunks)]
            target = files.accumulator_path(number, CT)
            if isinstance(sums, CompactAccumulator):
                if not sums.scheme.server_sums_a:  # per-member shifts live in one process
                    raise ConfigError("single-key-compact sums are made in the server process")
                if len(paths) != sums.plan.count:
                    raise ManifestMismatchError(
                        f"upload has {len(paths)} chunks, plan {sums.plan.count}"
                    )
                uid, base = sums.claim_upload(paths[0].read_bytes(), weight)
                coefficient = (sums.fingerprint, uid, base)
                self.add_stream(sums.plan, target, paths, weight, True, coefficient)
                sums.mark_upload(uid, base, weight)
            else:
                scale = self.add_stream(sums.plan, target, paths, weight, True)
                sums.mark_added(range(ciphertext_chunks), scale)
        if plaintext_chunks:
            assert acc.plain is not None
            paths = [files.chunk_path(number, upload_id, PT, k) for k in range(plaintext_chunks)]
            target = files.accumulator_path(number, PT)
            self.add_stream(acc.plain.plan, target, paths, weight, False)
