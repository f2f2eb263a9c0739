"""The ``fedhe`` user CLI."""

from __future__ import annotations

import click

from fedhe_cli.admin_cli import certs_group, config_group, job_group
from fedhe_cli.audit_cli import audit
from fedhe_cli.bench_cli import bench
from fedhe_cli.model_cli import model_group
from fedhe_cli.run_cli import demo, simulate
from fedhe_common.errors import FedHEError


class _FedHEGroup(click.Group):
    """Turns FedHE errors (bad config, refused requests) into one-line CLI errors."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except FedHEError as exc:
            raise click.ClickException(exc.message) from None


@click.group(cls=_FedHEGroup)
@click.version_option(package_name="fedhe")
def cli() -> None:
    """FedHE: federated learning with CKKS homomorphic encryption."""


for command in (bench, demo, simulate, audit, config_group, job_group, certs_group, model_group):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    cli()
