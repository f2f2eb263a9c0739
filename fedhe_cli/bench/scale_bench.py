"""``fedhe bench scale``: one round with many lightweight clients (FedML-HE Fig. 14a analogue).

Per client count a fresh key authority and server run as processes on loopback
(:class:`~fedhe_cli.cluster.LocalCluster`); this process hosts every client on a
thread pool, each with its own identity, token and channel, over real gRPC. There
is no torch and no training: a few distinct updates are encrypted once and every
client uploads one of them under its own manifest (so its own upload id) and
sample count. Server CPU and peak RSS are read from the server process
(``/proc/<pid>/stat`` and ``VmHWM``); a fresh server per count makes the peak
RSS that count's own. One client decrypts the published aggregate and checks it
against the weighted mean of what was uploaded, the others only stream it.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fedhe_cli.bench.round_client import peak_rss_mb
from fedhe_cli.cluster import ClientSpec, LocalCluster
from fedhe_client.connection import DEFAULT_MAX_MESSAGE, ServerConnection
from fedhe_client.keymodes import key_mode
from fedhe_client.update_codec import EncodedUpdate, StreamingDecoder, encode_update
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2_grpc as pb_grpc
from fedhe_common.config.load import load_yaml, parse_yaml
from fedhe_common.config.models import ClientConfig, DPSection, JobConfig, PeerSection
from fedhe_common.crypto.presets import DEFAULT_PRESET
from fedhe_common.rpc.transport import KEEPALIVE_OPTIONS, message_options

DISTINCT_UPDATES = 4
LAYOUT_ID = "bench-scale"
PUBLISH_WAIT_S = 1800.0
MAX_WEIGHT = 3  # client i uploads with sample count 1 + i % MAX_WEIGHT


@dataclass
class ScaleResult:
    """One client count's row of the JSON contract."""

    clients: int
    n_params: int
    round_wall_s: float
    server_cpu_s: float
    server_peak_rss_mb: float
    upload_bytes_per_client: int
    download_bytes_per_client: int
    upload_s: float
    server_peak_rss_upload_mb: float
    publish_s: float
    download_s: float
    max_abs_err: float


def scale_job(clients: int, n_params: int, encrypted: bool, preset: str, workers: int = 1) -> str:
    """The job of one scale round: every client must commit, one round."""
    mode = "ckks" if encrypted else "none"
    return f"""
aggregation: {{workers: {workers}}}
job: {{name: bench-scale-{clients}, rounds: 1, seed: 0, max_values: {max(n_params, 1)}}}
participants: {{min_clients: {clients}, expected_clients: {clients}, round_timeout_s: 7200,
                wait_after_min_s: 7200, max_sample_count: {MAX_WEIGHT}}}
encryption: {{mode: {mode}, preset: {preset}}}
model: {{name: mlp}}
"""


def _descendants(pid: int) -> list[int]:
    """``pid`` and its living descendants (``/proc/<pid>/task/<tid>/children``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return out


def server_cpu_s(pid: int) -> float:
    """User + system CPU seconds so far of process ``pid`` and its living descendants
    (aggregation workers), from ``/proc/<pid>/stat``."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in _descendants(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / ticks


class SimConnection(ServerConnection):
    """A client's connection on its own TCP connection, as separate hosts would have
    (gRPC would otherwise share one subchannel between equal channels in a process)."""

    def __init__(self, peer: PeerSection) -> None:
        super().__init__(peer)
        self.channel.close()
        options = [
            *message_options(DEFAULT_MAX_MESSAGE),
            *KEEPALIVE_OPTIONS[:2],
            ("grpc.use_local_subchannel_pool", 1),
        ]
        self.channel = grpc.insecure_channel(peer.address, options=options)
        self.stub = pb_grpc.AggregationServiceStub(self.channel)


class DiscardSink:
    """Takes an aggregate as it streams and keeps nothing (the lightweight clients)."""

    def header(self, header: pb.AggregateHeader) -> None:
        """Nothing to set up."""

    def chunk(self, chunk: pb.Chunk) -> None:
        """Drop the chunk (its sha256 was checked by the connection)."""


@dataclass
class SimClient:
    """One simulated client: its identity, connection and the update it sends."""

    name: str
    index: int
    conn: ServerConnection
    update: EncodedUpdate
    weight: int


def _manifest(c: SimClient, job_id: str, fingerprint: bytes, n_params: int) -> pb.UploadManifest:
    return pb.UploadManifest(
        job_id=job_id,
        round=1,
        client_id=c.name,
        layout_id=LAYOUT_ID,
        context_fingerprint=fingerprint,
        ciphertext_chunks=c.update.ct_plan.count,
        plaintext_chunks=c.update.pt_plan.count,
        num_values=n_params,
        sample_count=c.weight,
    )


def _parallel(fn: Callable[[SimClient], object], clients: list[SimClient], threads: int) -> None:
    """Run ``fn`` for every client on ``threads`` threads; re-raise the first failure."""
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="sim") as pool:
        for future in [pool.submit(fn, c) for c in clients]:
            future.result()


