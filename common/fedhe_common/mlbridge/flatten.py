"""torch ``state_dict`` <-> flat float64 vector with a :class:`LayoutManifest` (client side)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from fedhe_common.errors import InvalidArgumentError
from fedhe_common.mlbridge.layout import ExcludedEntry, LayoutEntry, LayoutManifest


def build_manifest(state: Mapping[str, torch.Tensor]) -> LayoutManifest:
    """Float tensors in state order become entries; everything else is excluded explicitly."""
    entries: list[LayoutEntry] = []
    excluded: list[ExcludedEntry] = []
    offset = 0
    for name, tensor in state.items():
        shape = tuple(int(d) for d in tensor.shape)
        dtype = str(tensor.dtype).removeprefix("torch.")
        if not tensor.is_floating_point():
            excluded.append(ExcludedEntry(name, shape, dtype, "non-float buffer, kept locally"))
            continue
        entries.append(LayoutEntry(name, shape, dtype, offset, tensor.numel()))
        offset += tensor.numel()
    return LayoutManifest(tuple(entries), tuple(excluded))


def flatten(state: Mapping[str, torch.Tensor]) -> tuple[np.ndarray, LayoutManifest]:
    """Concatenate the float tensors of ``state`` into one float64 vector."""
    manifest = build_manifest(state)
    vec = np.empty(manifest.total, dtype=np.float64)
    for e in manifest.entries:
        vec[e.offset : e.offset + e.length] = (
            state[e.name].detach().to("cpu", torch.float64).reshape(-1).numpy()
        )
    return vec, manifest


def unflatten(
    vector: np.ndarray, manifest: LayoutManifest, base: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Build a state dict from ``vector``; excluded entries are copied from ``base``."""
    if vector.shape != (manifest.total,):
        raise InvalidArgumentError(
            f"vector of shape {vector.shape} does not fit layout of {manifest.total} values"
        )
    if build_manifest(base).layout_id != manifest.layout_id:
        raise InvalidArgumentError("base state dict has another layout than the manifest")
    out: dict[str, torch.Tensor] = {}
    for name, tensor in base.items():
        out[name] = tensor.detach().clone()
    for e in manifest.entries:
        values = torch.from_numpy(np.ascontiguousarray(vector[e.offset : e.offset + e.length]))
        out[e.name] = values.reshape(e.shape).to(base[e.name].dtype).to(base[e.name].device)
    return out
