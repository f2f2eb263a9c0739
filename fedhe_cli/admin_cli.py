"""``fedhe config validate`` and ``fedhe job submit|list|status|history|logs|cancel``."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml
from pydantic import BaseModel

from fedhe_cli.output import console, print_table
from fedhe_common.config.load import load_yaml
from fedhe_common.config.models import (
    ClientConfig,
    JobConfig,
    KeyAuthConfig,
    PeerSection,
    ServerConfig,
)
from fedhe_common.errors import ConfigError, FedHEError
from fedhe_common.rpc.states import job_state_name, round_state_name

if TYPE_CHECKING:  # imported on use: it loads SEAL and numpy, and `fedhe job --help` must not
    from fedhe_client.connection import ServerConnection

KINDS: dict[str, type[BaseModel]] = {
    "job": JobConfig,
    "server": ServerConfig,
    "client": ClientConfig,
    "keyauth": KeyAuthConfig,
}


def guess_kind(path: Path) -> str:
    """Tell the file kind from its top-level keys."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    keys = set(doc) if isinstance(doc, dict) else set()
    if "job" in keys:
        return "job"
    if "client_id" in keys:
        return "client"
    if "keyauth" in keys:
        return "server"
    if "identities" in keys:
        return "keyauth"
    raise ConfigError(f"{path}: cannot tell the config kind; pass --kind")


@click.group("config")
def config_group() -> None:
    """Configuration files."""


@config_group.command("validate")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice(sorted(KINDS)), help="default: guessed from the keys")
def validate(file: Path, kind: str | None) -> None:
    """Check FILE against its schema; errors name the field."""
    try:
        kind = kind or guess_kind(file)
        load_yaml(file, KINDS[kind])
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"{file}: valid {kind} config")


