"""``fedhe bench crypto``: bytes, CPU and error of encrypted FedAvg, ours vs baselines.

All configurations see the same random vectors (uniform in [-10, 10], drawn per
block from a seeded generator), 3 clients with integer weights 1, 2, 3. Work is
done block by block so memory stays bounded even for 109M-value models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from fedhe_cli.bench.cputime import PhaseTimer
from fedhe_cli.bench.crypto_paths import (
    AggregationPath,
    CompactPath,
    SealPath,
    TenSEALVectorPath,
)
from fedhe_common.crypto.presets import get_preset

DEFAULT_SIZES = (1_663_370, 11_689_512)
WEIGHTS = (1, 2, 3)
BLOCK_VALUES = 4096 * 32
VALUE_RANGE = 10.0

PATH_FACTORIES: dict[str, Callable[[], AggregationPath]] = {
    "single-key": lambda: SealPath("single-key", get_preset("single-key")),
    "paper-default": lambda: TenSEALVectorPath(
        "paper-default",
        8192,
        [60, 52, 60],
        52,
        symmetric=False,
        summary="TenSEAL CKKSVector, N=8192, depth 1 [60,52,60], scale 2^52, public key",
    ),
    "nvflare-default": lambda: TenSEALVectorPath(
        "nvflare-default",
        8192,
        [60, 40, 40],
        40,
        symmetric=True,
        summary="TenSEAL CKKSVector, N=8192 [60,40,40], scale 2^40, symmetric (NVFlare 2.x)",
    ),
    "single-key-8k": lambda: SealPath("single-key-8k", get_preset("single-key-8k")),
    "single-key-real-weights": lambda: SealPath(
        "single-key-real-weights", get_preset("single-key-real-weights")
    ),
    "single-key-fast": lambda: CompactPath("single-key-fast", get_preset("single-key-fast")),
    "single-key-compact": lambda: CompactPath(
        "single-key-compact", get_preset("single-key-compact")
    ),
    "threshold-strict-pk": lambda: SealPath("threshold-strict-pk", get_preset("threshold-strict")),
}
DEFAULT_CONFIGS = (
    "single-key-fast",
    "single-key",
    "single-key-8k",
    "single-key-compact",
    "paper-default",
    "nvflare-default",
)


@dataclass
class CryptoResult:
    """One (config, size) row; the field names are the JSON contract."""

    config: str
    n_params: int
    upload_bytes_per_value: float
    download_bytes_per_value: float
    client_cpu_s: float
    server_cpu_s_per_client: float
    server_serialize_cpu_s: float
    decrypt_cpu_s: float
    max_abs_err: float
    summary: str
    # max |error of the weighted mean| / the update range (the values' span, 2 * VALUE_RANGE)
    max_rel_err: float = 0.0


def client_block(seed: int, client: int, block: int, size: int) -> np.ndarray:
    """The deterministic random values of one client's block (same for every config)."""
    return np.random.default_rng([seed, client, block]).uniform(-VALUE_RANGE, VALUE_RANGE, size)


@dataclass
class _Tally:
    """Running totals of one path on one size."""

    timer: PhaseTimer = field(default_factory=PhaseTimer)
    up_bytes: int = 0
    down_bytes: int = 0
    max_err: float = 0.0


def run_block(path: AggregationPath, values: list[np.ndarray], tally: _Tally) -> None:
    """Encrypt, aggregate, serialize and decrypt one block of every client's values."""
    timer = tally.timer
    uploads = []
    for x in values:
        with timer.phase("client"):
            blobs = path.encrypt(x)
        tally.up_bytes += sum(len(blob) for blob in blobs)
        uploads.append(blobs)
    with timer.phase("server"):
        sums = path.aggregate(uploads, list(WEIGHTS))
    with timer.phase("serialize"):
        result = path.serialize(sums)
    tally.down_bytes += sum(len(blob) for blob in result)
    with timer.phase("decrypt"):
        decrypted = path.decrypt(result, values[0].size)
    weight_sum = float(sum(WEIGHTS))
    exact = sum(w * x for w, x in zip(WEIGHTS, values, strict=True)) / weight_sum
    tally.max_err = max(tally.max_err, float(np.abs(decrypted / weight_sum - exact).max()))


def _result(path: AggregationPath, n_params: int, tally: _Tally) -> CryptoResult:
    clients = len(WEIGHTS)
    cpu = tally.timer.cpu_s
    return CryptoResult(
        config=path.name,
        n_params=n_params,
        upload_bytes_per_value=tally.up_bytes / clients / n_params,
        download_bytes_per_value=tally.down_bytes / n_params,
        client_cpu_s=cpu["client"] / clients,
        server_cpu_s_per_client=cpu["server"] / clients,
        server_serialize_cpu_s=cpu["serialize"],
        decrypt_cpu_s=cpu["decrypt"],
        max_abs_err=tally.max_err,
        summary=path.summary,
        max_rel_err=tally.max_err / (2 * VALUE_RANGE),
    )


def run_crypto_bench(
    configs: Iterable[str],
    sizes: Iterable[int],
    seed: int = 0,
    on_block: Callable[[str, int, int], None] = lambda config, size, done: None,
) -> list[CryptoResult]:
    """Every config on every size in one process, interleaved block by block.

    Each block of values goes through every config before the next block, so a
    change in the machine's load during the run hits all configs alike (the
    machines are shared). Keys are made once per config.
    """
    paths = [PATH_FACTORIES[config]() for config in configs]
    results = []
    for n in sizes:
        tallies = [_Tally() for _ in paths]
        for b, start in enumerate(range(0, n, BLOCK_VALUES)):
            size = min(BLOCK_VALUES, n - start)
            values = [client_block(seed, i, b, size) for i in range(len(WEIGHTS))]
            for path, tally in zip(paths, tallies, strict=True):
                run_block(path, values, tally)
                on_block(path.name, n, size)
        results += [_result(p, n, t) for p, t in zip(paths, tallies, strict=True)]
    return results


def ratios_vs(results: list[CryptoResult], baseline: str) -> list[dict[str, float | str | int]]:
    """CPU and byte ratios of each row against the baseline row of the same size."""
    base = {r.n_params: r for r in results if r.config == baseline}
    out: list[dict[str, float | str | int]] = []
    for r in results:
        b = base.get(r.n_params)
        if b is None or r.config == baseline:
            continue
        out.append(
            {
                "config": r.config,
                "baseline": baseline,
                "n_params": r.n_params,
                "client_cpu_ratio": r.client_cpu_s / b.client_cpu_s,
                "server_cpu_ratio": r.server_cpu_s_per_client / b.server_cpu_s_per_client,
                "decrypt_cpu_ratio": r.decrypt_cpu_s / b.decrypt_cpu_s,
                "upload_bytes_ratio": r.upload_bytes_per_value / b.upload_bytes_per_value,
                "download_bytes_ratio": r.download_bytes_per_value / b.download_bytes_per_value,
            }
        )
    return out