def _wait_published(conn: ServerConnection, job_id: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(
        r.round == 1 and r.state == pb.ROUND_STATE_PUBLISHED
        for r in conn.job_status(job_id).history
    ):
        if time.monotonic() > deadline:
            raise TimeoutError(f"round 1 of {job_id} was not published within {timeout_s}s")
        time.sleep(0.05)


def run_scale_round(
    clients: int,
    n_params: int,
    workdir: Path,
    encrypted: bool = True,
    preset: str = DEFAULT_PRESET,
    threads: int | None = None,
    distinct: int = DISTINCT_UPDATES,
    seed: int = 0,
    own_connections: bool = True,
    workers: int = 1,
) -> ScaleResult:
    """One round of ``clients`` simulated clients against a fresh server process."""
    names = [f"sim-{i}" for i in range(clients)]
    cluster = LocalCluster(workdir, [ClientSpec(n, i, clients) for i, n in enumerate(names)])
    sims: list[SimClient] = []
    try:
        cluster.start_keyauth()
        job_yaml = scale_job(clients, n_params, encrypted, preset, workers)
        cluster.start_server(job_yaml)
        server_pid = cluster.procs["server"].pid
        configs = [load_yaml(cluster.client_config(n), ClientConfig) for n in names]
        kind = SimConnection if own_connections else ServerConnection
        conns = [kind(cfg.server) for cfg in configs]
        with ThreadPoolExecutor(max(1, threads or min(clients, 32))) as pool:
            regs = list(pool.map(lambda i: conns[i].register(names[i], None), range(clients)))
        job_id, vpc = regs[0].job_id, regs[0].values_per_chunk
        job = parse_yaml(job_yaml, JobConfig)
        mode = key_mode(configs[0], job_id, job, bytes(regs[0].context_fingerprint))
        rng = np.random.default_rng(seed)
        vectors = [rng.uniform(-1, 1, n_params) for _ in range(min(distinct, clients))]
        # Encrypted once each and shared by the clients; coefficient-preset uploads carry
        # a seed id the server accepts once, so there every client encrypts its own.
        own = mode.name in ("single-key-compact", "single-key-fast")
        updates = [
            encode_update(vectors[i % len(vectors)], mode, None, vpc, np.inf, DPSection())
            for i in range(clients if own else len(vectors))
        ]
        sims = [
            SimClient(n, i, conns[i], updates[i % len(updates)], 1 + i % MAX_WEIGHT)
            for i, n in enumerate(names)
        ]
        expected = np.zeros(n_params)
        for c in sims:
            expected += c.weight * vectors[c.index % len(vectors)]
        expected /= sum(c.weight for c in sims)
        fingerprint = mode.fingerprint
        pool_threads = threads or clients  # every client in flight at once

        def upload(c: SimClient) -> None:
            c.conn.upload(_manifest(c, job_id, fingerprint, n_params), c.update)

        decoder = StreamingDecoder(mode, None, vpc)

        def download(c: SimClient) -> None:
            sink = decoder if c.index == 0 else DiscardSink()
            c.conn.download(job_id, 1, sink=sink)

        cpu0 = server_cpu_s(server_pid)
        t0 = time.perf_counter()
        _parallel(upload, sims, pool_threads)
        t1 = time.perf_counter()
        rss_upload = peak_rss_mb(server_pid)
        _wait_published(sims[0].conn, job_id, PUBLISH_WAIT_S)
        t2 = time.perf_counter()
        _parallel(download, sims, pool_threads)
        t3 = time.perf_counter()
        cpu = server_cpu_s(server_pid) - cpu0
        rss = peak_rss_mb(server_pid)
        got = decoder.result() / decoder.header_msg.weight_sum  # type: ignore[union-attr]
        cluster.procs["server"].send_signal(signal.SIGTERM)
    finally:
        for c in sims:
            c.conn.close()
        cluster.stop()
    return ScaleResult(
        clients=clients,
        n_params=n_params,
        round_wall_s=round(t3 - t0, 3),
        server_cpu_s=round(cpu, 3),
        server_peak_rss_mb=round(rss, 1),
        upload_bytes_per_client=sum(c.conn.bytes_sent for c in sims) // clients,
        download_bytes_per_client=sum(c.conn.bytes_received for c in sims) // clients,
        upload_s=round(t1 - t0, 3),
        server_peak_rss_upload_mb=round(rss_upload, 1),
        publish_s=round(t2 - t1, 3),
        download_s=round(t3 - t2, 3),
        max_abs_err=float(np.abs(got - expected).max()),
    )


def run_scale_bench(
    client_counts: list[int],
    n_params: int,
    encrypted: bool = True,
    preset: str = DEFAULT_PRESET,
    threads: int | None = None,
    on_result: Callable[[ScaleResult], None] = lambda r: None,
    workers: int = 1,
) -> dict[str, Any]:
    """The JSON contract of ``fedhe bench scale``: one row per client count, plus the
    flatness target (peak RSS at the largest count <= 1.3x at the smallest)."""
    rows: list[ScaleResult] = []
    with tempfile.TemporaryDirectory(prefix="fedhe-scale-") as tmp:
        for count in client_counts:
            row = run_scale_round(
                count, n_params, Path(tmp) / f"c{count}", encrypted, preset, threads,
                workers=workers,
            )  # fmt: skip
            rows.append(row)
            on_result(row)
    first, last = min(rows, key=lambda r: r.clients), max(rows, key=lambda r: r.clients)
    rss_ratio = last.server_peak_rss_mb / first.server_peak_rss_mb
    # Linear at most: seconds per client at the largest count <= 1.25x at the smallest.
    per_client = [r.round_wall_s / r.clients for r in (first, last)]
    return {
        "n_params": n_params,
        "encryption": preset if encrypted else "none",
        "aggregation_workers": workers,
        "client_threads": threads or "one per client (all in flight)",
        "results": [asdict(r) for r in rows],
        "targets": {
            "rss_ratio_max_vs_min_clients": round(rss_ratio, 3),
            "rss_ratio_max": 1.3,
            "wall_s_per_client_ratio": round(per_client[1] / per_client[0], 3),
            "met": bool(rss_ratio <= 1.3),
        },
    }
