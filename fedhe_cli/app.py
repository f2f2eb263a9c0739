"""The ``fedhe`` user CLI.

Subcommands load on first use: ``fedhe --help`` imports no command module, and a
command module imports torch, transformers or SEAL only inside the commands that
need them, so ``fedhe --help`` and ``fedhe job ...`` start in a fraction of a second.
"""

from __future__ import annotations

import importlib

import click

from fedhe_common.errors import FedHEError

# name -> (module, attribute, one-line help shown by ``fedhe --help``; a test checks it is
# the command's own short help). A command can also be added with ``cli.add_command``.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "audit": (
        "fedhe_cli.audit_cli",
        "audit",
        "Run DLG on single-sample gradients for sensitivity and random masks, two attackers.",
    ),
    "bench": (
        "fedhe_cli.bench_cli",
        "bench",
        "Benchmarks: our path and the baselines in one run, process CPU time.",
    ),
    "certs": ("fedhe_cli.admin_cli", "certs_group", "Development TLS certificates."),
    "config": ("fedhe_cli.admin_cli", "config_group", "Configuration files."),
    "demo": (
        "fedhe_cli.run_cli",
        "demo",
        "Key authority + server + 3 clients, digits, 5 encrypted rounds, vs plaintext FedAvg.",
    ),
    "job": ("fedhe_cli.admin_cli", "job_group", "Jobs on a running server."),
    "model": (
        "fedhe_cli.model_cli",
        "model_group",
        "The trained model a client kept (``<state_dir>/models/<job>/``).",
    ),
    "plot": (
        "fedhe_cli.plot",
        "plot",
        "PNG of a job: accuracy/loss per round, per-step overhead per client (stacked).",
    ),
    "provision": (
        "fedhe_cli.provision",
        "provision_cmd",
        "Write a project CA (OUT/ca) and one kit per participant (OUT/kits/<id>).",
    ),
    "simulate": (
        "fedhe_cli.run_cli",
        "simulate",
        "Run JOB_FILE with N client processes on loopback.",
    ),
}


class _FedHEGroup(click.Group):
    """Loads subcommands on demand; turns FedHE errors into one-line CLI errors."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in COMMANDS:
            return self.commands.get(cmd_name)
        module, attr, _ = COMMANDS[cmd_name]
        command = getattr(importlib.import_module(module), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{module}.{attr} is not a click command")
        self.add_command(command, cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List commands from :data:`COMMANDS` without importing their modules."""
        rows = [(name, self._short_help(name)) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def _short_help(self, name: str) -> str:
        if name in COMMANDS:
            return COMMANDS[name][2]
        return self.commands[name].get_short_help_str()

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except FedHEError as exc:
            raise click.ClickException(exc.message) from None


@click.group(cls=_FedHEGroup)
@click.version_option(package_name="fedhe")
def cli() -> None:
    """FedHE: federated learning with CKKS homomorphic encryption."""


def main() -> None:
    """Console-script entry point."""
    cli()
