"""``fedhe bench models``: FedML-HE's Table 4 measured here, one row per (model, config).

For each zoo model the update is its float state (parameters and BatchNorm statistics) at
the model's reference input (ImageNet heads for vision, 2 classes for text), built on the
``meta`` device (shapes only). Each config encrypts, aggregates (3 clients, weights 1, 2, 3)
and decrypts up to ``measure_values`` values of it for real, block by block
(:mod:`fedhe_cli.bench.crypto_bench`); bytes and CPU scale with the number of ciphertexts,
so larger models are extrapolated from that measured prefix (a whole number of
ciphertexts for every config). ``measure_values=0`` measures every value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedhe_cli.bench.cputime import PhaseTimer
from fedhe_cli.bench.crypto_bench import BLOCK_VALUES, PATH_FACTORIES, WEIGHTS, client_block
from fedhe_cli.bench.crypto_paths import AggregationPath
from fedhe_common.crypto.presets import DEFAULT_PRESET

DEFAULT_MODELS = (
    "linear",
    "cnn",
    "resnet18",
    "resnet50",
    "mobilenetv2",
    "vit-base",
    "bert-base",
)
DEFAULT_CONFIGS = (DEFAULT_PRESET, "single-key", "nvflare-default", "paper-default")
OURS = DEFAULT_PRESET
DEFAULT_MEASURE = 8 * BLOCK_VALUES  # 1,048,576 values: a whole number of ciphertexts
PLAIN_BYTES_PER_VALUE = 4  # plaintext FedAvg sends float32
MAX_ABS_ERR = 1e-3  # every config must still aggregate correctly (values in [-10, 10])


@dataclass
class ModelResult:
    """One (model, config) row; the field names are the JSON contract."""

    model: str
    n_params: int
    config: str
    plain_bytes: int
    upload_bytes: int
    download_bytes: int
    client_cpu_s: float
    server_cpu_s_per_client: float
    decrypt_cpu_s: float


@dataclass(frozen=True)
class ModelSize:
    """A zoo model's parameter count and the float values one update carries."""

    model: str
    n_params: int
    values: int


def model_size(name: str) -> ModelSize:
    """Parameters and update values of a zoo model, built on ``meta`` (no memory)."""
    from fedhe_client.zoo import count_params, reference_model
    from fedhe_common.mlbridge.flatten import build_manifest

    model = reference_model(name)
    return ModelSize(name, count_params(model), build_manifest(model.state_dict()).total)


def _ciphertexts(values: int, per_ct: int) -> int:
    return math.ceil(values / per_ct)


@dataclass
class _Tally:
    timer: PhaseTimer = field(default_factory=PhaseTimer)
    up_bytes: int = 0
    down_bytes: int = 0


def _measure(path: AggregationPath, measured: int, seed: int, tally: _Tally) -> float:
    """Encrypt, aggregate and decrypt ``measured`` values per client; the max abs error."""
    timer, err = tally.timer, 0.0
    weight_sum = float(sum(WEIGHTS))
    for b, start in enumerate(range(0, measured, BLOCK_VALUES)):
        size = min(BLOCK_VALUES, measured - start)
        values = [client_block(seed, i, b, size) for i in range(len(WEIGHTS))]
        uploads = []
        for x in values:
            with timer.phase("client"):
                blobs = path.encrypt(x)
            tally.up_bytes += sum(len(blob) for blob in blobs)
            uploads.append(blobs)
        with timer.phase("server"):
            sums = path.aggregate(uploads, list(WEIGHTS))
        result = path.serialize(sums)
        tally.down_bytes += sum(len(blob) for blob in result)
        with timer.phase("decrypt"):
            decrypted = path.decrypt(result, size)
        exact = sum(w * x for w, x in zip(WEIGHTS, values, strict=True)) / weight_sum
        err = max(err, float(np.abs(decrypted / weight_sum - exact).max()))
    return err


def bench_model(
    size: ModelSize,
    paths: Sequence[AggregationPath],
    measure_values: int = DEFAULT_MEASURE,
    seed: int = 0,
) -> list[ModelResult]:
    """Rows of one model for every path (real CKKS on the measured prefix, then scaled)."""
    measured = size.values if measure_values <= 0 else min(size.values, measure_values)
    clients = len(WEIGHTS)
    rows = []
    for path in paths:
        tally = _Tally()
        err = _measure(path, measured, seed, tally)
        if err > MAX_ABS_ERR:
            raise RuntimeError(f"{path.name}: decrypted FedAvg off by {err:.3g}")
        per_ct = path.values_per_ciphertext
        scale = _ciphertexts(size.values, per_ct) / _ciphertexts(measured, per_ct)
        cpu = tally.timer.cpu_s
        rows.append(
            ModelResult(
                model=size.model,
                n_params=size.n_params,
                config=path.name,
                plain_bytes=PLAIN_BYTES_PER_VALUE * size.values,
                upload_bytes=round(tally.up_bytes / clients * scale),
                download_bytes=round(tally.down_bytes * scale),
                client_cpu_s=cpu["client"] / clients * scale,
                server_cpu_s_per_client=cpu["server"] / clients * scale,
                decrypt_cpu_s=cpu["decrypt"] * scale,
            )
        )
    return rows


def run_models_bench(
    models: Sequence[str] = DEFAULT_MODELS,
    configs: Sequence[str] = DEFAULT_CONFIGS,
    measure_values: int = DEFAULT_MEASURE,
    on_model: Callable[[str], None] = lambda name: None,
) -> list[ModelResult]:
    """Every model under every config; keys are made once per config."""
    paths = [PATH_FACTORIES[c]() for c in configs]
    rows: list[ModelResult] = []
    for name in models:
        on_model(name)
        rows += bench_model(model_size(name), paths, measure_values)
    return rows


