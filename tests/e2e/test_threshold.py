"""Threshold keys over gRPC: 5 parties, t = 3, two clients gone after uploading."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from fedhe_cli.cluster import ClientSpec, LocalCluster
from fedhe_common.crypto.context import CKKSContext, PublicParams
from fedhe_common.crypto.provenance import VerifiedAggregate
from fedhe_common.crypto.threshold import (
    ShareLedger,
    ShareRequest,
    ThresholdParty,
    decryption_share,
    fuse,
    ring_for,
)
from tests.e2e.faulty_client import launcher
from tests.e2e.helpers import exported_global, files_containing, plain_fedavg, server_db

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

JOB = """
version: 1
job: {name: thr, rounds: 1, seed: 2}
participants: {min_clients: 3, round_timeout_s: 120, wait_after_min_s: 1}
keys: {mode: threshold, parties: 5, threshold: 3, preset: threshold-practical}
model: {name: mlp, hidden: 64}
training: {local_epochs: 1, lr: 0.1}
"""


def test_three_of_five_decrypt_after_two_clients_leave(tmp_path: Path) -> None:
    specs = [ClientSpec(f"c{i}", i, 5) for i in range(5)]
    for spec in specs[3:]:
        spec.command = launcher("exit_after_commit", 1)
    with LocalCluster(tmp_path, specs, export=True) as cluster:
        cluster.start_keyauth()
        cluster.start_server(JOB)
        cluster.start_clients()
        for s in specs[3:]:
            assert cluster.wait(s.client_id, 240) == 137, cluster.log_tail(s.client_id)
        for s in specs[:3]:
            assert cluster.wait(s.client_id, 240) == 0, cluster.log_tail(s.client_id)
        names = [s.client_id for s in specs]
        expected = plain_fedavg(cluster, names, 1)
        for name in ("c0", "c1", "c2"):
            assert np.abs(exported_global(cluster, name, 1) - expected).max() <= 1e-5
        db = server_db(cluster)
        assert db.execute("SELECT state, contributors FROM rounds").fetchall() == [("PUBLISHED", 5)]
        active = db.execute("SELECT alpha FROM decryptions WHERE active=1").fetchall()
        assert len(active) == 3
        # The key authority never held a secret: no secret_key file, only public shares.
        keyauth_job = tmp_path / "keyauth-state" / "jobs" / "thr"
        assert not (keyauth_job / "secret_key.bin").exists()
        # No client's secret share appears in the key authority's or the server's state.
        for spec in specs:
            secret = np.load(tmp_path / "client-state" / spec.client_id / "thr" / "secret.npy")
            probe = secret.astype("<u8").tobytes()[4096:4160]
            assert files_containing(tmp_path / "keyauth-state", probe) == []
            assert files_containing(tmp_path / "server-state", probe) == []

        # Coalition: the server's aggregate plus t - 1 = 2 parties' key material.
        params = PublicParams.from_json((keyauth_job / "params.json").read_text())
        ctx = CKKSContext(params)
        ring = ring_for(params.preset)
        aggregate = (
            tmp_path / "server-state" / "jobs" / "thr" / "rounds" / "1" / "aggregate" / "1-0.bin"
        ).read_bytes()
        header = json.loads(
            (
                aggregate_dir := tmp_path
                / "server-state"
                / "jobs"
                / "thr"
                / "rounds"
                / "1"
                / "aggregate"
                / "header.json"
            ).read_text()
        )
        assert aggregate_dir.exists()
        shares = []
        for alpha in (1, 2):
            folder = tmp_path / "client-state" / f"c{alpha - 1}" / "thr"
            state = {n: np.load(folder / f"{n}.npy") for n in ("secret", "shamir")}
            party = ThresholdParty(ring, alpha, state["secret"], state["shamir"])
            ledger = ShareLedger(tmp_path / f"coalition-{alpha}.sqlite")
            # The coalition runs its own code: it skips the verification (a token it makes).
            verified = VerifiedAggregate(
                "coalition", 1, 0, ("a", "b", "c"), 5, hashlib.sha256(aggregate).digest()
            )
            request = ShareRequest("coalition", 1, 0, 5, 3, (1, 2))
            shares.append(decryption_share(party, ledger, ctx, aggregate, request, verified))
        got = fuse(ctx, ring, aggregate, shares)[:4096]
        truth = expected[:4096] * header["weight_sum"]
        assert np.abs(got - truth).max() > 1e3


def test_fewer_than_t_parties_online_aborts_cleanly(tmp_path: Path) -> None:
    job = JOB.replace("parties: 5", "parties: 4").replace(
        "round_timeout_s: 120", "round_timeout_s: 10"
    )
    specs = [ClientSpec(f"c{i}", i, 4) for i in range(4)]
    for spec in specs[2:]:
        spec.command = launcher("exit_after_commit", 1)
    with LocalCluster(tmp_path, specs, export=True) as cluster:
        cluster.start_keyauth()
        cluster.start_server(job)
        cluster.start_clients()
        for s in specs[2:]:
            assert cluster.wait(s.client_id, 240) == 137
        for s in specs[:2]:  # the job fails after three rounds without t parties
            assert cluster.wait(s.client_id, 240) == 1, cluster.log_tail(s.client_id)
            assert "failed" in cluster.log_tail(s.client_id)
        db = server_db(cluster)
        assert db.execute("SELECT state FROM jobs").fetchone() == ("FAILED",)
        states = [r[0] for r in db.execute("SELECT state FROM rounds ORDER BY round")]
        assert states == ["ABORTED", "ABORTED", "ABORTED"]
        assert db.execute("SELECT COUNT(*) FROM shares").fetchone() == (0,)
        assert not list((tmp_path / "export").rglob("global-*.npy"))
