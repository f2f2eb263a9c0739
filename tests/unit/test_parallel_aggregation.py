"""Chunk-range aggregation workers (issue 15, item 4b): exact, and atomic per client.

A real in-process server (loopback gRPC, SQLite, SEAL) runs a job with
``aggregation.workers: 2``; its published aggregate must be byte-identical to one
serial sum of the same uploads, and an upload that fails in one worker's range
must count in no chunk at all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedhe_cli.inprocess import InProcessFederation
from fedhe_client.connection import ServerConnection
from fedhe_client.keymodes import SingleKey, fetch_secret_key
from fedhe_client.update_codec import EncodedUpdate, encode_update
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.models import DPSection
from fedhe_common.crypto.aggregate import CiphertextAggregator
from fedhe_common.errors import FedHEError
from fedhe_common.mlbridge.accumulate import EncryptedAccumulator
from fedhe_server.parallel_aggregate import split_ranges

CT = pb.STREAM_KIND_CIPHERTEXT
NAMES = ["par-0", "par-1", "par-2"]


def job_yaml(workers: int, expected: int) -> str:
    return f"""
job: {{name: par-{workers}, rounds: 1, seed: 0}}
participants: {{min_clients: 2, expected_clients: {expected}, round_timeout_s: 600,
                wait_after_min_s: 600}}
encryption: {{mode: ckks, preset: single-key}}
model: {{name: mlp}}
aggregation: {{workers: {workers}, backend: local}}
"""


class Client:
    """One client of the test federation with its encrypted update."""

    def __init__(self, fed: InProcessFederation, job_id: str, i: int, values: np.ndarray) -> None:
        cfg = fed.client_config(NAMES[i], i, len(NAMES))
        self.conn = ServerConnection(cfg.server)
        vpc = self.conn.register(NAMES[i], job_id).values_per_chunk
        self.mode = SingleKey(fetch_secret_key(cfg, job_id))
        self.update: EncodedUpdate = encode_update(
            values, self.mode, None, vpc, np.inf, DPSection()
        )
        self.weight = i + 1
        manifest = pb.UploadManifest(
            job_id=job_id,
            round=1,
            client_id=NAMES[i],
            layout_id="par",
            context_fingerprint=self.mode.fingerprint,
            ciphertext_chunks=self.update.ct_plan.count,
            plaintext_chunks=0,
            num_values=values.size,
            sample_count=self.weight,
        )
        self.upload_id = self.conn.send(manifest, self.update)


def serial_sum(fed: InProcessFederation, job_id: str, clients: list[Client]) -> list[bytes]:
    """The same uploads summed in one accumulator, in this process."""
    run = fed.server.runs[job_id]
    agg = CiphertextAggregator(run.mode.ctx.params)  # type: ignore[attr-defined]
    acc = EncryptedAccumulator(agg, clients[0].update.ct_plan)
    for c in clients:
        acc.add_upload(list(c.update.ciphertext), c.weight)
    return [acc.chunk_blob(k) for k in range(acc.plan.count)]


def published(fed: InProcessFederation, job_id: str) -> tuple[list[bytes], dict]:
    run = fed.server.runs[job_id]
    run.tick()
    header = run.files.read_aggregate_header(1)
    assert header is not None, "round 1 was not published"
    count = int(header["ciphertext_chunks"])  # type: ignore[call-overload]
    return [run.files.aggregate_chunk_path(1, CT, k).read_bytes() for k in range(count)], header


def test_split_ranges_cover_every_chunk_once() -> None:
    for count in (1, 2, 5, 17):
        for parts in (1, 2, 3, 8):
            ranges = split_ranges(count, parts)
            assert [k for r in ranges for k in r] == list(range(count))
            assert len(ranges) == min(count, parts)


def test_two_workers_equal_one_serial_sum_exactly(tmp_path: Path) -> None:
    fed = InProcessFederation(tmp_path, NAMES)
    try:
        job_id, _ = fed.server.submit(job_yaml(2, 3))
        rng = np.random.default_rng(3)
        vpc = fed.server.runs[job_id].values_per_chunk
        n = 4 * vpc + 17  # 5 chunks: ranges [0, 3) and [3, 5)
        clients = [Client(fed, job_id, i, rng.uniform(-1, 1, n)) for i in range(3)]
        for c in clients:
            c.conn.commit(c.upload_id)
        got, header = published(fed, job_id)
        assert fed.server.runs[job_id].adder() is not None  # the worker path ran
        assert got == serial_sum(fed, job_id, clients)
        assert header["contributors"] == 3 and header["weight_sum"] == 6
    finally:
        fed.close()


def test_a_client_failing_in_one_range_counts_in_no_chunk(tmp_path: Path) -> None:
    fed = InProcessFederation(tmp_path, NAMES)
    try:
        job_id, _ = fed.server.submit(job_yaml(2, 2))
        rng = np.random.default_rng(4)
        run = fed.server.runs[job_id]
        n = 4 * run.values_per_chunk + 17
        clients = [Client(fed, job_id, i, rng.uniform(-1, 1, n)) for i in range(3)]
        clients[0].conn.commit(clients[0].upload_id)
        # The staged last chunk of client 2 (second worker's range) is damaged on disk:
        # the first range of its upload is added, the second fails.
        bad = run.files.chunk_path(1, clients[2].upload_id, CT, 4)
        bad.write_bytes(bad.read_bytes()[:100])
        with pytest.raises(FedHEError):
            clients[2].conn.commit(clients[2].upload_id)
        clients[1].conn.commit(clients[1].upload_id)
        got, header = published(fed, job_id)
        assert got == serial_sum(fed, job_id, clients[:2])
        assert header["contributors"] == 2 and header["weight_sum"] == 3
        assert header["clients"] == NAMES[:2]
    finally:
        fed.close()
