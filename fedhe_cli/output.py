"""Console helpers for the ``fedhe`` CLI: rich tables and JSON files."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

console = Console(soft_wrap=True)
if not console.is_terminal:
    console.width = 160  # logs and pipes: do not truncate table columns


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print rows under ``columns``; floats get 4 significant digits."""
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right" if col != columns[0] else "left")
    for row in rows:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    console.print(table)


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` as indented JSON, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    console.print(f"wrote {path}")


def parse_list(
    text: str, convert: type, name: str, valid: Callable[[Any], bool], rule: str
) -> list[Any]:
    """A comma-separated option value: every item converted and checked, else BadParameter."""
    try:
        values = [convert(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(
            f"{name} must be comma-separated {convert.__name__} values"
        ) from None
    if not values or not all(valid(v) for v in values):
        raise click.BadParameter(f"{name} must be {rule}")
    return values
