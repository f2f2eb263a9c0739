"""Encrypt -> aggregate -> decrypt equals numpy, for every preset."""

from __future__ import annotations

import numpy as np
import pytest

from fedhe_common.crypto.aggregate import CiphertextAggregator
from fedhe_common.crypto.presets import get_preset
from fedhe_common.crypto.secret import SecretKeyHolder
from fedhe_common.errors import InvalidArgumentError, ValueRangeError
from fedhe_common.mlbridge.accumulate import EncryptedAccumulator
from fedhe_common.mlbridge.chunking import ChunkPlan
from fedhe_common.mlbridge.encrypted_vector import decrypt_chunks
from tests.conftest import holder_for

# Max abs error of the weighted *mean* each preset must meet for |x| <= its clip bound.
PRECISION = {
    "single-key": 1e-6,
    "single-key-8k": 1e-6,
    "single-key-strict": 1e-6,
    "single-key-real-weights": 1e-5,
    "threshold-strict": 1e-9,
    "threshold-practical": 1e-9,
    "paper-default": 1e-9,
}


def _skip_compact(preset_name: str) -> None:
    if get_preset(preset_name).coefficient_encoded:
        pytest.skip("not CKKS: the compact preset's own tests are in test_compact_preset.py")


def _weights(preset_name: str) -> list[float]:
    return [0.2, 0.3, 0.5] if get_preset(preset_name).weight_mode == "real" else [1, 2, 3]


@pytest.mark.parametrize("reserialize", [False, True])
def test_weighted_mean_matches_numpy(preset_name: str, reserialize: bool) -> None:
    _skip_compact(preset_name)
    holder = holder_for(preset_name)
    preset = holder.preset
    # Server side from public parameters only (optionally after a JSON round trip).
    params = holder.params
    if reserialize:
        params = type(params).from_json(params.to_json())
    aggregator = CiphertextAggregator(params)
    total = preset.values_per_ciphertext * 2 + 123  # partial last chunk
    rng = np.random.default_rng(1)
    bound = min(preset.clip_bound, 10.0)
    xs = [rng.uniform(-bound, bound, total) for _ in range(3)]
    weights = _weights(preset_name)
    acc = EncryptedAccumulator(aggregator, ChunkPlan(total, preset.values_per_ciphertext))
    for x, w in zip(xs, weights, strict=True):
        blobs = list(holder.encrypt_vector(x))
        if reserialize:
            blobs = [bytes(bytearray(b)) for b in blobs]
        acc.add_upload(blobs, w)
    out = [acc.chunk_blob(k) for k in range(acc.plan.count)]
    mean = decrypt_chunks(holder, out, total) / sum(weights)
    exact = sum(w * x for w, x in zip(weights, xs, strict=True)) / sum(weights)
    assert np.abs(mean - exact).max() <= PRECISION[preset_name]


def test_key_blobs_round_trip(preset_name: str) -> None:
    _skip_compact(preset_name)
    holder = holder_for(preset_name)
    again = SecretKeyHolder.from_blobs(
        holder.params, holder.export_secret_key(), holder.export_public_key()
    )
    x = np.linspace(-3, 3, 1000)
    got = again.decrypt(holder.encrypt(x), aggregate=False)[:1000]
    assert np.abs(got - x).max() < 1e-5


def test_inputs_are_clipped_to_the_bound() -> None:
    holder = holder_for("single-key")
    x = np.array([100.0, -100.0, 1.5])
    got = holder.decrypt(holder.encrypt(x), aggregate=False)[:3]
    assert np.allclose(got, [16.0, -16.0, 1.5], atol=1e-6)


@pytest.mark.parametrize("name", ["single-key", "single-key-real-weights", "threshold-strict"])
@pytest.mark.parametrize("total", [0, 1, 4095, 4096, 8193, 64 * 4096 + 4097])
def test_encrypt_vector_is_encrypt_per_chunk(name: str, total: int) -> None:
    holder = holder_for(name)
    per_ct = holder.preset.values_per_ciphertext
    x = np.random.default_rng(total).uniform(-20, 20, total)  # some values get clipped
    blobs = list(holder.encrypt_vector(x))
    plan = ChunkPlan(total, per_ct)
    assert len(blobs) == plan.count
    assert [len(b) for b in blobs] == [len(holder.encrypt(c)) for c in plan.split(x)]
    for blob, chunk in zip(blobs, plan.split(x), strict=True):
        got = holder.decrypt(blob, aggregate=False)
        expected = np.zeros(per_ct)
        expected[: chunk.size] = np.clip(chunk, -holder.preset.clip_bound, holder.preset.clip_bound)
        assert np.abs(got - expected).max() < 1e-5


@pytest.mark.parametrize("bad", [np.array([1.0, np.inf]), np.ones((2, 2))])
def test_encrypt_vector_refuses_bad_input_before_any_blob(bad: np.ndarray) -> None:
    with pytest.raises(InvalidArgumentError):
        next(holder_for("single-key").encrypt_vector(bad))


def test_nan_input_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="NaN"):
        holder_for("single-key").encrypt(np.array([1.0, np.nan]))


def test_weight_sum_that_would_wrap_is_refused() -> None:
    holder = holder_for("single-key")
    aggregator = CiphertextAggregator(holder.params)
    plan = ChunkPlan(10, holder.preset.values_per_ciphertext)
    acc = EncryptedAccumulator(aggregator, plan)
    blob = holder.encrypt(np.ones(10))
    limit = holder.preset.max_weight_sum()
    with pytest.raises(ValueRangeError, match="would wrap"):
        acc.add_upload([blob], limit * 2)
    acc.add_upload([blob], 5)  # nothing was added by the refused call
    assert acc.weight_sum == 5
    got = holder.decrypt(acc.chunk_blob(0))[:10]
    assert np.allclose(got, 5.0, atol=1e-5)


def test_weight_sum_at_the_limit_still_decrypts_exactly() -> None:
    holder = holder_for("single-key")
    preset = holder.preset
    aggregator = CiphertextAggregator(holder.params)
    x = np.full(8, -preset.clip_bound)
    weight = int(preset.max_weight_sum())
    ct = aggregator.add_weighted(None, aggregator.load_upload(holder.encrypt(x)), weight)
    got = holder.decrypt(aggregator.to_blob(ct))[:8] / weight
    assert np.abs(got - x).max() < 1e-6


def test_non_integer_weight_refused_for_integer_preset() -> None:
    holder = holder_for("single-key")
    aggregator = CiphertextAggregator(holder.params)
    with pytest.raises(InvalidArgumentError, match="positive integer"):
        aggregator.check_weight(1.5)
