"""Data sets, partitions, models and the client's sanity check of decrypted aggregates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedhe_client.data import load_dataset, partition
from fedhe_client.learner import LocalLearner, check_global
from fedhe_client.models import build_model
from fedhe_common.config.load import parse_yaml
from fedhe_common.config.models import DataSection, JobConfig
from fedhe_common.errors import ConfigError, InvalidArgumentError


def test_iid_partitions_are_disjoint_and_cover_the_training_set() -> None:
    section = DataSection()
    data = load_dataset(section, seed=0)
    parts = [partition(data, section, i, 3, seed=0) for i in range(3)]
    assert sum(len(y) for _, y in parts) == len(data.y_train)
    assert data.shape == (1, 8, 8) and data.classes == 10


def test_dirichlet_partition_is_skewed_and_deterministic() -> None:
    section = DataSection(partition="dirichlet", dirichlet_alpha=0.1)
    data = load_dataset(section, seed=0)
    a = partition(data, section, 0, 4, seed=0)[1]
    b = partition(data, section, 0, 4, seed=0)[1]
    assert np.array_equal(a, b)
    counts = np.bincount(a, minlength=10)
    assert counts.max() > 3 * max(1, np.median(counts))


def test_npz_dataset_and_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.random.rand(50, 6, 6).astype(np.float32), y=np.arange(50) % 5)
    data = load_dataset(DataSection(dataset="npz", path=str(path)), seed=0)
    assert data.shape == (1, 6, 6) and data.classes == 5
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((3, 2, 2)))
    with pytest.raises(ConfigError, match="need arrays"):
        load_dataset(DataSection(dataset="npz", path=str(bad)), seed=0)


def test_paper_cnn_has_the_papers_parameter_count() -> None:
    model = build_model("cnn", (1, 28, 28), 10)
    assert sum(p.numel() for p in model.parameters()) == 1_663_370
    assert build_model("lenet", (1, 8, 8), 10)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_aggregate_with_nan_or_absurd_magnitude_is_refused() -> None:
    check_global(np.ones(4), 10.0)
    with pytest.raises(InvalidArgumentError, match="NaN"):
        check_global(np.array([1.0, np.nan]), 10.0)
    with pytest.raises(InvalidArgumentError, match="exceeds"):
        check_global(np.array([1.0, 1e31]), 10.0)


def test_learner_round_trip_of_its_own_vector() -> None:
    job = parse_yaml("job: {name: t, rounds: 1}", JobConfig)
    learner = LocalLearner(job, 0, 3)
    vector, loss = learner.train_round(1)
    assert np.isfinite(loss) and vector.size == learner.manifest.total
    learner.load_vector(np.zeros_like(vector))
    assert all(not p.detach().any() for p in learner.model.parameters())
