"""Encryption masks: exact sizes, stable ties, layers, ids, split/merge."""

from __future__ import annotations

import math

import numpy as np
import pytest
from torch import nn

from fedhe_common.errors import InvalidArgumentError
from fedhe_common.mlbridge.flatten import build_manifest
from fedhe_common.mlbridge.masks import EncryptionMask, top_p_mask

MANIFEST = build_manifest(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)).state_dict())


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.3, 0.75, 1.0])
def test_top_p_has_exactly_ceil_ratio_entries(ratio: float) -> None:
    scores = np.random.default_rng(0).random(MANIFEST.total)
    mask = top_p_mask(scores, ratio, MANIFEST)
    assert mask.count == math.ceil(ratio * MANIFEST.total)
    if mask.count:
        assert scores[mask.indices].min() >= np.delete(scores, mask.indices).max(initial=-1)


def test_ties_break_by_index_and_ids_are_deterministic() -> None:
    scores = np.ones(MANIFEST.total)
    a = top_p_mask(scores, 0.2, MANIFEST)
    assert a.indices.tolist() == list(range(a.count))
    assert a.mask_id == top_p_mask(scores.copy(), 0.2, MANIFEST).mask_id
    assert a.mask_id != top_p_mask(scores, 0.3, MANIFEST).mask_id


def test_first_last_layers_are_added() -> None:
    mask = top_p_mask(np.zeros(MANIFEST.total), 0.0, MANIFEST, include_first_last=True)
    assert mask.count == MANIFEST.total  # two layers: first and last are everything
    only_second = top_p_mask(np.zeros(MANIFEST.total), 0.0, MANIFEST, include_layers=["1"])
    assert only_second.count == 3 * 2 + 2


def test_split_merge_and_bytes_round_trip() -> None:
    mask = top_p_mask(np.arange(MANIFEST.total, dtype=float), 0.4, MANIFEST)
    v = np.random.default_rng(1).random(MANIFEST.total)
    masked, rest = mask.split(v)
    assert masked.size == mask.count and rest.size == MANIFEST.total - mask.count
    assert np.array_equal(mask.merge(masked, rest), v)
    again = EncryptionMask.from_bytes(mask.to_bytes())
    assert again.mask_id == mask.mask_id


def test_malformed_masks_are_refused() -> None:
    with pytest.raises(InvalidArgumentError):
        EncryptionMask(5, np.array([3, 1]))
    with pytest.raises(InvalidArgumentError):
        EncryptionMask(5, np.array([1, 5]))
    with pytest.raises(InvalidArgumentError):
        EncryptionMask.from_bytes(b"\0" * 7)
    with pytest.raises(InvalidArgumentError):
        top_p_mask(np.zeros(3), 0.5, MANIFEST)
