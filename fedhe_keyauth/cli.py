"""``fedhe-keyauth serve --config keyauth.yaml``."""

from __future__ import annotations

import logging
import signal
import threading

import click

from fedhe_common.config.load import load_yaml
from fedhe_common.config.models import KeyAuthConfig
from fedhe_common.errors import ConfigError, FedHEError
from fedhe_common.logsetup import configure_logging, log_format_option, log_level_option
from fedhe_common.rpc.auth import TokenAuthority
from fedhe_common.rpc.serving import create_server
from fedhe_common.storage.atomic import atomic_write
from fedhe_keyauth.servicer import KeyAuthorityServicer, register
from fedhe_keyauth.store import KeyStore

logger = logging.getLogger("fedhe_keyauth")
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@click.group()
def cli() -> None:
    """FedHE key authority."""


@cli.command()
@click.option("--config", "config_path", required=True, type=click.Path())
@click.option("--port-file", type=click.Path(), help="write the bound port here")
@log_level_option
@log_format_option
def serve(config_path: str, port_file: str | None, log_level: str, log_format: str) -> None:
    """Serve keys until SIGINT/SIGTERM."""
    configure_logging(log_level, log_format)
    try:
        config = load_yaml(config_path, KeyAuthConfig)
        store = KeyStore(config.state_dir)
        servicer = KeyAuthorityServicer(store, TokenAuthority(config.identities))
        server = create_server(
            config.listen, config.insecure, config.tls, MAX_MESSAGE_BYTES, register(servicer)
        )
        port = server.port
    except (ConfigError, FedHEError) as exc:
        raise click.ClickException(str(exc)) from None
    if port_file:
        atomic_write(port_file, str(port).encode())
    logger.info("keyauth listening on port %d (%d jobs with keys)", port, len(store.jobs()))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=5)


def main() -> None:
    """Console-script entry point."""
    cli()
