"""The trained head out: ``<state_dir>/models/<job_id>/`` with ``head.safetensors`` (a
one-tensor state_dict, so ``fedhe model export`` takes it like any kept model), ``head.npz``
and ``card.json`` (the preprocessing from raw features to the head's input, metrics)."""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedhe_common.storage.atomic import atomic_write

HEAD_FILE = "head.npz"
MODEL_FILE = "head.safetensors"
CARD_FILE = "card.json"


def save_head(state_dir: str | Path, job_id: str, head: Any, metrics: dict[str, float]) -> Path:
    """``<state_dir>/models/<job_id>/head.npz`` (the weights, bias column first) and
    ``card.json`` (the preprocessing that maps raw features to the head's input, metrics)."""
    folder = Path(state_dir) / "models" / job_id
    folder.mkdir(parents=True, exist_ok=True)
    weights = np.asarray(getattr(head, "weights", getattr(head, "W", None)), dtype=np.float64)
    buf = io.BytesIO()
    np.savez(buf, W=weights)
    blob = buf.getvalue()
    prep: Any = getattr(head, "preprocessor", getattr(head, "preprocessing", None))
    card = {
        "job_id": job_id,
        "kind": "transfer-head",
        "classes": int(weights.shape[0]),
        "features": int(weights.shape[1]),
        "preprocessing": json.loads(prep.to_json()) if hasattr(prep, "to_json") else prep,
        "best_epoch": int(head.best_epoch),
        "val_loss": list(getattr(head, "val_loss", [])),
        "val_acc": list(getattr(head, "val_acc", [])),
        "metrics": metrics,
        "saved_unix": round(time.time(), 3),
    }
    atomic_write(folder / HEAD_FILE, blob, 0o600)
    card.update(_safetensors_head(folder, job_id, weights))
    text = json.dumps(card, indent=2, default=str) + "\n"
    atomic_write(folder / CARD_FILE, text.encode(), 0o600)
    return folder / CARD_FILE


def _safetensors_head(folder: Path, job_id: str, weights: np.ndarray) -> dict[str, str]:
    """The head as a one-tensor state_dict in safetensors, so ``fedhe model export`` takes
    it like any kept model (the card's ``preprocessing`` maps raw features to its input)."""
    import torch
    from safetensors.torch import save as st_save

    from fedhe_common.mlbridge.flatten import build_manifest

    state = {"weights": torch.from_numpy(np.ascontiguousarray(weights))}
    blob = st_save(state, metadata={"job_id": job_id, "order": json.dumps(list(state))})
    atomic_write(folder / MODEL_FILE, blob, 0o600)
    return {
        "model_file": MODEL_FILE,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "layout_id": build_manifest(state).layout_id,
        "npz_file": HEAD_FILE,
        "npz_sha256": hashlib.sha256((folder / HEAD_FILE).read_bytes()).hexdigest(),
        "task": "transfer-head",
    }
