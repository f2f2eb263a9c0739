"""The trained model out: each job's global model as safetensors plus a JSON card.

``<state_dir>/models/<job_id>/`` holds the latest round's model; with ``keep="every"``
each round's is also kept in ``round-<n>/`` beside it.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save
from torch import nn

from fedhe_common.storage.atomic import atomic_write

MODEL_FILE = "global.safetensors"
CARD_FILE = "card.json"
KEEP_CHOICES = ("last", "every")


def job_model_dir(state_dir: str | Path, job_id: str) -> Path:
    """``<state_dir>/models/<job_id>``: one folder per job, never shared between jobs."""
    return Path(state_dir) / "models" / job_id


def round_dir(state_dir: str | Path, job_id: str, number: int) -> Path:
    """``<state_dir>/models/<job_id>/round-<n>``: round ``n``'s model when every round is kept."""
    return job_model_dir(state_dir, job_id) / f"round-{number}"


def pretrained_info(model: nn.Module) -> dict[str, Any] | None:
    """For a zoo wrapper around a ``transformers`` model (``model.net``): its class and config."""
    net = getattr(model, "net", None)
    config = getattr(net, "config", None)
    if net is None or config is None or not hasattr(net, "save_pretrained"):
        return None
    return {
        "class": type(net).__name__,
        "config": json.loads(config.to_json_string()),
        "prefix": "net.",
    }


def save_global(
    state_dir: str | Path,
    job_id: str,
    number: int,
    model: nn.Module,
    layout_id: str,
    task: str,
    metrics: dict[str, float],
    keep: str = "last",
) -> Path:
    """Write round ``number``'s global model and card (atomically); return the job's card.

    ``keep="every"`` also writes them to ``round-<n>/`` (never overwritten by a later round).
    """
    if keep not in KEEP_CHOICES:
        raise ValueError(f"keep must be one of {KEEP_CHOICES}, got {keep!r}")
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    order = json.dumps(list(state))
    blob = st_save(state, metadata={"job_id": job_id, "round": str(number), "order": order})
    card: dict[str, Any] = {
        "job_id": job_id,
        "round": number,
        "layout_id": layout_id,
        "task": task,
        "metrics": metrics,
        "model_file": MODEL_FILE,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "torch": torch.__version__,
        "saved_unix": round(time.time(), 3),
    }
    info = pretrained_info(model)
    if info is not None:
        card["pretrained"] = info
    folders = [job_model_dir(state_dir, job_id)]
    if keep == "every":
        folders.insert(0, round_dir(state_dir, job_id, number))
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / MODEL_FILE, blob, 0o600)
        atomic_write(folder / CARD_FILE, (json.dumps(card, indent=2) + "\n").encode(), 0o600)
    return folders[-1] / CARD_FILE