def _admin(peer: PeerSection) -> ServerConnection:
    """The admin's connection; a certificate the server refuses is one line, not retried."""
    from fedhe_client.connection import ServerConnection
    from fedhe_common.pki import tls_problem

    try:
        why = tls_problem(peer)
        if why is not None:
            raise ConfigError(f"TLS certificate error: {why}")
        return ServerConnection(peer)
    except (ConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


def _peer(options: dict[str, Any]) -> PeerSection:
    """The server connection from ``--peer FILE`` or the individual options."""
    try:
        if options["peer_file"]:
            return load_yaml(options["peer_file"], PeerSection)
        if not options["server"]:
            raise click.UsageError("give --peer FILE or --server (with a token or certificate)")
        return PeerSection(
            address=options["server"],
            token_file=options["token_file"],
            ca_file=options["ca_file"],
            cert_file=options["cert_file"],
            key_file=options["key_file"],
            insecure=options["insecure"],
        )
    except (ConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


_server_options = [
    click.option(
        "--peer",
        "peer_file",
        type=click.Path(),
        help="peer YAML, e.g. a provisioned admin kit's admin.yaml (replaces the options below)",
    ),
    click.option("--server", help="host:port of fedhe-server"),
    click.option("--token-file", type=click.Path(), help="bearer token file"),
    click.option("--ca-file", type=click.Path(), help="CA certificate for TLS"),
    click.option("--cert-file", type=click.Path(), help="this admin's certificate (mutual TLS)"),
    click.option("--key-file", type=click.Path(), help="this admin's private key (mutual TLS)"),
    click.option("--insecure", is_flag=True, help="no TLS (loopback only)"),
]
_PEER_OPTIONS = (
    "peer_file", "server", "token_file", "ca_file", "cert_file", "key_file", "insecure",
)


def server_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Attach the connection options; the command receives them as ``peer``."""

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        options = {name: kwargs.pop(name) for name in _PEER_OPTIONS}
        return fn(peer=_peer(options), **kwargs)

    for option in reversed(_server_options):
        wrapper = option(wrapper)
    return wrapper


@click.group("job")
def job_group() -> None:
    """Jobs on a running server."""


@job_group.command("submit")
@click.argument("job_file", type=click.Path(path_type=Path))
@click.option(
    "--follow", is_flag=True, help="then print each closed round until the job ends (exit 1 "
    "unless it finished)"
)  # fmt: skip
@server_options
def submit(job_file: Path, follow: bool, peer: PeerSection) -> None:
    """Submit JOB_FILE (validated locally first)."""
    from fedhe_cli.job_follow import follow as follow_job
    from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb

    try:
        load_yaml(job_file, JobConfig)
        conn = _admin(peer)
        reply = conn.call("SubmitJob", pb.SubmitJobRequest(job_yaml=job_file.read_text()))
        verb = "created" if reply.created else "already exists (identical)"  # type: ignore[attr-defined]
        click.echo(f"job {reply.job_id} {verb}")  # type: ignore[attr-defined]
        if follow and follow_job(conn, reply.job_id, click.echo) != "FINISHED":  # type: ignore[attr-defined]
            raise SystemExit(1)
    except FedHEError as exc:
        raise click.ClickException(str(exc)) from None


_json_option = click.option("--json", "as_json", is_flag=True, help="print JSON")


def _print_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, sort_keys=False))


def _message_json(message: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True)


def transfer_line(t: Any) -> str:
    """A transfer job's progress: phase, mode, epoch, step, epochs run, best epoch."""
    phase = {1: "keys", 2: "upload", 3: "training", 4: "finished", 5: "failed"}.get(t.phase, "?")
    best = "none yet" if t.best_epoch < 0 else str(t.best_epoch)
    text = (
        f"transfer {phase} (mode {t.mode}): epoch {t.epoch}, step {t.step}, "
        f"{t.epochs_run} epochs run, best epoch {best}, {t.answered} owner replies"
    )
    return text + (f"; error: {t.error}" if t.error else "")


@job_group.command("status")
@click.argument("job_id")
@_json_option
@server_options
def status(job_id: str, as_json: bool, peer: PeerSection) -> None:
    """Show a job's rounds."""
    try:
        reply = _admin(peer).job_status(job_id)
    except FedHEError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _print_json(_message_json(reply))
        return
    state = job_state_name(reply.state)
    if reply.HasField("transfer"):  # HETAL: training progress instead of rounds
        console.print(f"job {reply.job_id}: {state}, {transfer_line(reply.transfer)}")
    else:
        console.print(f"job {reply.job_id}: {state}, round {reply.current_round}/{reply.rounds}")
    print_table(
        "rounds",
        ["round", "state", "clients", "weight sum", "seconds", "accuracy"],
        [
            [
                r.round,
                round_state_name(r.state),
                r.contributors,
                r.weight_sum,
                r.seconds,
                r.metrics.get("accuracy", float("nan")),
            ]
            for r in reply.history
        ],
    )
    if reply.clients:
        print_table(
            "clients",
            ["client", "last seen (s ago)", "errors", "last error"],
            [
                [
                    c.client_id,
                    round(time.time() - c.last_seen_unix_ms / 1000, 1),
                    c.error_count,
                    f"round {c.error.round} {c.error.phase}: {c.error.message}"
                    if c.error.phase
                    else "",
                ]
                for c in reply.clients
            ],
        )


@job_group.command("cancel")
@click.argument("job_id")
@_json_option
@server_options
def cancel(job_id: str, as_json: bool, peer: PeerSection) -> None:
    """Stop JOB_ID: CANCELLED, its open round aborted; its clients move on."""
    from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb

    try:
        conn = _admin(peer)
        reply = conn.call("CancelJob", pb.CancelJobRequest(job_id=job_id))
    except FedHEError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _print_json(_message_json(reply))
        return
    aborted = ", ".join(str(n) for n in reply.aborted_rounds) or "none"  # type: ignore[attr-defined]
    console.print(f"job {job_id}: {job_state_name(reply.state)}; aborted rounds: {aborted}")  # type: ignore[attr-defined]


MAX_LIST_PAGES = 100  # ListJobSummaries pages for one `fedhe job list` (500 jobs each)


@job_group.command("list")
@_json_option
@server_options
def list_jobs(as_json: bool, peer: PeerSection) -> None:
    """Every job: id, state, round/rounds, clients."""
    from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb

    jobs: list[Any] = []
    try:
        conn = _admin(peer)
        after = ""
        for _ in range(MAX_LIST_PAGES):
            reply = conn.call("ListJobSummaries", pb.ListJobSummariesRequest(after_job_id=after))
            jobs.extend(reply.jobs)  # type: ignore[attr-defined]
            after = reply.next_after_job_id  # type: ignore[attr-defined]
            if not after:
                break
    except FedHEError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _print_json({"jobs": [_message_json(j) for j in jobs]})
        return
    print_table(
        "jobs",
        ["job", "state", "round", "clients", "created"],
        [
            [
                j.job_id,
                job_state_name(j.state),
                f"{j.current_round}/{j.rounds}",
                j.clients,
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.created_unix_ms / 1000)),
            ]
            for j in jobs
        ],
    )


