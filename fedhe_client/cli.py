"""``fedhe-client run --config client.yaml``."""

from __future__ import annotations

import functools
import json
import logging

import click

from fedhe_client.agent import ClientAgent
from fedhe_client.daemon import EdgeDaemon, check_certificates
from fedhe_client.tb_log import check_available as check_tensorboard
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
@click.option("--once", is_flag=True, help="one job (config job_id or the only one), then exit")
@log_level_option
@log_format_option
def run(config_path: str, once: bool, log_level: str, log_format: str) -> None:
    """Take every job this site is allowed to, one after another (until stopped).

    Prints each finished job's final metrics as one JSON line. With --once: take
    part in one job until it finishes, print its metrics and exit.
    """
    configure_logging(log_level, log_format)
    try:
        config = load_yaml(config_path, ClientConfig)
        _check_device(config, config_path)
        check_tensorboard(config)  # tensorboard_dir set without the extra: one line, at start
        if not once:
            EdgeDaemon(config, on_result=functools.partial(_print_result, config)).run()
            return
        check_certificates(config)  # a refused certificate is one line, never retried
        agent = ClientAgent(config)
        metrics = agent.run()
    except (ConfigError, FedHEError) as exc:
        raise click.ClickException(str(exc)) from None
    _print_result(config, agent.job_id, metrics)


def _print_result(config: ClientConfig, job_id: str, metrics: dict[str, float]) -> None:
    click.echo(json.dumps({"client_id": config.client_id, "job_id": job_id, **metrics}))


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
