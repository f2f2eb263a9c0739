"""``fedhe demo`` and ``fedhe simulate``: a whole federation as processes on loopback."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click

from fedhe_cli.cluster import ClientSpec, LocalCluster
from fedhe_cli.output import console
from fedhe_cli.plain_fedavg import run_plain_fedavg
from fedhe_client.connection import ServerConnection
from fedhe_common.config.load import load_yaml, parse_yaml
from fedhe_common.config.models import JobConfig, PeerSection

DEMO_JOB = """\
version: 1
job: {name: demo-digits, rounds: 5, seed: 0}
participants: {min_clients: 3, round_timeout_s: 300, wait_after_min_s: 2}
encryption: {mode: ckks, preset: single-key}
model: {name: mlp, hidden: 64}
data: {dataset: digits, partition: iid}
training: {local_epochs: 5, batch_size: 32, lr: 0.1, momentum: 0.9}
"""


def follow_job(
    cluster: LocalCluster, job_id: str, rounds: int, timeout_s: float
) -> dict[str, float]:
    """Print one line per published round until the job ends; return the last metrics."""
    admin = ServerConnection(
        PeerSection(
            address=f"127.0.0.1:{cluster.server_port}",
            token_file=cluster.token_file("admin"),
            insecure=True,
        )
    )
    printed: set[int] = set()
    last: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = admin.job_status(job_id)
        for r in status.history:
            if r.round in printed or r.state not in ("PUBLISHED", "ABORTED"):
                continue
            if r.state == "PUBLISHED" and (
                "accuracy" not in r.metrics
                or (r.metrics.get("contributors", 0) < r.contributors and status.state == "RUNNING")
            ):
                continue
            printed.add(r.round)
            if r.state == "ABORTED":
                console.print(f"round {r.round}: aborted ({r.contributors} commits)")
                continue
            last = dict(r.metrics)
            mb = r.upload_bytes / max(1, r.contributors) / 1e6
            console.print(
                f"round {r.round}/{rounds}  accuracy {last['accuracy']:.4f}  "
                f"loss {last['loss']:.4f}  upload {mb:.3f} MB/client  "
                f"round {r.seconds:.1f} s  HE {last.get('he_s', 0.0):.3f} s"
            )
        if status.state != "RUNNING" and all(
            r.round in printed for r in status.history if r.state != "OPEN"
        ):
            if status.state == "FAILED":
                raise click.ClickException("the job failed (too many aborted rounds)")
            return last
        time.sleep(0.3)
    raise click.ClickException(f"job did not finish within {timeout_s:.0f}s")


def run_federation(
    job_yaml: str, clients: int, workdir: Path | None, compare: bool, timeout_s: float
) -> None:
    """Run keyauth, server and ``clients`` clients on loopback; print the rounds."""
    job = parse_yaml(job_yaml, JobConfig, "job")
    base = workdir or Path(tempfile.mkdtemp(prefix="fedhe-"))
    specs = [ClientSpec(f"client-{i + 1}", i, clients) for i in range(clients)]
    console.print(
        f"[bold]FedHE[/bold]: key authority, server and {clients} clients on loopback "
        f"(job {job.job.name}, {job.job.rounds} rounds, encryption "
        f"{job.encryption.mode}/{job.preset_name}); logs in {base / 'logs'}"
    )
    with LocalCluster(base, specs) as cluster:
        cluster.start_keyauth()
        cluster.start_server(job_yaml)
        cluster.start_clients()
        try:
            final = follow_job(cluster, job.job.name, job.job.rounds, timeout_s)
        except Exception:
            for name in cluster.procs:
                console.print(f"--- {name} ---\n{cluster.log_tail(name, 10)}")
            raise
        for spec in specs:
            if cluster.wait(spec.client_id, 60) != 0:
                raise click.ClickException(
                    f"{spec.client_id} failed:\n{cluster.log_tail(spec.client_id)}"
                )
    console.print(f"final test accuracy (HE, {job.encryption.mode}): {final['accuracy']:.4f}")
    if compare:
        plain = run_plain_fedavg(job, clients)
        diff = 100 * abs(final["accuracy"] - plain["accuracy"])
        console.print(
            f"final test accuracy (plaintext FedAvg, same seeds): "
            f"{plain['accuracy']:.4f}  (difference {diff:.2f} pp)"
        )


@click.command("demo")
@click.option("--workdir", type=click.Path(path_type=Path), help="keep files here")
@click.option("--timeout", "timeout_s", default=600.0, show_default=True)
def demo(workdir: Path | None, timeout_s: float) -> None:
    """Key authority + server + 3 clients, digits, 5 encrypted rounds, vs plaintext FedAvg."""
    run_federation(DEMO_JOB, 3, workdir, compare=True, timeout_s=timeout_s)


@click.command("simulate")
@click.argument("job_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--clients", default=3, show_default=True, type=click.IntRange(1, 64))
@click.option("--workdir", type=click.Path(path_type=Path))
@click.option(
    "--compare/--no-compare",
    default=True,
    show_default=True,
    help="also run plaintext FedAvg in-process with the same seeds",
)
@click.option("--timeout", "timeout_s", default=3600.0, show_default=True)
def simulate(
    job_file: str, clients: int, workdir: Path | None, compare: bool, timeout_s: float
) -> None:
    """Run JOB_FILE with N client processes on loopback."""
    load_yaml(job_file, JobConfig)  # clear, file-named errors before anything starts
    run_federation(Path(job_file).read_text(), clients, workdir, compare, timeout_s)
