"""Helpers for e2e tests: job YAML, exported uploads, plaintext FedAvg."""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path

import numpy as np

from fedhe_cli.cluster import LocalCluster


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def job_yaml(
    name: str,
    rounds: int,
    min_clients: int,
    hidden: int = 64,
    wait_after_min_s: float = 1.0,
    timeout_s: float = 120.0,
    heartbeat_interval_s: float = 30.0,
) -> str:
    return f"""
version: 1
job: {{name: {name}, rounds: {rounds}, seed: 3}}
participants: {{min_clients: {min_clients}, round_timeout_s: {timeout_s},
                wait_after_min_s: {wait_after_min_s}, heartbeat_interval_s: {heartbeat_interval_s}}}
model: {{name: mlp, hidden: {hidden}}}
training: {{local_epochs: 1, lr: 0.1}}
"""


def exported_upload(cluster: LocalCluster, client: str, number: int) -> tuple[np.ndarray, int]:
    folder = cluster.workdir / "export" / client
    vector = np.load(folder / f"upload-r{number}.npy", allow_pickle=False)
    meta = json.loads((folder / f"upload-r{number}.json").read_text())
    return vector, int(meta["sample_count"])


def exported_global(cluster: LocalCluster, client: str, number: int) -> np.ndarray:
    return np.load(
        cluster.workdir / "export" / client / f"global-r{number}.npy", allow_pickle=False
    )


def plain_fedavg(
    cluster: LocalCluster, clients: list[str], number: int, clip: float = 16.0
) -> np.ndarray:
    total, weight = None, 0
    for c in clients:
        vector, n = exported_upload(cluster, c, number)
        part = n * np.clip(vector, -clip, clip)
        total = part if total is None else total + part
        weight += n
    assert total is not None
    return total / weight


def server_db(cluster: LocalCluster) -> sqlite3.Connection:
    return sqlite3.connect(cluster.workdir / "server-state" / "state.sqlite")


def secret_key_probe(cluster: LocalCluster, job_id: str) -> bytes:
    """64 bytes from the middle of the job's secret key (to search other files for)."""
    blob = (cluster.workdir / "keyauth-state" / "jobs" / job_id / "secret_key.bin").read_bytes()
    return blob[len(blob) // 2 : len(blob) // 2 + 64]


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]