def _history(peer: PeerSection, job_id: str, last: int) -> tuple[ServerConnection, list[Any]]:
    from fedhe_cli.job_history import fetch_history

    conn = _admin(peer)
    return conn, fetch_history(
        lambda request: conn.call("GetJobHistory", request),  # type: ignore[arg-type,return-value]
        job_id,
        last,
    )


@job_group.command("history")
@click.argument("job_id")
@click.option("--last", type=click.IntRange(min=0), default=0, help="only the last N rounds")
@_json_option
@click.option("--csv", "as_csv", is_flag=True, help="print CSV: one row per round and client")
@server_options
def history(job_id: str, last: int, as_json: bool, as_csv: bool, peer: PeerSection) -> None:
    """Per round and client: accuracy, loss, samples, per-step seconds and bytes."""
    from fedhe_cli.job_history import COLUMNS, history_csv, history_document, history_rows

    if as_json and as_csv:
        raise click.UsageError("give --json or --csv, not both")
    try:
        _, rounds = _history(peer, job_id, last)
    except FedHEError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _print_json(history_document(job_id, rounds))
        return
    rows = history_rows(rounds)
    if as_csv:
        click.echo(history_csv(rows), nl=False)
        return
    print_table(
        f"job {job_id}",
        list(COLUMNS),
        [["" if row[c] is None else row[c] for c in COLUMNS] for row in rows],
    )


@job_group.command("logs")
@click.argument("job_id")
@click.option("--last", type=click.IntRange(min=0), default=0, help="only the last N rounds")
@_json_option
@server_options
def logs(job_id: str, last: int, as_json: bool, peer: PeerSection) -> None:
    """Round events and the clients' error reports, oldest first."""
    from fedhe_cli.job_history import format_time, log_events

    try:
        conn, rounds = _history(peer, job_id, last)
        events = log_events(rounds, conn.job_status(job_id))
    except FedHEError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _print_json({"job_id": job_id, "events": events})
        return
    for e in events:
        who = f" [{e['client']}]" if e["client"] else ""
        console.print(f"{format_time(e['unix_ms'])} {e['kind']}{who} {e['message']}", markup=False)


@click.group("certs")
def certs_group() -> None:
    """Development TLS certificates."""


@certs_group.command("init")
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option(
    "--hosts",
    default="127.0.0.1,localhost",
    show_default=True,
    help="comma-separated DNS names / IPs the services are reached at",
)
@click.option("--services", default="keyauth,server", show_default=True)
def certs_init(out: Path, hosts: str, services: str) -> None:
    """Create a CA and certificates for the listening services (keys mode 0600)."""
    from fedhe_common.pki import init_pki

    for path in init_pki(
        out, [s for s in services.split(",") if s], [h for h in hosts.split(",") if h]
    ):
        console.print(f"wrote {path}")
