"""Render deploy/helm/fedhe without helm: the chart's templates use only a small subset of
Go templates, which this renders the way ``helm template`` does.

Subset: ``{{ .Values.a.b }}``, ``{{ .Release.Name }}``, ``{{ range $x := .Values.list }}``
... ``{{ end }}`` with ``{{ $x.field }}`` and ``{{ $.Values... }}`` inside, and the ``{{-``
/ ``-}}`` whitespace trims. Anything else is an error, so the chart cannot drift into
syntax this renderer would get wrong.

Usage: ``python deploy/helm/render.py [--release NAME] [--values FILE]`` prints the manifests.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parent / "fedhe"
TAG = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
RANGE = re.compile(r"^range\s+(\$\w+)\s*:=\s*(\S+)$")
REF = re.compile(r"^(\$\w*|)(\.[A-Za-z_][\w.]*)?$")


class TemplateError(ValueError):
    """A template outside the supported subset, or a value that does not exist."""


def _lookup(expr: str, scope: dict[str, Any]) -> Any:
    match = REF.match(expr)
    if not match or expr in ("", "$"):
        raise TemplateError(f"unsupported template expression {{{{ {expr} }}}}")
    var, path = match.group(1), match.group(2) or ""
    node: Any = scope[var] if var else scope["."]
    if var and var not in scope:
        raise TemplateError(f"undefined variable {var}")
    for part in path.strip(".").split(".") if path else []:
        if not isinstance(node, dict) or part not in node:
            raise TemplateError(f"no value {expr}")
        node = node[part]
    return node


def _parse(tokens: list[tuple[str, Any]], pos: int, stop: bool) -> tuple[list[Any], int]:
    """Nodes up to the matching ``end`` (when ``stop``): text, ("expr", e), ("range", ...)."""
    nodes: list[Any] = []
    while pos < len(tokens):
        kind, value = tokens[pos]
        pos += 1
        if kind == "text":
            nodes.append(value)
        elif value == "end":
            if not stop:
                raise TemplateError("{{ end }} without range")
            return nodes, pos
        elif value.startswith("range"):
            match = RANGE.match(value)
            if not match:
                raise TemplateError(f"unsupported range: {value}")
            body, pos = _parse(tokens, pos, True)
            nodes.append(("range", match.group(1), match.group(2), body))
        else:
            nodes.append(("expr", value))
    if stop:
        raise TemplateError("range without {{ end }}")
    return nodes, pos


def _tokens(text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    last, trim_next = 0, False
    for match in TAG.finditer(text):
        chunk = text[last : match.start()]
        if trim_next:
            chunk = chunk.lstrip()
        if match.group(1):
            chunk = chunk.rstrip()
        out.append(("text", chunk))
        out.append(("tag", match.group(2)))
        trim_next, last = bool(match.group(3)), match.end()
    tail = text[last:]
    out.append(("text", tail.lstrip() if trim_next else tail))
    return out


def _emit(nodes: list[Any], scope: dict[str, Any]) -> str:
    parts: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif node[0] == "expr":
            value = _lookup(node[1], scope)
            if isinstance(value, dict | list):
                raise TemplateError(f"{node[1]} is not a scalar")
            parts.append(str(value))
        else:
            _, var, source, body = node
            items = _lookup(source, scope)
            if not isinstance(items, list):
                raise TemplateError(f"range over {source}: not a list")
            for item in items:
                parts.append(_emit(body, {**scope, var: item}))
    return "".join(parts)


def render_text(text: str, values: dict[str, Any], release: str) -> str:
    """One template rendered."""
    root = {"Values": values, "Release": {"Name": release}}
    nodes, _ = _parse(_tokens(text), 0, False)
    return _emit(nodes, {".": root, "$": root})


def render_chart(
    release: str = "fedhe", values: dict[str, Any] | None = None, chart: Path = CHART
) -> list[dict[str, Any]]:
    """Every manifest of the chart, parsed."""
    merged = yaml.safe_load((chart / "values.yaml").read_text())
    merged.update(values or {})
    docs: list[dict[str, Any]] = []
    for path in sorted((chart / "templates").glob("*.yaml")):
        text = render_text(path.read_text(), merged, release)
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def main() -> int:
    parser = argparse.ArgumentParser(description="render the FedHE chart (helm template)")
    parser.add_argument("--release", default="fedhe")
    parser.add_argument("--values", type=Path, help="a values file merged over values.yaml")
    args = parser.parse_args()
    extra = yaml.safe_load(args.values.read_text()) if args.values else None
    print(yaml.safe_dump_all(render_chart(args.release, extra), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
