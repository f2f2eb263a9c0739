"""The trained model out: each job's latest global model as safetensors plus a JSON card."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from safetensors.torch import save as st_save
from torch import nn

from fedhe_common.storage.atomic import atomic_write

MODEL_FILE = "global.safetensors"
CARD_FILE = "card.json"


def job_model_dir(state_dir: str | Path, job_id: str) -> Path:
    """``<state_dir>/models/<job_id>``: one folder per job, never shared between jobs."""
    return Path(state_dir) / "models" / job_id


def save_global(
    state_dir: str | Path,
    job_id: str,
    number: int,
    model: nn.Module,
    layout_id: str,
    task: str,
    metrics: dict[str, float],
) -> Path:
    """Write the global model of round ``number`` and its card (atomically); return the card."""
    folder = job_model_dir(state_dir, job_id)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    order = json.dumps(list(state))
    blob = st_save(state, metadata={"job_id": job_id, "round": str(number), "order": order})
    atomic_write(folder / MODEL_FILE, blob, 0o600)
    card = {
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
    atomic_write(folder / CARD_FILE, (json.dumps(card, indent=2) + "\n").encode(), 0o600)
    return folder / CARD_FILE
