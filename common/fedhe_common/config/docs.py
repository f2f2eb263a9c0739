"""docs/config.md from the pydantic models, so the field reference cannot drift.

``python -m fedhe_common.config.docs`` prints the reference; ``--write PATH`` writes it;
``--check PATH`` exits 1 when PATH differs from what the models say now. A field's
description is its ``Field(description=...)`` or else the ``#`` comment lines right
above it in :mod:`fedhe_common.config.models`.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from fedhe_common.config.field_notes import NOTES
from fedhe_common.config.models import ClientConfig, JobConfig, KeyAuthConfig, ServerConfig

DEFAULT_PATH = Path("docs/config.md")
# (title, model, command that reads it)
CONFIGS: tuple[tuple[str, type[BaseModel], str], ...] = (
    ("Job", JobConfig, "`fedhe job submit JOB.yaml`, `fedhe simulate JOB.yaml`"),
    ("Server", ServerConfig, "`fedhe-server serve --config server.yaml`"),
    ("Client", ClientConfig, "`fedhe-client run --config client.yaml`"),
    ("Key authority", KeyAuthConfig, "`fedhe-keyauth serve --config keyauth.yaml`"),
)
_FIELD = re.compile(r"^    (\w+)\s*:")
_CONSTRAINTS = (
    ("gt", "> {}"),
    ("ge", ">= {}"),
    ("lt", "< {}"),
    ("le", "<= {}"),
    ("min_length", "at least {} items"),
    ("max_length", "at most {} items"),
    ("pattern", "matches `{}`"),
)


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    return [
        cls
        for cls in model.__mro__
        if isinstance(cls, type) and issubclass(cls, BaseModel) and cls is not BaseModel
    ]


def comments(model: type[BaseModel]) -> dict[str, str]:
    """Field name -> the ``#`` comment block right above it (or the entry in
    :data:`~fedhe_common.config.field_notes.NOTES`), for ``model`` and its bases."""
    found: dict[str, str] = {}
    for cls in _models(model):
        try:
            lines = inspect.getsource(cls).splitlines()
        except (OSError, TypeError):
            continue
        pending: list[str] = []
        for line in lines:
            stripped = line.strip()
            if line.startswith("    #"):
                pending.append(stripped.lstrip("#").strip())
                continue
            match = _FIELD.match(line)
            if match and pending:
                found.setdefault(match.group(1), " ".join(pending))
            pending = []
    for cls in _models(model):
        for name in cls.model_fields:
            note = NOTES.get(f"{cls.__name__}.{name}")
            if note:
                found.setdefault(name, note)
    return found


def _sections(tp: Any) -> list[type[BaseModel]]:
    """Models inside an annotation (``X``, ``X | None``, ``list[X]``)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return [m for arg in get_args(tp) for m in _sections(arg)]


def type_name(tp: Any) -> str:
    """A YAML reader's name for an annotation."""
    origin = get_origin(tp)
    if tp is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(tp))
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in get_args(tp))
    if origin in (list, tuple):
        return f"list[{', '.join(type_name(a) for a in get_args(tp) if a is not Ellipsis)}]"
    if origin is dict:
        key, value = get_args(tp)
        return f"map[{type_name(key)}, {type_name(value)}]"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "section"
    names = {str: "string", int: "int", float: "float", bool: "bool"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def default_text(field: FieldInfo) -> str:
    """``required``, ``(section)`` for a nested model, else the default as YAML writes it."""
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    try:
        return json.dumps(value)
    except TypeError:
        return str(value)


def constraints(field: FieldInfo) -> str:
    """Bounds, lengths and patterns pydantic enforces on the field."""
    out = []
    for item in field.metadata:
        for attr, fmt in _CONSTRAINTS:
            value = getattr(item, attr, None)
            if value is not None:
                out.append(fmt.format(value))
    return ", ".join(out)


def rows(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, ...]]:
    """(name, type, default, constraints, description) for every field, nested ones dotted."""
    notes = comments(model)
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        sections = _sections(field.annotation)
        text = field.description or notes.get(name, "")
        if not text and sections:  # a section: its model's docstring, first paragraph
            text = " ".join(inspect.cleandoc(sections[0].__doc__ or "").split("\n\n")[0].split())
        yield path, type_name(field.annotation), default_text(field), constraints(field), text
        for section in sections:
            listed = get_origin(field.annotation) in (list, tuple)
            yield from rows(section, f"{path}[]." if listed else f"{path}.")


def _cell(text: str, code: bool = False) -> str:
    text = text.replace("|", "\\|")
    return f"`{text}`" if code and text else text


def render() -> str:
    """The whole docs/config.md."""
    out = [
        "# Configuration reference",
        "",
        "Generated from the pydantic models in `common/fedhe_common/config/models.py` by",
        "`python -m fedhe_common.config.docs --write docs/config.md`; a test fails when this",
        "file is out of date. Unknown keys are errors; `fedhe config validate FILE` checks a",
        "file. A dotted name is a key inside a section (`participants.min_clients` is",
        "`min_clients:` under `participants:`); `[]` marks the items of a list.",
        "",
    ]
    for title, model, command in CONFIGS:
        doc = inspect.cleandoc(model.__doc__ or "")
        out += [f"## {title} config", "", f"{doc} Read by {command}.", ""]
        out += [
            "| field | type | default | constraints | description |",
            "|---|---|---|---|---|",
        ]
        for name, tp, default, bounds, text in rows(model):
            cells = (
                _cell(name, True),
                _cell(tp, True),
                _cell(default, default != "required" and default != "(section)"),
                _cell(bounds),
                _cell(text),
            )
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Print, write or check the reference; 1 when ``--check`` finds it out of date."""
    parser = argparse.ArgumentParser(prog="python -m fedhe_common.config.docs")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, metavar="PATH", help="write the reference here")
    group.add_argument("--check", type=Path, metavar="PATH", help="fail when PATH is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        args.write.write_text(text, encoding="utf-8")
    elif args.check:
        try:
            current = args.check.read_text(encoding="utf-8")
        except OSError as exc:
            print(f"{args.check}: cannot read: {exc.strerror}", file=sys.stderr)
            return 1
        if current != text:
            print(
                f"{args.check} is out of date: run "
                f"python -m fedhe_common.config.docs --write {args.check}",
                file=sys.stderr,
            )
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
