"""``fedhe model export``: a client's kept global model as a plain torch ``state_dict`` file,
or (``transformers`` zoo models) a ``save_pretrained`` folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import click

from fedhe_common.errors import ConfigError

MAX_CARD_BYTES = 1 << 20


def read_card(card_or_dir: Path) -> tuple[dict[str, object], Path]:
    """The model card (``card.json`` or its folder) and the path of its safetensors file."""
    card_path = card_or_dir / "card.json" if card_or_dir.is_dir() else card_or_dir
    try:
        raw = card_path.read_bytes()[: MAX_CARD_BYTES + 1]
    except OSError as exc:
        raise ConfigError(f"{card_path}: cannot read the model card: {exc.strerror}") from None
    try:
        card = json.loads(raw) if len(raw) <= MAX_CARD_BYTES else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        card = None
    if not isinstance(card, dict) or not isinstance(card.get("model_file"), str):
        raise ConfigError(f"{card_path}: not a FedHE model card")
    model_file = card_path.parent / Path(str(card["model_file"])).name
    return card, model_file


def load_kept_model(card_or_dir: Path) -> tuple[dict[str, object], dict[str, object]]:
    """(card, ordered state_dict) after checking the file's sha256 and layout fingerprint."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    from fedhe_common.mlbridge.flatten import build_manifest

    card, model_file = read_card(card_or_dir)
    try:
        blob = model_file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{model_file}: cannot read: {exc.strerror}") from None
    if hashlib.sha256(blob).hexdigest() != card.get("sha256"):
        raise ConfigError(f"{model_file}: sha256 differs from the card (changed or truncated)")
    try:
        tensors = st_load(blob)
        order = json.loads(_metadata(blob).get("order", "[]"))
    except (SafetensorError, ValueError) as exc:
        raise ConfigError(f"{model_file}: not a readable safetensors file: {exc}") from None
    if sorted(order) != sorted(tensors):
        raise ConfigError(f"{model_file}: tensor order metadata does not match its tensors")
    state = {name: tensors[name] for name in order}
    if build_manifest(state).layout_id != card.get("layout_id"):
        raise ConfigError(f"{model_file}: layout fingerprint differs from the card's")
    return card, state  # type: ignore[return-value]


def _metadata(blob: bytes) -> dict[str, str]:
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    meta = header.get("__metadata__", {})
    return meta if isinstance(meta, dict) else {}


def export_pretrained(card: dict[str, object], state: dict[str, Any], out: Path) -> None:
    """Rebuild the kept ``transformers`` model from the card's config (random weights, nothing
    downloads), load the kept weights into it (strict) and ``save_pretrained(out)``."""
    import transformers

    info = card.get("pretrained")
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise ConfigError(
            "not a transformers zoo model (its card has no 'pretrained' section); "
            "use --format state_dict"
        )
    cls = getattr(transformers, str(info.get("class")), None)
    if not isinstance(cls, type) or not issubclass(cls, transformers.PreTrainedModel):
        raise ConfigError(f"model class {info.get('class')!r} is not a transformers model")
    config_class = cls.config_class
    if config_class is None:
        raise ConfigError(f"model class {cls.__name__} has no configuration class")
    prefix = str(info.get("prefix", "net."))
    inner = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        net = cls(config_class.from_dict(info["config"]))
        net.load_state_dict(inner, strict=True)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"the kept weights do not fit {cls.__name__}: {exc}") from None
    net.save_pretrained(out)


@click.group("model")
def model_group() -> None:
    """The trained model a client kept (``<state_dir>/models/<job>/``)."""


@model_group.command("export")
@click.argument("card_or_dir", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="model.pt or a dir")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["state_dict", "pretrained"]),
    default="state_dict",
    show_default=True,
    help="state_dict: a torch.load file; pretrained: a transformers save_pretrained folder",
)
def export(card_or_dir: Path, out: Path, fmt: str) -> None:
    """Write the kept global model as a torch state_dict (load with torch.load) or, for
    transformers zoo models, a from_pretrained folder."""
    card, state = load_kept_model(card_or_dir)
    if fmt == "pretrained":
        export_pretrained(card, state, out)
    else:
        import torch

        torch.save(state, out)
    click.echo(
        f"{out}: job {card.get('job_id')} round {card.get('round')}, task {card.get('task')}, "
        f"{len(state)} tensors, layout {str(card.get('layout_id'))[:12]}... ({fmt})"
    )
