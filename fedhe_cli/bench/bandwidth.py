"""``fedhe bench round --bandwidth``: round time per step at emulated link speeds.

FedML-HE Fig. 14b analogue. Each client has its own emulated link: a token bucket
paces its chunk stream both ways (the upload's request stream as gRPC pulls it,
the aggregate's stream as it is read), so a client's bytes take at least
bytes / bandwidth seconds; loopback is far faster than any rate here. The key
authority and server run in this process on loopback gRPC, the 3 clients on
threads (one link each, all at once). No training: every client uploads a
seeded vector of the model's size, so the steps that depend on the link and on
the encryption are what is timed (wall seconds, mean per client):
encrypt, upload, aggregate (its commit + the publish), download, decrypt.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedhe_cli.inprocess import InProcessFederation
from fedhe_client.connection import ServerConnection
from fedhe_client.keymodes import KeyMode, key_mode
from fedhe_client.update_codec import decode_update, encode_update
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.load import parse_yaml
from fedhe_common.config.models import DPSection, JobConfig
from fedhe_common.crypto.presets import DEFAULT_PRESET, PRESETS

STEPS = ("encrypt", "upload", "aggregate", "download", "decrypt")
CLIENTS = 3
# mode -> (encryption.mode, preset); compact only where the preset exists in this build
MODES = {"plain": ("none", DEFAULT_PRESET), "he": ("ckks", DEFAULT_PRESET)}
if "single-key-compact" in PRESETS:
    MODES["compact"] = ("ckks", "single-key-compact")
_UNITS = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}


def parse_bandwidth(text: str) -> float:
    """``50MB/s``, ``1GB/s``, ``100Mbit/s`` -> bytes per second (decimal units)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMG]?)(B|bit)/s\s*", text)
    if m is None or float(m.group(1)) <= 0:
        raise ValueError(f"bandwidth {text!r}: expected a rate like 50MB/s, 1GB/s or 100Mbit/s")
    rate = float(m.group(1)) * _UNITS[m.group(2)]
    return rate / 8 if m.group(3) == "bit" else rate


class TokenBucket:
    """Paces a byte stream at ``rate`` bytes/s, with bursts of at most ``burst`` bytes."""

    def __init__(self, rate: float, burst: float = 64 * 1024) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = time.monotonic()

    def consume(self, nbytes: int) -> None:
        """Take ``nbytes``; sleep until the bucket is no longer in debt."""
        t = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (t - self.last) * self.rate)
        self.last = t
        self.tokens -= nbytes
        if self.tokens < 0:
            time.sleep(-self.tokens / self.rate)


class PacedCollector:
    """A download sink: each chunk waits for the link, then is kept for decryption."""

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket
        self.chunks: list[pb.Chunk] = []

    def header(self, header: pb.AggregateHeader) -> None:
        """A (re)started download: drop what a failed attempt received."""
        self.bucket.consume(header.ByteSize())
        self.chunks = []

    def chunk(self, chunk: pb.Chunk) -> None:
        """Pace, then keep."""
        self.bucket.consume(chunk.ByteSize())
        self.chunks.append(chunk)


@dataclass
class ClientRun:
    """One client's steps in one round."""

    index: int
    conn: ServerConnection
    mode: KeyMode
    vector: np.ndarray
    vpc: int
    seconds: dict[str, float] = field(default_factory=dict)
    result: np.ndarray | None = None

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Add the wall time of the block to step ``name``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def bandwidth_job(mode: str, n_params: int) -> str:
    """One round, 3 clients, everyone committed before the publish."""
    enc, preset = MODES[mode]
    return f"""
job: {{name: bw-{mode}, rounds: 1, seed: 0, max_values: {n_params}}}
participants: {{min_clients: {CLIENTS}, expected_clients: {CLIENTS}, round_timeout_s: 3600,
                wait_after_min_s: 3600}}
encryption: {{mode: {enc}, preset: {preset}}}
model: {{name: mlp}}
"""


