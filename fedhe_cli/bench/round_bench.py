"""``fedhe bench round``: one 3-client round over real gRPC, HE vs plaintext float32.

Memory (issue 12): :func:`run_process_round` runs the key authority, the server and
3 clients as separate processes on one round of any zoo model and reports each
process's peak RSS (``VmHWM``), the bytes per client and HE = plaintext FedAvg.
The CPU phases below need one process:

Key authority and server run in this process on loopback, and the clients take
their turns in the main thread, so ``time.process_time()`` around each phase is
that phase's whole CPU cost on this machine (client and server side of each
RPC). Client phases are reported per client (mean); ``aggregate`` is the
server's total for the round (every commit plus the publish).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from fedhe_cli.bench.cputime import PhaseTimer
from fedhe_cli.bench.round_client import peak_rss_mb
from fedhe_cli.cluster import ClientSpec, LocalCluster
from fedhe_cli.inprocess import InProcessFederation
from fedhe_client.connection import ServerConnection
from fedhe_client.keymodes import KeyMode, key_mode
from fedhe_client.learner import LocalLearner
from fedhe_client.update_codec import decode_update, encode_update
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.load import parse_yaml
from fedhe_common.config.models import JobConfig
from fedhe_common.crypto.presets import DEFAULT_PRESET

PHASES = ("train", "encrypt", "upload", "aggregate", "download", "decrypt")
TRAINED_MODELS = ("linear", "mlp", "lenet", "cnn")  # the CPU phases train on digits
CLIENTS = 3


def bench_job(mode: str, model: str, dataset: str, epochs: int) -> str:
    """The job YAML of one benchmark round."""
    return f"""
job: {{name: bench-{mode}, rounds: 1, seed: 0}}
participants: {{min_clients: {CLIENTS}, expected_clients: {CLIENTS}, round_timeout_s: 3600,
                wait_after_min_s: 3600}}
encryption: {{mode: {"ckks" if mode == "he" else "none"}, preset: {DEFAULT_PRESET}}}
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
            reg = conn.register(name, job_id)
            vpc = reg.values_per_chunk
            conns.append(conn)
            modes.append(key_mode(cfg, job_id, job, bytes(reg.context_fingerprint)))
            learners.append(LocalLearner(job, i, CLIENTS, torch_threads=None))
        upload_ids = []
        for conn, learner, mode_of_client, name in zip(conns, learners, modes, names, strict=True):
            with timer.phase("train"):
                vector, _ = learner.train_round(1)
            with timer.phase("encrypt"):
                update = encode_update(vector, mode_of_client, None, vpc, np.inf, job.dp)
            manifest = pb.UploadManifest(
                job_id=job_id,
                round=1,
                client_id=name,
                layout_id=learner.manifest.layout_id,
                context_fingerprint=mode_of_client.fingerprint,
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
        for conn, client_mode in zip(conns, modes, strict=True):
            with timer.phase("download"):
                header, chunks = conn.download(job_id, 1)
            with timer.phase("decrypt"):
                vector = decode_update(header, chunks, client_mode, None, vpc) / header.weight_sum
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
    model: str = "cnn",
    dataset: str = "digits28",
    epochs: int = 1,
    memory_only: bool = False,
    peft: str | None = None,
) -> dict[str, object]:
    """The JSON contract of ``fedhe bench round``.

    CPU phases (both modes in one process, trained on ``dataset``) for the small
    digit models unless ``memory_only``; then always one HE round of ``model`` with
    keyauth, server and clients as processes, for every process's peak RSS, the
    bytes and HE = plaintext FedAvg (issue 12)."""
    result: dict[str, object] = {"clients": CLIENTS, "model": model, "peft": peft}
    with tempfile.TemporaryDirectory(prefix="fedhe-bench-") as tmp:
        if not memory_only and peft is None and model in TRAINED_MODELS:
            warm_up(model, dataset)
            he, he_global, n_params = run_mode("he", model, dataset, epochs, Path(tmp) / "he")
            plain, plain_global, _ = run_mode("plain", model, dataset, epochs, Path(tmp) / "plain")
            he["max_abs_diff_vs_plain"] = float(np.abs(he_global - plain_global).max())
            result.update(n_params=n_params, dataset=dataset, modes={"he": he, "plain": plain})
        else:
            result["modes"] = {}
        memory = run_process_round(model, Path(tmp) / "memory", peft=peft)
    result.setdefault("n_params", memory["n_values"])
    result["peak_rss_mb"] = memory.pop("peak_rss_mb")
    result["memory_round"] = memory
    return result


