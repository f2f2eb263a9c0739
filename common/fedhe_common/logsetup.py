"""Logging configuration for daemons and CLIs: one line per event, no payloads."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

import click

from fedhe_common.errors import ConfigError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
F = TypeVar("F", bound=Callable[..., object])


def log_level_option(func: F) -> F:
    """The ``--log-level`` option every FedHE command shares: a known level or a usage error."""
    return click.option(
        "--log-level",
        default="INFO",
        show_default=True,
        type=click.Choice(LOG_LEVELS, case_sensitive=False),
        help="logging threshold",
    )(func)


def configure_logging(level: str = "INFO") -> None:
    """Log to stderr with time, level and logger name; an unknown level is a ConfigError."""
    name = level.upper()
    if name not in LOG_LEVELS:
        raise ConfigError(f"unknown log level {level!r}: use one of {', '.join(LOG_LEVELS)}")
    logging.basicConfig(
        level=getattr(logging, name),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