def run_bandwidth_round(
    mode: str, rate: float, n_params: int, workdir: Path, seed: int = 0
) -> dict[str, object]:
    """One round of ``mode`` with every client's link at ``rate`` bytes/s."""
    names = [f"bw-{i}" for i in range(CLIENTS)]
    fed = InProcessFederation(workdir, names)
    try:
        job_yaml = bandwidth_job(mode, n_params)
        job = parse_yaml(job_yaml, JobConfig)
        job_id, _ = fed.server.submit(job_yaml)
        rng = np.random.default_rng(seed)
        clients = []
        for i, name in enumerate(names):
            cfg = fed.client_config(name, i, CLIENTS)
            conn = ServerConnection(cfg.server)
            reg = conn.register(name, job_id)
            km = key_mode(cfg, job_id, job, bytes(reg.context_fingerprint))
            vector = rng.uniform(-0.5, 0.5, n_params)
            clients.append(ClientRun(i, conn, km, vector, int(reg.values_per_chunk)))
        committed = threading.Barrier(CLIENTS + 1)
        published = threading.Event()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [
                pool.submit(_client_round, c, job_id, rate, committed, published) for c in clients
            ]
            committed.wait()
            t_pub = time.perf_counter()
            fed.server.runs[job_id].tick()
            publish_s = time.perf_counter() - t_pub
            published.set()
            for f in futures:
                f.result()
        round_s = time.perf_counter() - t0
        weights = [c.index + 1 for c in clients]
        expected = sum(w * c.vector for w, c in zip(weights, clients, strict=True)) / sum(weights)
        err = max(float(np.abs(c.result - expected).max()) for c in clients)  # type: ignore[operator]
        steps = {s: float(np.mean([c.seconds[s] for c in clients])) for s in STEPS}
        steps["aggregate"] += publish_s
        up = sum(c.conn.bytes_sent for c in clients) // CLIENTS
        down = sum(c.conn.bytes_received for c in clients) // CLIENTS
        for c in clients:
            c.conn.close()
        return {
            "mode": mode,
            "preset": MODES[mode][1] if mode != "plain" else None,
            "bandwidth_bytes_per_s": rate,
            "round_s": round(round_s, 3),
            "step_s": {k: round(v, 4) for k, v in steps.items()},
            "upload_bytes_per_client": up,
            "download_bytes_per_client": down,
            "max_abs_err_vs_fedavg": err,
        }
    finally:
        fed.close()


def _client_round(
    c: ClientRun,
    job_id: str,
    rate: float,
    committed: threading.Barrier,
    published: threading.Event,
) -> None:
    """Encrypt, upload (paced), commit; after the publish: download (paced), decrypt."""
    up_link, down_link = TokenBucket(rate), TokenBucket(rate)
    try:
        with c.step("encrypt"):
            update = encode_update(c.vector, c.mode, None, c.vpc, np.inf, DPSection())
        manifest = pb.UploadManifest(
            job_id=job_id,
            round=1,
            client_id=f"bw-{c.index}",
            layout_id="bandwidth",
            context_fingerprint=c.mode.fingerprint,
            ciphertext_chunks=update.ct_plan.count,
            plaintext_chunks=update.pt_plan.count,
            num_values=c.vector.size,
            sample_count=c.index + 1,
        )
        sent = [c.conn.bytes_sent]

        def pace(_n: int) -> None:
            up_link.consume(c.conn.bytes_sent - sent[0])
            sent[0] = c.conn.bytes_sent

        with c.step("upload"):
            upload_id = c.conn.send(manifest, update, pace)
        with c.step("aggregate"):
            c.conn.commit(upload_id)
    finally:
        committed.wait()
    published.wait()
    sink = PacedCollector(down_link)
    with c.step("download"):
        header, _ = c.conn.download(job_id, 1, sink=sink)
    with c.step("decrypt"):
        c.result = decode_update(header, sink.chunks, c.mode, None, c.vpc) / header.weight_sum


def run_bandwidth_bench(
    rates: list[tuple[str, float]], n_params: int, workdir: Path, modes: list[str] | None = None
) -> dict[str, object]:
    """Every mode at every rate; the JSON of ``fedhe bench round --bandwidth``."""
    rows = []
    for mode in modes or list(MODES):
        for label, rate in rates:
            row = run_bandwidth_round(mode, rate, n_params, workdir / f"{mode}-{label}")
            row["bandwidth"] = label
            rows.append(row)
    return {
        "clients": CLIENTS,
        "n_params": n_params,
        "steps": list(STEPS),
        "modes": list(modes or MODES),
        "compact_available": "compact" in MODES,
        "results": rows,
    }
