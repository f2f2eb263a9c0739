"""``fedhe demo`` and ``fedhe simulate``: a whole federation as processes on loopback."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import click

from fedhe_cli.cluster import ClientSpec, LocalCluster, terminate_on_sigterm
from fedhe_cli.output import console
from fedhe_cli.rounds_view import RoundLines, job_active
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.load import load_yaml, parse_yaml
from fedhe_common.config.models import JobConfig, PeerSection
from fedhe_common.errors import FedHEError
from fedhe_common.rpc.states import job_state_name

DEMO_JOB = """\
version: 1
job: {name: demo-digits, rounds: 5, seed: 0}
participants: {min_clients: 3, round_timeout_s: 300, wait_after_min_s: 2}
encryption: {mode: ckks, preset: single-key-fast}
model: {name: mlp, hidden: 64}
data: {dataset: digits, partition: iid}
training: {local_epochs: 5, batch_size: 32, lr: 0.1, momentum: 0.9}
"""


FINAL_GRACE_S = 30.0  # after the job ends: how long to wait for the last metrics
STRANDED_S = 10.0  # every client exited but the job is still active: give up after this


def follow_job(
    cluster: LocalCluster,
    job: JobConfig,
    timeout_s: float,
    clients_exited: Callable[[], bool] | None = None,
) -> dict[str, float]:
    """Print one line per finished round until the job ends; return the last metrics.

    ``clients_exited`` says when every client is done (default: the cluster's client
    processes; Ray actors with ``--backend ray``)."""
    from fedhe_client.connection import ServerConnection  # SEAL: loaded only when run

    admin = ServerConnection(
        PeerSection(
            address=f"127.0.0.1:{cluster.server_port}",
            token_file=cluster.token_file("admin"),
            insecure=True,
        )
    )
    view = RoundLines(job.job.rounds, mask_round=job.selective.enabled)
    ended_at: float | None = None
    exited_at: float | None = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = admin.job_status(job.job.name)
        now = time.monotonic()
        clients_gone = (clients_exited or cluster.clients_exited)()
        if not job_active(job_state_name(status.state)):
            ended_at = ended_at if ended_at is not None else now
        elif clients_gone:
            exited_at = exited_at if exited_at is not None else now
            if now - exited_at > STRANDED_S:
                state = job_state_name(status.state).lower()
                raise click.ClickException(f"every client exited but the job is still {state}")
        final = ended_at is not None and (clients_gone or now - ended_at > FINAL_GRACE_S)
        for line in view.lines(status.history, final):
            console.print(line)
        if final:
            if status.state != pb.JOB_STATE_FINISHED:
                state = job_state_name(status.state).lower()
                raise click.ClickException(f"the job ended {state}")
            return view.last
        time.sleep(0.3)
    raise click.ClickException(f"job did not finish within {timeout_s:.0f}s")


def client_ids(job: JobConfig, clients: int | None) -> list[str]:
    """The client identities to run: the job's enrolled clients, else client-1..N.

    Refuses counts with which the job could never finish (fewer than ``min_clients``,
    fewer than the threshold parties that key generation waits for, more than enrolled).
    """
    enrolled = job.participants.clients
    parties = job.keys.parties if job.threshold_keys else None
    if clients is None:
        clients = len(enrolled) if enrolled else max(3, job.participants.min_clients, parties or 0)
    if enrolled and clients > len(enrolled):
        raise click.ClickException(
            f"--clients {clients}: the job enrols only {len(enrolled)} clients "
            "(participants.clients)"
        )
    if clients < job.participants.min_clients:
        raise click.ClickException(
            f"--clients {clients}: the job needs participants.min_clients = "
            f"{job.participants.min_clients} clients per round"
        )
    if parties is not None and clients < parties:
        raise click.ClickException(
            f"--clients {clients}: threshold key generation waits for all "
            f"keys.parties = {parties} clients"
        )
    return list(enrolled[:clients]) if enrolled else [f"client-{i + 1}" for i in range(clients)]


def _run_on_ray(
    cluster: LocalCluster, job: JobConfig, timeout_s: float, address: str | None
) -> dict[str, float]:
    """The clients as Ray actors (``--backend ray``); the services as processes."""
    from fedhe_cli.cluster import available_cores
    from fedhe_cli.ray_backend import RayClients

    clients = RayClients(cluster, address, num_cpus=available_cores())
    try:
        final = follow_job(cluster, job, timeout_s, clients.exited)
        clients.results(60)  # a client that failed is an error, as with processes
    finally:
        clients.stop()
    return final


def _run(
    cluster: LocalCluster,
    job: JobConfig,
    job_yaml: str,
    timeout_s: float,
    backend: str = "process",
    ray_address: str | None = None,
) -> dict[str, float]:
    """Start the services, follow the job, check every client exited cleanly."""
    cluster.start_keyauth()
    cluster.start_server(job_yaml)
    if backend == "ray":
        return _run_on_ray(cluster, job, timeout_s, ray_address)
    cluster.start_clients()
    try:
        final = follow_job(cluster, job, timeout_s)
    except Exception:
        for name in cluster.procs:
            console.print(f"--- {name} ---\n{cluster.log_tail(name, 10)}")
        raise
    for client_id in cluster.clients:
        if cluster.wait(client_id, 60) != 0:
            raise click.ClickException(f"{client_id} failed:\n{cluster.log_tail(client_id)}")
    return final


def run_federation(
    job_yaml: str,
    clients: int | None,
    workdir: Path | None,
    compare: bool,
    timeout_s: float,
    backend: str = "process",
    ray_address: str | None = None,
) -> None:
    """Run keyauth, server and the job's clients on loopback; print the rounds."""
    job = parse_yaml(job_yaml, JobConfig, "job")
    names = client_ids(job, clients)
    clients = len(names)
    base = workdir or Path(tempfile.mkdtemp(prefix="fedhe-"))
    specs = [ClientSpec(name, i, clients) for i, name in enumerate(names)]
    keys = "threshold " if job.threshold_keys else ""
    console.print(
        f"[bold]FedHE[/bold]: key authority, server and {clients} clients on loopback "
        f"(job {job.job.name}, {job.job.rounds} rounds, encryption "
        f"{job.encryption.mode}/{keys}{job.preset_name}); logs in {base / 'logs'}"
    )
    # SEAL's extension is loaded before any child starts: a SIGTERM raised inside its
    # import leaves a half-initialised module and a traceback instead of a clean stop.
    import fedhe_client.connection  # noqa: F401

    with terminate_on_sigterm(), LocalCluster(base, specs) as cluster:
        try:
            final = _run(cluster, job, job_yaml, timeout_s, backend, ray_address)
        except (RuntimeError, TimeoutError, FedHEError) as exc:  # a service did not start or stop
            raise click.ClickException(str(exc)) from None
    if "accuracy" not in final:
        raise click.ClickException("the job finished but no client reported a test accuracy")
    console.print(f"final test accuracy (HE, {job.encryption.mode}): {final['accuracy']:.4f}")
    if compare:
        from fedhe_cli.plain_fedavg import run_plain_fedavg  # torch: loaded only when run

        with terminate_on_sigterm():
            plain = run_plain_fedavg(job, clients, torch_threads=cluster.torch_threads)
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
@click.option(
    "--clients",
    type=click.IntRange(1, 1024),
    help="client processes (default: the job's enrolled clients, else max(3, min_clients, "
    "keys.parties)); at most 64 as processes, more as Ray actors",
)
@click.option(
    "--backend",
    type=click.Choice(["process", "ray"]),
    default="process",
    show_default=True,
    help="clients as local processes, or as Ray actors (pip install 'fedhe[ray]')",
)
@click.option(
    "--ray-address",
    help="with --backend ray: an existing Ray cluster (e.g. ray://head:10001); "
    "default: a local Ray on this host",
)
@click.option("--workdir", type=click.Path(path_type=Path))
@click.option(
    "--compare/--no-compare",
    default=True,
    show_default=True,
    help="also run plaintext FedAvg in-process with the same seeds",
)
@click.option("--timeout", "timeout_s", default=3600.0, show_default=True)
def simulate(
    job_file: str,
    clients: int | None,
    backend: str,
    ray_address: str | None,
    workdir: Path | None,
    compare: bool,
    timeout_s: float,
) -> None:
    """Run JOB_FILE with N client processes on loopback.

    With --backend ray the clients are Ray actors instead (local Ray, or --ray-address)."""
    if backend == "process" and clients is not None and clients > 64:
        raise click.BadParameter(
            "at most 64 client processes; use --backend ray", param_hint="--clients"
        )
    config = load_yaml(job_file, JobConfig)  # clear, file-named errors before anything starts
    if config.transfer is not None:  # HETAL: owner and trainer in process (fedhe_cli.hetal_local)
        from fedhe_cli.hetal_local import simulate_transfer

        simulate_transfer(config, compare, say=console.print)
        return
    run_federation(
        Path(job_file).read_text(), clients, workdir, compare, timeout_s, backend, ray_address
    )
