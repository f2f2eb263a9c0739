"""Co-located clients of `fedhe simulate` share the cores instead of each taking them all."""

from __future__ import annotations

from pathlib import Path

import yaml

from fedhe_cli.cluster import ClientSpec, LocalCluster, available_cores, threads_per_client


def test_threads_per_client_shares_the_cores() -> None:
    assert threads_per_client(1, cores=8) == 8
    assert threads_per_client(3, cores=8) == 2
    assert threads_per_client(64, cores=2) == 1


def test_client_config_and_env_carry_the_thread_count(tmp_path: Path) -> None:
    for count in (1, 2, 5):
        specs = [ClientSpec(f"c{i}", i, count) for i in range(count)]
        cluster = LocalCluster(tmp_path / str(count), specs)
        expected = max(1, available_cores() // count)
        doc = yaml.safe_load(cluster.client_config("c0").read_text())
        assert doc["torch_threads"] == expected
        env = cluster.client_env("c0")
        assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == str(expected)
