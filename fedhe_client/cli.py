"""``fedhe-client run --config client.yaml``."""

from __future__ import annotations

import json
import logging

import click

from fedhe_client.agent import ClientAgent
from fedhe_common.config.load import load_yaml
from fedhe_common.config.models import ClientConfig
from fedhe_common.errors import ConfigError, FedHEError
from fedhe_common.logsetup import configure_logging, log_format_option, log_level_option

logger = logging.getLogger("fedhe_client")


@click.group()
def cli() -> None:
    """FedHE client agent (dials out only; never listens)."""


@cli.command()
@click.option("--config", "config_path", required=True, type=click.Path())
@log_level_option
@log_format_option
def run(config_path: str, log_level: str, log_format: str) -> None:
    """Take part in the job until it finishes; print the final metrics as JSON."""
    configure_logging(log_level, log_format)
    try:
        config = load_yaml(config_path, ClientConfig)
        _check_device(config, config_path)
        agent = ClientAgent(config)
        metrics = agent.run()
    except (ConfigError, FedHEError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({"client_id": agent.config.client_id, **metrics}))


def _check_device(config: ClientConfig, path: str) -> None:
    """Refuse ``device: cuda`` up front when this torch build has no usable CUDA device."""
    if config.device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"{path}: device: cuda, but torch {torch.__version__} sees no CUDA device; "
            "use device: cpu or auto"
        )


def main() -> None:
    """Console-script entry point."""
    cli()
