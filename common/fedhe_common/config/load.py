"""YAML -> pydantic with errors that name the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from fedhe_common.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def format_errors(source: str, exc: ValidationError) -> str:
    """One line per problem: ``file: a.b.c: message``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"{source}: {loc}: {err['msg']}")
    return "\n".join(lines)


def parse_yaml(text: str, model: type[M], source: str = "<string>") -> M:
    """Parse YAML text (safe loader only) into ``model``."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(source, exc)) from None


def load_yaml(path: str | Path, model: type[M]) -> M:
    """Read and validate one YAML file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    return parse_yaml(text, model, str(p))
