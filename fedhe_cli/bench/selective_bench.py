"""``fedhe bench selective``: wire bytes and CPU of selective encryption vs the ratio.

Like the FedML-HE paper's Table 7: a ViT-base-sized update (86,389,248 values) from
3 clients (weights 1, 2, 3) at encrypted ratios 0, 0.1, 0.3, 0.5, 0.7 and 1.0, in
one run. Which coordinates are masked does not change the cost, so each block of
values gets a random mask of the ratio's size. Masked values are packed densely
into ciphertexts, the rest travel as float32; work is streamed block by block so
memory stays bounded. CPU is process time; client = clip/split + encrypt +
serialize, server = validate + load + weight + add (both streams).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedhe_cli.bench.cputime import PhaseTimer
from fedhe_common.crypto.aggregate import CiphertextAggregator
from fedhe_common.crypto.presets import get_preset
from fedhe_common.crypto.secret import SecretKeyHolder

VIT_BASE = 86_389_248
DEFAULT_RATIOS = (0.0, 0.1, 0.3, 0.5, 0.7, 1.0)
WEIGHTS = (1, 2, 3)
BLOCK = 4096 * 64


@dataclass
class SelectiveResult:
    """One row of the JSON contract (plus error and timing detail)."""

    ratio: float
    n_params: int
    encrypted_values: int
    upload_bytes_per_client: int
    plain_bytes_per_client: int
    client_cpu_s: float
    server_cpu_s_per_client: float
    max_abs_err: float


class _Run:
    """Streams one ratio: buffers masked values until a ciphertext is full."""

    def __init__(self, holder: SecretKeyHolder, aggregator: CiphertextAggregator) -> None:
        self.holder = holder
        self.aggregator = aggregator
        self.per_ct = holder.preset.values_per_ciphertext
        self.timer = PhaseTimer()
        self.buffers: list[list[np.ndarray]] = [[] for _ in WEIGHTS]
        self.buffered = 0
        self.ct_bytes = 0
        self.pt_bytes = 0
        self.max_err = 0.0

    def block(self, values: list[np.ndarray], keep: np.ndarray) -> None:
        """One block of every client's values; ``keep`` marks the encrypted ones."""
        rests = []
        for i, x in enumerate(values):
            with self.timer.phase("client"):
                masked, rest = x[keep], x[~keep]
                payload = np.clip(rest, -16, 16).astype("<f4").tobytes()
            self.buffers[i].append(masked)
            self.pt_bytes += len(payload)
            rests.append(payload)
        self.buffered += int(keep.sum())
        with self.timer.phase("server"):
            total = np.zeros(int((~keep).sum()))
            for w, payload in zip(WEIGHTS, rests, strict=True):
                total += w * np.frombuffer(payload, dtype="<f4")
        while self.buffered >= self.per_ct:
            self._ciphertexts(self.per_ct)

    def finish(self) -> None:
        """Encrypt what is left in the buffers (a partial last ciphertext)."""
        if self.buffered:
            self._ciphertexts(self.buffered)

    def _ciphertexts(self, count: int) -> None:
        chunks = []
        for i, buf in enumerate(self.buffers):
            flat = np.concatenate(buf)
            take, self.buffers[i] = flat[:count], [flat[count:]]
            with self.timer.phase("client"):
                blob = self.holder.encrypt(take)
            self.ct_bytes += len(blob)
            chunks.append((take, blob))
        self.buffered -= count
        with self.timer.phase("server"):
            acc = None
            for w, (_, blob) in zip(WEIGHTS, chunks, strict=True):
                acc = self.aggregator.add_weighted(acc, self.aggregator.load_upload(blob), w)
        got = self.holder.decrypt(self.aggregator.to_blob(acc))[:count]
        exact = sum(w * np.clip(t, -16, 16) for w, (t, _) in zip(WEIGHTS, chunks, strict=True))
        self.max_err = max(self.max_err, float(np.abs(got - exact).max()) / sum(WEIGHTS))


def run_selective_bench(
    n_params: int,
    ratios: tuple[float, ...],
    seed: int = 0,
    on_block: Callable[[float, int], None] = lambda r, n: None,
) -> list[SelectiveResult]:
    """Every ratio on the same random values, in one process."""
    holder = SecretKeyHolder.generate(get_preset("single-key"))
    aggregator = CiphertextAggregator(holder.params)
    results = []
    for ratio in ratios:
        run = _Run(holder, aggregator)
        encrypted = 0
        for b, start in enumerate(range(0, n_params, BLOCK)):
            size = min(BLOCK, n_params - start)
            values = [
                np.random.default_rng([seed, i, b]).uniform(-10, 10, size)
                for i in range(len(WEIGHTS))
            ]
            count = round(ratio * size)
            keep = np.zeros(size, dtype=bool)
            keep[np.random.default_rng([seed, 99, b]).permutation(size)[:count]] = True
            encrypted += count
            run.block(values, keep)
            on_block(ratio, size)
        run.finish()
        clients = len(WEIGHTS)
        results.append(
            SelectiveResult(
                ratio=ratio,
                n_params=n_params,
                encrypted_values=encrypted,
                upload_bytes_per_client=(run.ct_bytes + run.pt_bytes) // clients,
                plain_bytes_per_client=4 * n_params,
                client_cpu_s=run.timer.cpu_s["client"] / clients,
                server_cpu_s_per_client=run.timer.cpu_s["server"] / clients,
                max_abs_err=run.max_err,
            )
        )
    return results
