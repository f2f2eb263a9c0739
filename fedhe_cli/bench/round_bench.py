"""``fedhe bench round``: one 3-client round over real gRPC, HE vs plaintext float32.

Key authority and server run in this process on loopback, and the clients take
their turns in the main thread, so ``time.process_time()`` around each phase is
that phase's whole CPU cost on this machine (client and server side of each
RPC). Client phases are reported per client (mean); ``aggregate`` is the
server's total for the round (every commit plus the publish).
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from fedhe_cli.bench.cputime import PhaseTimer
from fedhe_cli.inprocess import InProcessFederation
from fedhe_client.connection import ServerConnection
from fedhe_client.keymodes import KeyMode, Plain, SingleKey, fetch_secret_key
from fedhe_client.learner import LocalLearner
from fedhe_client.update_codec import decode_update, encode_update
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.load import parse_yaml
from fedhe_common.config.models import JobConfig

PHASES = ("train", "encrypt", "upload", "aggregate", "download", "decrypt")
CLIENTS = 3


def bench_job(mode: str, model: str, dataset: str, epochs: int) -> str:
    """The job YAML of one benchmark round."""
    return f"""
job: {{name: bench-{mode}, rounds: 1, seed: 0}}
participants: {{min_clients: {CLIENTS}, expected_clients: {CLIENTS}, round_timeout_s: 3600,
                wait_after_min_s: 3600}}
encryption: {{mode: {"ckks" if mode == "he" else "none"}, preset: single-key}}
model: {{name: {model}}}
data: {{dataset: {dataset}}}
training: {{local_epochs: {epochs}, lr: 0.05}}
"""


def run_mode(
    mode: str, model: str, dataset: str, epochs: int, workdir: Path
) -> tuple[dict[str, object], np.ndarray, int]:
    """One round in ``mode`` ("he" or "plain"); returns (metrics, global model, n_params)."""
    names = [f"bench-{i}" for i in range(CLIENTS)]
    fed = InProcessFederation(workdir, names)
    timer = PhaseTimer()
    try:
        job_yaml = bench_job(mode, model, dataset, epochs)
        job = parse_yaml(job_yaml, JobConfig)
        job_id, _ = fed.server.submit(job_yaml)
        conns: list[ServerConnection] = []
        learners: list[LocalLearner] = []
        modes: list[KeyMode] = []
        vpc = 0
        for i, name in enumerate(names):
            cfg = fed.client_config(name, i, CLIENTS)
            conn = ServerConnection(cfg.server)
            vpc = conn.register(name, job_id).values_per_chunk
            conns.append(conn)
            modes.append(SingleKey(fetch_secret_key(cfg, job_id)) if mode == "he" else Plain())
            learners.append(LocalLearner(job, i, CLIENTS, torch_threads=None))
        upload_ids = []
        for conn, learner, key_mode, name in zip(conns, learners, modes, names, strict=True):
            with timer.phase("train"):
                vector, _ = learner.train_round(1)
            with timer.phase("encrypt"):
                update = encode_update(vector, key_mode, None, vpc, np.inf, job.dp)
            manifest = pb.UploadManifest(
                job_id=job_id,
                round=1,
                client_id=name,
                layout_id=learner.manifest.layout_id,
                context_fingerprint=key_mode.fingerprint,
                ciphertext_chunks=update.ct_plan.count,
                plaintext_chunks=update.pt_plan.count,
                num_values=vector.size,
                sample_count=learner.sample_count,
            )
            with timer.phase("upload"):
                upload_ids.append(conn.send(manifest, update))
        with timer.phase("aggregate"):
            for conn, upload_id in zip(conns, upload_ids, strict=True):
                conn.commit(upload_id)
            fed.server.runs[job_id].tick()
        globals_ = []
        for conn, key_mode in zip(conns, modes, strict=True):
            with timer.phase("download"):
                header, chunks = conn.download(job_id, 1)
            with timer.phase("decrypt"):
                vector = decode_update(header, chunks, key_mode, None, vpc) / header.weight_sum
            globals_.append(vector)
        for g in globals_[1:]:
            assert np.array_equal(g, globals_[0])
        cpu: dict[str, float] = defaultdict(float)
        for phase in PHASES:
            share = 1 if phase == "aggregate" else CLIENTS
            cpu[phase] = timer.cpu_s[phase] / share
        metrics = {
            "upload_bytes_per_client": sum(c.bytes_sent for c in conns) // CLIENTS,
            "download_bytes_per_client": sum(c.bytes_received for c in conns) // CLIENTS,
            "cpu_s": dict(cpu),
        }
        for conn in conns:
            conn.close()
        return metrics, globals_[0], int(globals_[0].size)
    finally:
        fed.close()


def warm_up(model: str, dataset: str) -> None:
    """Train once untimed so neither mode pays torch's first-call costs."""
    job = parse_yaml(bench_job("plain", model, dataset, 1), JobConfig)
    LocalLearner(job, 0, CLIENTS * 4).train_round(0)


def run_round_bench(
    model: str = "cnn", dataset: str = "digits28", epochs: int = 1
) -> dict[str, object]:
    """Both modes in one process; the JSON contract of ``fedhe bench round``."""
    warm_up(model, dataset)
    with tempfile.TemporaryDirectory(prefix="fedhe-bench-") as tmp:
        he, he_global, n_params = run_mode("he", model, dataset, epochs, Path(tmp) / "he")
        plain, plain_global, _ = run_mode("plain", model, dataset, epochs, Path(tmp) / "plain")
    he["max_abs_diff_vs_plain"] = float(np.abs(he_global - plain_global).max())
    return {
        "n_params": n_params,
        "clients": CLIENTS,
        "model": model,
        "dataset": dataset,
        "modes": {"he": he, "plain": plain},
    }
