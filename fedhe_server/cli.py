"""``fedhe-server serve --config server.yaml [--job job.yaml]``."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fedhe_common.config.load import load_yaml
from fedhe_common.config.models import ServerConfig, host_of
from fedhe_common.errors import ConfigError, FedHEError
from fedhe_common.logsetup import configure_logging, log_format_option, log_level_option
from fedhe_common.pki import tls_problem
from fedhe_common.rpc.auth import TokenAuthority
from fedhe_common.rpc.serving import HeapTrimmer, create_server, limit_malloc_arenas
from fedhe_common.storage.atomic import atomic_write
from fedhe_server.service import AggregationServer, max_message_bytes
from fedhe_server.servicer import AggregationServicer, register

if TYPE_CHECKING:
    from fedhe_server.dashboard.http import Dashboard

logger = logging.getLogger("fedhe_server")


@click.group()
def cli() -> None:
    """FedHE aggregation server."""


@cli.command()
@click.option("--config", "config_path", required=True, type=click.Path())
@click.option("--job", "job_path", type=click.Path(), help="submit this job YAML at start")
@click.option("--port-file", type=click.Path(), help="write the bound port here")
@log_level_option
@log_format_option
def serve(
    config_path: str,
    job_path: str | None,
    port_file: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Serve until SIGINT/SIGTERM; state lives in the config's state_dir."""
    limit_malloc_arenas()  # before any thread: memory flat in the clients (issue 15)
    configure_logging(log_level, log_format)
    try:
        config = load_yaml(config_path, ServerConfig)
        _check_keyauth_certificates(config)
        job_yaml = _read_job(job_path) if job_path else None
        service = AggregationServer(config)
    except FedHEError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        if job_path and job_yaml is not None:
            service.submit(job_yaml, job_path)
        if config.metrics_port:
            _serve_metrics(service, config)
        authority = TokenAuthority(config.identities)
        servicer = AggregationServicer(service, authority)
        server = create_server(
            config.listen,
            config.insecure,
            config.tls,
            max_message_bytes(),
            register(servicer),
            stream_window_bytes=config.stream_window_kib * 1024,
        )
        port = server.port
        dashboard = _start_dashboard(service, config, authority)
    except FedHEError as exc:
        service.stop()  # the round keeper is running: a start-up error must not leave it
        raise click.ClickException(str(exc)) from None
    if port_file:
        atomic_write(port_file, str(port).encode())
    logger.info("server listening on port %d", port)
    if dashboard is not None:
        click.echo(f"dashboard: {dashboard.url} (admin token as bearer or Basic password)")
    trimmer = HeapTrimmer().start()  # peak memory flat in the clients (issue 15)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    if dashboard is not None:
        dashboard.stop()
    server.stop(grace=10)
    service.stop()
    trimmer.stop()


def _check_keyauth_certificates(config: ServerConfig) -> None:
    """A certificate the key authority refuses (or we distrust) fails at once, not retried."""
    why = tls_problem(config.keyauth)
    if why is not None:
        raise ConfigError(f"TLS certificate error (key authority): {why}")


def _read_job(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the job: {exc.strerror}") from None


def _start_dashboard(
    service: AggregationServer, config: ServerConfig, authority: TokenAuthority
) -> Dashboard | None:
    if config.dashboard is None:
        return None
    from fedhe_server.dashboard.http import Dashboard

    return Dashboard(service, config, authority).start()


def _serve_metrics(service: AggregationServer, config: ServerConfig) -> None:
    host = host_of(config.listen)
    try:
        service.metrics.serve(host, config.metrics_port)
    except OSError as exc:
        raise ConfigError(f"metrics_port {config.metrics_port} on {host}: {exc.strerror}") from None
    logger.info("metrics on http://%s:%d/metrics", host, config.metrics_port)


def main() -> None:
    """Console-script entry point."""
    cli()
