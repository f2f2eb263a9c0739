"""Process-level parallelism for the HETAL kernels (SEAL calls hold the GIL).

:class:`KernelPool` starts ``workers`` processes with the ``spawn`` method (never fork
after SEAL/gRPC objects exist); each rebuilds the evaluation-only
:class:`~fedhe_common.hetal.seal_backend.SealBackend` once from the chain parameters
and the relinearisation/Galois key bytes. Ciphertexts cross the process boundary as
SEAL bytes between this process and its own children.

Work split: DiagABT by row blocks (each worker rotates the weights once for its share),
DiagATB by feature blocks (each worker rotates its copy of A^). Results are identical
to the serial kernels; operation counts and worker CPU seconds come back with them.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

from fedhe_common.errors import InvalidArgumentError
from fedhe_common.hetal.kernels import diag_abt, diag_abt_compact, diag_atb, rotate_weights
from fedhe_common.hetal.layout import Layout
from fedhe_common.hetal.seal_backend import ChainParams, SealBackend, SealCT

_worker_be: SealBackend | None = None


def _init(params: ChainParams, relin_keys: bytes, galois_keys: bytes) -> None:
    global _worker_be
    _worker_be = SealBackend(params, None, relin_keys, galois_keys)


def _be() -> SealBackend:
    if _worker_be is None:
        raise RuntimeError("worker not initialised")
    return _worker_be


TaskResult = tuple[list[bytes], dict[str, int], float]


def _abt_task(
    layout: Layout, wc: list[bytes], rows: list[list[bytes]], duplicate: bool, compact: bool
) -> TaskResult:
    be = _be()
    t0, c0 = time.process_time(), dict(be.counts)
    rotated = rotate_weights(be, layout, [be.load_local(b) for b in wc])
    out = []
    for row in rows:
        xs = [be.load_local(b) for b in row]
        z = (
            diag_abt_compact(be, layout, xs, rotated)
            if compact
            else diag_abt(be, layout, xs, rotated, duplicate=duplicate)
        )
        out.append(be.serialize(z))
    counts = {k: be.counts[k] - c0[k] for k in c0}
    return out, counts, time.process_time() - t0


def _atb_task(
    layout: Layout, ahat: list[bytes], rows: list[list[bytes]], coef: float, paired: bool
) -> TaskResult:
    """``rows[r]`` holds only this task's feature blocks; ``layout`` is narrowed to them."""
    be = _be()
    t0, c0 = time.process_time(), dict(be.counts)
    gs = diag_atb(
        be,
        layout,
        [be.load_local(b) for b in ahat],
        [[be.load_local(b) for b in row] for row in rows],
        coef,
        paired=paired,
    )
    counts = {k: be.counts[k] - c0[k] for k in c0}
    return [be.serialize(g) for g in gs], counts, time.process_time() - t0


def _split(n: int, parts: int) -> list[range]:
    parts = max(1, min(parts, n))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(parts)]


class KernelPool:
    """A pool of evaluation workers; use as a context manager or call :meth:`close`."""

    def __init__(
        self, params: ChainParams, relin_keys: bytes, galois_keys: bytes, workers: int = 2
    ) -> None:
        if workers < 1:
            raise InvalidArgumentError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.worker_cpu_s = 0.0
        self.critical_cpu_s = 0.0  # per call, the busiest task's CPU (= wall on idle cores)
        self.counts: dict[str, int] = {}
        self._pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init,
            initargs=(params, relin_keys, galois_keys),
        )

    def __enter__(self) -> KernelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _collect(self, results: Sequence[TaskResult]) -> list[bytes]:
        out: list[bytes] = []
        self.critical_cpu_s += max(cpu for _, _, cpu in results)
        for blobs, counts, cpu in results:
            out += blobs
            self.worker_cpu_s += cpu
            for k, v in counts.items():
                self.counts[k] = self.counts.get(k, 0) + v
        return out

    def diag_abt(
        self,
        be: SealBackend,
        layout: Layout,
        x_rows: Sequence[Sequence[SealCT]],
        wc_blocks: Sequence[SealCT],
        *,
        duplicate: bool = True,
        compact: bool = False,
    ) -> list[SealCT]:
        """:func:`~fedhe_common.hetal.kernels.diag_abt` (or, with ``compact``,
        :func:`~fedhe_common.hetal.kernels.diag_abt_compact`) for every row block, in parallel."""
        wc = [be.serialize(c) for c in wc_blocks]
        rows = [[be.serialize(c) for c in row] for row in x_rows]
        futs = [
            self._pool.submit(_abt_task, layout, wc, [rows[i] for i in part], duplicate, compact)
            for part in _split(len(rows), self.workers)
        ]
        return [be.load_local(b) for b in self._collect([f.result() for f in futs])]

    def diag_atb(
        self,
        be: SealBackend,
        layout: Layout,
        ahat: Sequence[SealCT],
        x_rows: Sequence[Sequence[SealCT]],
        coef: float = 1.0,
        *,
        paired: bool = False,
    ) -> list[SealCT]:
        """:func:`~fedhe_common.hetal.kernels.diag_atb`, feature blocks split over workers."""
        ah = [be.serialize(c) for c in ahat]
        futs = []
        for part in _split(layout.kappa, self.workers):
            sub = layout.narrowed(part.start, part.stop)
            rows = [[be.serialize(row[f]) for f in part] for row in x_rows]
            futs.append(self._pool.submit(_atb_task, sub, ah, rows, coef, paired))
        return [be.load_local(b) for b in self._collect([f.result() for f in futs])]
