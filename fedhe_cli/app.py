"""The ``fedhe`` user CLI."""

from __future__ import annotations

import click

from fedhe_cli.bench_cli import bench


@click.group()
@click.version_option(package_name="fedhe")
def cli() -> None:
    """FedHE: federated learning with CKKS homomorphic encryption."""


cli.add_command(bench)


def main() -> None:
    """Console-script entry point."""
    cli()
