"""Flatten/unflatten, layout ids, chunk plans, streaming accumulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedhe_common.crypto.aggregate import CiphertextAggregator
from fedhe_common.errors import InvalidArgumentError
from fedhe_common.mlbridge.accumulate import EncryptedAccumulator, PlainAccumulator
from fedhe_common.mlbridge.chunking import ChunkPlan
from fedhe_common.mlbridge.encrypted_vector import decrypt_chunks
from fedhe_common.mlbridge.flatten import build_manifest, flatten, unflatten
from fedhe_common.mlbridge.layout import LayoutManifest
from tests.conftest import holder_for


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 10))


def test_flatten_round_trip_keeps_dtypes_and_excludes_int_buffers() -> None:
    model = _model().to(torch.float64)
    state = model.state_dict()
    vec, manifest = flatten(state)
    assert vec.size == sum(p.numel() for p in model.parameters()) + 8  # + BN running stats
    assert [e.name for e in manifest.excluded] == ["1.num_batches_tracked"]
    rebuilt = unflatten(vec * 2, manifest, state)
    for name, tensor in state.items():
        if name == "1.num_batches_tracked":
            assert torch.equal(rebuilt[name], tensor)
        else:
            assert rebuilt[name].dtype == tensor.dtype
            assert torch.allclose(rebuilt[name], tensor * 2)


def test_layout_id_is_stable_and_json_round_trips() -> None:
    m1 = build_manifest(_model().state_dict())
    m2 = build_manifest(_model().state_dict())
    assert m1.layout_id == m2.layout_id and len(m1.layout_id) == 64
    assert LayoutManifest.from_json(m1.to_json()) == m1
    other = build_manifest(nn.Linear(3, 2).state_dict())
    assert other.layout_id != m1.layout_id


def test_unflatten_refuses_wrong_length() -> None:
    state = _model().state_dict()
    _, manifest = flatten(state)
    with pytest.raises(InvalidArgumentError):
        unflatten(np.zeros(3), manifest, state)


def test_chunk_plan_is_deterministic() -> None:
    plan = ChunkPlan(10_000, 4096)
    assert plan.count == 3
    assert [plan.bounds(k) for k in range(3)] == [(0, 4096), (4096, 8192), (8192, 10_000)]
    assert np.concatenate(list(plan.split(np.arange(10_000.0)))).tolist() == list(range(10_000))
    with pytest.raises(InvalidArgumentError):
        plan.bounds(3)


def test_streaming_accumulator_equals_weighted_sum_over_many_clients() -> None:
    holder = holder_for("single-key")
    agg = CiphertextAggregator(holder.params)
    total = 5000
    plan = ChunkPlan(total, holder.preset.values_per_ciphertext)
    acc = EncryptedAccumulator(agg, plan)
    plain = PlainAccumulator(plan)
    rng = np.random.default_rng(3)
    expected = np.zeros(total)
    for client in range(6):
        x = rng.uniform(-10, 10, total)
        w = client + 1
        expected += w * x
        acc.add_upload(list(holder.encrypt_vector(x)), w)
        for k, chunk in enumerate(plan.split(x.astype(np.float32))):
            plain.add(k, chunk.tobytes(), w)
    got = decrypt_chunks(holder, [acc.chunk_blob(k) for k in range(plan.count)], total)
    assert np.abs(got - expected).max() < 1e-4
    assert np.abs(plain.sum - expected).max() < 1e-3
    assert acc.weight_sum == 21


def test_plain_accumulator_rejects_bad_payloads() -> None:
    plain = PlainAccumulator(ChunkPlan(4, 4))
    with pytest.raises(InvalidArgumentError, match="bytes"):
        plain.add(0, b"\0" * 12, 1)
    with pytest.raises(InvalidArgumentError, match="NaN"):
        plain.add(0, np.array([1, np.nan, 0, 0], dtype="<f4").tobytes(), 1)
    assert not plain.sum.any()