# ------------------------------------------------------------ per-process memory (issue 12)
def process_job(model: str, encrypted: bool) -> str:
    """The job of the memory round: 3 clients, one round, room for any zoo model."""
    return f"""
job: {{name: bench-mem-{model}, rounds: 1, seed: 0, max_values: 2000000000}}
participants: {{min_clients: {CLIENTS}, expected_clients: {CLIENTS}, round_timeout_s: 7200,
                wait_after_min_s: 7200, max_sample_count: 100}}
encryption: {{mode: {"ckks" if encrypted else "none"}, preset: {DEFAULT_PRESET}}}
model: {{name: {model}}}
"""


def _reap(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Wait for one child (polling, so a long round needs no thread)."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {proc.args!r} still running after {timeout_s}s")
        time.sleep(0.2)


def run_process_round(
    model: str,
    workdir: Path,
    encrypted: bool = True,
    timeout_s: float = 7200,
    peft: str | None = None,
) -> dict[str, object]:
    """Key authority, server and 3 clients as processes; one round of ``model``.

    Peak RSS is each process's own high-water mark (``VmHWM`` in ``/proc/<pid>/status``):
    clients report theirs when done, the daemons' is read just before they are stopped."""
    out = workdir / "out"
    out.mkdir(parents=True, exist_ok=True)
    names = [f"mem-{i}" for i in range(CLIENTS)]
    prog = [sys.executable, "-m", "fedhe_cli.bench.round_client", "--model", model]
    flags = ([] if encrypted else ["--plain"]) + (["--peft", peft] if peft else [])
    specs = [
        ClientSpec(name, i, CLIENTS, command=[*prog, "--out", str(out), "--index", str(i), *flags])
        for i, name in enumerate(names)
    ]
    cluster = LocalCluster(workdir, specs, torch_threads=1)
    rss: dict[str, float] = {}
    try:
        cluster.start_keyauth()
        cluster.start_server(process_job(model, encrypted))
        t0 = time.perf_counter()
        cluster.start_clients()
        for name in names:
            _reap(cluster.procs[name], timeout_s)
            if cluster.procs[name].returncode != 0:
                raise RuntimeError(f"{name} failed:\n{cluster.log_tail(name)}")
        round_s = time.perf_counter() - t0
        for name in ("server", "keyauth"):
            rss[name] = peak_rss_mb(cluster.procs[name].pid)
            cluster.procs[name].send_signal(signal.SIGTERM)
            _reap(cluster.procs[name], 60)
    finally:
        cluster.stop()
    reports = [json.loads((out / f"client-{i}.json").read_text()) for i in range(CLIENTS)]
    n = int(reports[0]["num_values"])
    plain_bytes = 4 * n
    diff = _fedavg_diff(out, [int(r["weight"]) for r in reports])
    for path in out.glob("*.npy"):
        path.unlink()
    upload = max(int(r["upload_bytes"]) for r in reports)
    download = max(int(r["download_bytes"]) for r in reports)
    clients = [float(r["peak_rss_mb"]) for r in reports]
    client_max = max(clients)
    fp32_mb = plain_bytes / 2**20
    return {
        "n_values": n,
        "encrypted": encrypted,
        "round_s": round(round_s, 1),
        "peak_rss_mb": {
            "server": round(rss["server"], 1),
            "client_max": round(client_max, 1),
            "keyauth": round(rss["keyauth"], 1),
            "clients": [round(c, 1) for c in clients],
        },
        "upload_bytes_per_client": upload,
        "download_bytes_per_client": download,
        "upload_x_plaintext": round(upload / plain_bytes, 4),
        "download_x_plaintext": round(download / plain_bytes, 4),
        "max_abs_diff_vs_plain_fedavg": diff,
        "clients": reports,
        "targets": {
            "server_peak_rss_mb_max": 1536,
            "client_peak_rss_mb_max": round(4 * fp32_mb + 1536, 1),
            "upload_x_max": 2.05,
            "download_x_max": 4.05,
            "max_abs_diff_max": 1e-6,
            "met": bool(
                rss["server"] <= 1536
                and client_max <= 4 * fp32_mb + 1536
                and upload / plain_bytes <= 2.05
                and download / plain_bytes <= 4.05
                and diff <= 1e-6
            ),
        },
    }


def _fedavg_diff(out: Path, weights: list[int], block: int = 1 << 22) -> float:
    """Max |global - plaintext FedAvg| over every client's global, read block by block."""
    vecs = [np.load(out / f"vec-{i}.npy", mmap_mode="r") for i in range(CLIENTS)]
    globals_ = [np.load(out / f"global-{i}.npy", mmap_mode="r") for i in range(CLIENTS)]
    worst = 0.0
    for start in range(0, vecs[0].size, block):
        stop = start + block
        avg = np.zeros(min(stop, vecs[0].size) - start)
        for w, v in zip(weights, vecs, strict=True):
            avg += w * np.asarray(v[start:stop])
        avg /= sum(weights)
        for g in globals_:
            worst = max(worst, float(np.abs(np.asarray(g[start:stop]) - avg).max()))
    return worst