def ratios(rows: Sequence[ModelResult], ours: str = OURS) -> list[dict[str, float | str]]:
    """HE/plain upload per row, and ours/baseline CPU and bytes per model and baseline."""
    out: list[dict[str, float | str]] = []
    mine = {r.model: r for r in rows if r.config == ours}
    for r in rows:
        entry: dict[str, float | str] = {
            "model": r.model,
            "config": r.config,
            "upload_vs_plain": r.upload_bytes / r.plain_bytes,
            "download_vs_plain": r.download_bytes / r.plain_bytes,
        }
        m = mine.get(r.model)
        if m is not None and r.config != ours:
            entry["ours_vs_baseline_upload"] = m.upload_bytes / r.upload_bytes
            entry["ours_vs_baseline_client_cpu"] = m.client_cpu_s / r.client_cpu_s
            entry["ours_vs_baseline_server_cpu"] = (
                m.server_cpu_s_per_client / r.server_cpu_s_per_client
            )
            entry["ours_vs_baseline_decrypt_cpu"] = m.decrypt_cpu_s / r.decrypt_cpu_s
        out.append(entry)
    return out


# ------------------------------------------------------------ LoRA (FedML-HE Table 5)
LORA_MODELS = ("bert-base", "resnet18")
LLAMA = "llama-2-7b"
LORA_R = 8
LORA_TARGETS = {
    "bert-base": ["query", "value"],
    "resnet18": ["convolution"],
    LLAMA: ["q_proj", "v_proj"],
}
# Llama-2-7B's published configuration (built on ``meta``: shapes only, nothing downloads).
LLAMA_2_7B = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "num_labels": 2,
    "pad_token_id": 0,
}


@dataclass
class LoraResult:
    """One row of the LoRA table (bytes per client); the field names are the JSON contract."""

    model: str
    n_params: int
    full_values: int
    lora_values: int
    plain_bytes: int
    full_encrypted_bytes: int
    lora_plain_bytes: int
    lora_encrypted_bytes: int
    lora_client_cpu_s: float
    full_client_cpu_s: float
    measured: bool  # False: by layout only; bytes and CPU extrapolated per ciphertext


def _llama_meta() -> Any:
    """Llama-2-7B with a 2-class head on ``meta`` (no memory)."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    with torch.device("meta"):
        return LlamaForSequenceClassification(LlamaConfig(**LLAMA_2_7B))  # type: ignore[arg-type]


def lora_layout(name: str, r: int = LORA_R) -> tuple[int, int, int]:
    """(parameters, full update values, LoRA adapter + head values) of a model on ``meta``."""
    import torch

    from fedhe_client.peft_support import apply_peft
    from fedhe_client.zoo import count_params, reference_model
    from fedhe_common.config.models import PeftSection
    from fedhe_common.mlbridge.flatten import build_manifest

    model = _llama_meta() if name == LLAMA else reference_model(name)
    n_params = count_params(model)
    full = build_manifest(model.state_dict()).total
    with torch.device("meta"):
        model, info = apply_peft(model, PeftSection(r=r, target_modules=LORA_TARGETS[name]))
    params = dict(model.named_parameters())
    return n_params, full, sum(params[n].numel() for n in info.trainable)


def run_lora_bench(
    models: Sequence[str] = LORA_MODELS, config: str = OURS, with_llama: bool = True
) -> list[LoraResult]:
    """Encrypt each model's LoRA vector for real (3 clients); full and Llama per ciphertext."""
    path = PATH_FACTORIES[config]()
    per_ct = path.values_per_ciphertext
    rows: list[LoraResult] = []
    ct_bytes = ct_cpu = 0.0
    for name in models:
        n_params, full, lora = lora_layout(name)
        (row,) = bench_model(ModelSize(name, n_params, lora), [path], measure_values=0)
        cts = _ciphertexts(lora, per_ct)
        ct_bytes, ct_cpu = row.upload_bytes / cts, row.client_cpu_s / cts
        rows.append(_lora_row(name, n_params, full, lora, row.upload_bytes,
                              row.client_cpu_s, ct_bytes, ct_cpu, per_ct, True))  # fmt: skip
    if with_llama and ct_bytes:
        n_params, full, lora = lora_layout(LLAMA)
        cts = _ciphertexts(lora, per_ct)
        rows.append(_lora_row(LLAMA, n_params, full, lora, round(cts * ct_bytes), cts * ct_cpu,
                              ct_bytes, ct_cpu, per_ct, False))  # fmt: skip
    return rows


def _lora_row(
    name: str,
    n_params: int,
    full: int,
    lora: int,
    lora_bytes: int,
    lora_cpu: float,
    ct_bytes: float,
    ct_cpu: float,
    per_ct: int,
    measured: bool,
) -> LoraResult:
    full_cts = _ciphertexts(full, per_ct)
    return LoraResult(
        model=name,
        n_params=n_params,
        full_values=full,
        lora_values=lora,
        plain_bytes=PLAIN_BYTES_PER_VALUE * full,
        full_encrypted_bytes=round(full_cts * ct_bytes),
        lora_plain_bytes=PLAIN_BYTES_PER_VALUE * lora,
        lora_encrypted_bytes=lora_bytes,
        lora_client_cpu_s=lora_cpu,
        full_client_cpu_s=full_cts * ct_cpu,
        measured=measured,
    )
