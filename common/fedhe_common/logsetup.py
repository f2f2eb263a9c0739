"""Logging configuration for daemons and CLIs: one line per event, no payloads.

``--log-format text`` (default) is for people; ``--log-format json`` writes one JSON
object per line (``time``, ``level``, ``logger``, ``message``, and ``exc_info`` with the
traceback when there is one) for log collectors.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

import click

from fedhe_common.errors import ConfigError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
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


def log_format_option(func: F) -> F:
    """The daemons' ``--log-format`` option: ``text`` (default) or ``json`` lines."""
    return click.option(
        "--log-format",
        default="text",
        show_default=True,
        type=click.Choice(LOG_FORMATS, case_sensitive=False),
        help="text for people, json for one JSON object per line",
    )(func)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, exc_info."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Log to stderr with time, level and logger name; an unknown level or format is a
    ConfigError (and changes nothing)."""
    name = level.upper()
    if name not in LOG_LEVELS:
        raise ConfigError(f"unknown log level {level!r}: use one of {', '.join(LOG_LEVELS)}")
    style = fmt.lower()
    if style not in LOG_FORMATS:
        raise ConfigError(f"unknown log format {fmt!r}: use one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if style == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=getattr(logging, name), handlers=[handler], force=True)
