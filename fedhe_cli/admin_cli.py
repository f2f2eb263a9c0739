"""``fedhe config validate`` and ``fedhe job submit|status``."""

from __future__ import annotations

import functools
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
    from fedhe_client.connection import ServerConnection

    try:
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
@server_options
def submit(job_file: Path, peer: PeerSection) -> None:
    """Submit JOB_FILE (validated locally first)."""
    from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb

    try:
        load_yaml(job_file, JobConfig)
        conn = _admin(peer)
        reply = conn.call("SubmitJob", pb.SubmitJobRequest(job_yaml=job_file.read_text()))
    except FedHEError as exc:
        raise click.ClickException(str(exc)) from None
    verb = "created" if reply.created else "already exists (identical)"  # type: ignore[attr-defined]
    console.print(f"job {reply.job_id} {verb}")  # type: ignore[attr-defined]


@job_group.command("status")
@click.argument("job_id")
@server_options
def status(job_id: str, peer: PeerSection) -> None:
    """Show a job's rounds."""
    try:
        reply = _admin(peer).job_status(job_id)
    except FedHEError as exc:
        raise click.ClickException(str(exc)) from None
    state = job_state_name(reply.state)
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
@server_options
def cancel(job_id: str, peer: PeerSection) -> None:
    """Stop JOB_ID: CANCELLED, its open round aborted; its clients move on."""
    from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb

    try:
        conn = _admin(peer)
        reply = conn.call("CancelJob", pb.CancelJobRequest(job_id=job_id))
    except FedHEError as exc:
        raise click.ClickException(str(exc)) from None
    aborted = ", ".join(str(n) for n in reply.aborted_rounds) or "none"  # type: ignore[attr-defined]
    console.print(f"job {job_id}: {job_state_name(reply.state)}; aborted rounds: {aborted}")  # type: ignore[attr-defined]


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
