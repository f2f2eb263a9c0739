"""Pipelined upload and streamed download (issue 12, item 2), over real gRPC.

The client encrypts on a producer thread into a spool file while it uploads; an
interrupted upload resumes with byte-identical chunks read back from the spool; the
aggregate is decrypted chunk by chunk as it streams and equals plaintext FedAvg.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from fedhe_cli.bench.round_bench import bench_job
from fedhe_cli.inprocess import InProcessFederation
from fedhe_client.connection import ServerConnection
from fedhe_client.keymodes import key_mode
from fedhe_client.spool import SpooledChunks
from fedhe_client.update_codec import StreamingDecoder, decode_update, encode_update
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.load import parse_yaml
from fedhe_common.config.models import JobConfig
from fedhe_common.errors import FedHEError


class Interrupt(Exception):
    """Stands in for a connection lost mid-upload."""


def test_spool_is_bounded_and_rereads_identical_bytes(tmp_path: Path) -> None:
    made: list[int] = []

    def blobs():  # type: ignore[no-untyped-def]
        for k in range(10):
            made.append(k)
            yield bytes([k]) * (100 + k)

    spool = SpooledChunks(blobs(), 10, tmp_path, depth=2)
    assert spool[0] == b"\0" * 100
    assert len(made) <= 3  # the producer stays within `depth` chunks of the reader
    assert [spool[k] for k in range(10)] == [bytes([k]) * (100 + k) for k in range(10)]
    assert spool[4] == spool[4] and spool.nbytes == sum(100 + k for k in range(10))
    spool.close()


def test_a_failing_producer_surfaces_as_a_typed_error(tmp_path: Path) -> None:
    def blobs():  # type: ignore[no-untyped-def]
        yield b"x"
        raise ValueError("boom")

    spool = SpooledChunks(blobs(), 3, tmp_path)
    assert spool[0] == b"x"
    with pytest.raises(FedHEError, match="boom"):
        spool[1]
    spool.close()


def test_pipelined_resumed_upload_and_streamed_download_equal_fedavg(tmp_path: Path) -> None:
    names = ["c0", "c1"]
    fed = InProcessFederation(tmp_path, names)
    try:
        job_yaml = bench_job("he", "mlp", "digits", 1).replace(
            "min_clients: 3, expected_clients: 3", "min_clients: 2, expected_clients: 2"
        )
        job = parse_yaml(job_yaml, JobConfig)
        job_id, _ = fed.server.submit(job_yaml)
        rng = np.random.default_rng(0)
        total = 4096 * 5 + 123
        vectors = [rng.uniform(-1, 1, total) for _ in names]
        weights = [3, 5]
        conns, modes = [], []
        for i, name in enumerate(names):
            config = fed.client_config(name, i, 2)
            conn = ServerConnection(config.server)
            reg = conn.register(name, job_id)
            vpc = reg.values_per_chunk
            mode = key_mode(config, job_id, job, bytes(reg.context_fingerprint))
            assert mode.name == job.preset_name  # the default preset
            update = encode_update(vectors[i], mode, None, vpc, np.inf, job.dp, pipelined=True)
            assert isinstance(update.ciphertext, SpooledChunks)
            manifest = pb.UploadManifest(
                job_id=job_id,
                round=1,
                client_id=name,
                layout_id="L" * 64,
                context_fingerprint=mode.fingerprint,
                ciphertext_chunks=update.ct_plan.count,
                plaintext_chunks=update.pt_plan.count,
                num_values=total,
                sample_count=weights[i],
            )
            if i == 0:  # lose the connection after 2 chunks, then resume

                def cut(sent: int) -> None:
                    if sent >= 2:
                        raise Interrupt

                with pytest.raises(Exception):  # noqa: B017 - gRPC wraps the iterator's error
                    conn.send(manifest, update, on_chunk=cut)
                conn.chunks_sent = 0
            conn.upload(manifest, update)
            run = fed.server.runs[job_id]
            upload_id = run.db.committed_upload_of(job_id, 1, name)
            assert upload_id is not None
            stored = run.db.chunk_hashes(upload_id)
            for k in range(update.ct_plan.count):  # what was kept is what the spool holds
                want = hashlib.sha256(update.ciphertext[k]).digest()
                assert stored[(pb.STREAM_KIND_CIPHERTEXT, k)] == want
            update.close()
            conns.append(conn)
            modes.append(mode)
        fed.server.runs[job_id].tick()
        expected = (weights[0] * vectors[0] + weights[1] * vectors[1]) / sum(weights)
        decoder = StreamingDecoder(modes[0], None, vpc)
        header, kept = conns[0].download(job_id, 1, sink=decoder)
        assert kept == []  # nothing held back: decoded as it streamed
        streamed = decoder.result() / header.weight_sum
        header2, chunks = conns[1].download(job_id, 1)
        listed = decode_update(header2, chunks, modes[1], None, vpc) / header2.weight_sum
        assert np.array_equal(streamed, listed)
        assert np.abs(streamed - expected).max() < 1e-6
        for conn in conns:
            conn.close()
    finally:
        fed.close()


def test_commit_deadline_grows_with_the_upload() -> None:
    """The server adds every chunk inside CommitUpload: BERT-base's 26,730 chunks get minutes."""
    from fedhe_client.connection import UNARY_TIMEOUT_S, commit_timeout

    assert commit_timeout(0) == UNARY_TIMEOUT_S
    assert commit_timeout(26_730) > 500
