"""``fedhe-client run --config client.yaml``."""

from __future__ import annotations

import json
import logging

import click

from fedhe_client.agent import ClientAgent
from fedhe_common.config.load import load_yaml
from fedhe_common.config.models import ClientConfig
from fedhe_common.errors import ConfigError, FedHEError
from fedhe_common.logsetup import configure_logging

logger = logging.getLogger("fedhe_client")


@click.group()
def cli() -> None:
    """FedHE client agent (dials out only; never listens)."""


@cli.command()
@click.option("--config", "config_path", required=True, type=click.Path())
@click.option("--log-level", default="INFO", show_default=True)
def run(config_path: str, log_level: str) -> None:
    """Take part in the job until it finishes; print the final metrics as JSON."""
    configure_logging(log_level)
    try:
        agent = ClientAgent(load_yaml(config_path, ClientConfig))
        metrics = agent.run()
    except (ConfigError, FedHEError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({"client_id": agent.config.client_id, **metrics}))


def main() -> None:
    """Console-script entry point."""
    cli()
