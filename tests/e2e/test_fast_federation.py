"""``single-key-fast`` over gRPC: exact FedAvg (two-limb chunks, sums decrypted chunk by chunk)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedhe_cli.cluster import ClientSpec, LocalCluster
from tests.e2e.helpers import exported_global, plain_fedavg, server_db

# Three client processes, three rounds: over the ~20 s default budget on the shared
# 2-core machine, as the compact federation test.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

JOB = """
version: 1
job: {name: fast, rounds: 3, seed: 5}
participants: {min_clients: 3, round_timeout_s: 120, wait_after_min_s: 1}
encryption: {mode: ckks, preset: single-key-fast}
model: {name: mlp, hidden: 64}
training: {local_epochs: 1, lr: 0.1}
"""


def test_fast_preset_end_to_end(tmp_path: Path) -> None:
    specs = [ClientSpec(f"c{i}", i, 3, n) for i, n in enumerate((150, 200, 250))]
    with LocalCluster(tmp_path, specs, export=True) as cluster:
        cluster.start_keyauth()
        cluster.start_server(JOB)
        for s in specs:
            cluster.start_client(s.client_id)
        for s in specs:
            assert cluster.wait(s.client_id, 180) == 0, cluster.log_tail(s.client_id)
        names = [s.client_id for s in specs]
        for number in (1, 2, 3):
            expected = plain_fedavg(cluster, names, number)
            got = exported_global(cluster, "c0", number)
            for other in names[1:]:  # every client decrypts the same bits
                assert np.array_equal(got, exported_global(cluster, other, number))
            assert np.abs(got - expected).max() <= 1e-9, number  # exact, no deltas
        db = server_db(cluster)
        total = db.execute("SELECT num_values FROM jobs WHERE job_id='fast'").fetchone()[0]
        sizes = db.execute(
            "SELECT SUM(c.nbytes) FROM uploads u JOIN chunks c "
            "ON c.upload_id = u.upload_id WHERE u.state='COMMITTED' GROUP BY u.upload_id"
        ).fetchall()
        assert len(sizes) == 3 * 3
        padded = -(-total // 4096) * 4096
        assert all(nbytes <= 8.02 * padded for (nbytes,) in sizes)
