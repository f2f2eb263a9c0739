"""LoRA fine-tuning (the ``peft`` library): only adapters and the head travel.

:func:`apply_peft` injects LoRA adapters into a model in place and freezes everything else
except the head; :func:`travelling_state` is what is flattened, encrypted and aggregated;
:func:`frozen_fingerprint` is the sha256 of the frozen base, which every client must share
(it is folded into the layout fingerprint, so the server's layout pin checks it too).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from fedhe_common.config.models import PeftSection
from fedhe_common.errors import ConfigError, ManifestMismatchError
from fedhe_common.mlbridge.layout import ExcludedEntry, LayoutManifest

FROZEN_ENTRY = "peft:frozen-base"
ADAPTER_MARK = "lora_"
_DEFAULT_TARGETS = (("query", "value"), ("c_attn",), ("q_proj", "v_proj"))


@dataclass(frozen=True)
class PeftInfo:
    """What a LoRA model carries: the trainable names and the frozen base's fingerprint."""

    trainable: tuple[str, ...]
    frozen_values: int
    frozen_sha256: str


def _leaf_names(model: nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}


def default_targets(model: nn.Module) -> list[str]:
    """The attention projections LoRA adapts by default (BERT, GPT-2, ViT/Llama names)."""
    leaves = _leaf_names(model)
    for names in _DEFAULT_TARGETS:
        if all(n in leaves for n in names):
            return list(names)
    raise ConfigError(
        "peft: no query/value (BERT), c_attn (GPT-2) or q_proj/v_proj (ViT, Llama) modules in "
        "this model; set peft.target_modules"
    )


def default_head(model: nn.Module) -> list[str]:
    """The model's last ``nn.Linear`` (its classification head), by full module name."""
    last = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ConfigError("peft: the model has no Linear head; set peft.modules_to_save")
    return [last[-1]]


def apply_peft(model: nn.Module, section: PeftSection) -> tuple[nn.Module, PeftInfo]:
    """Inject LoRA adapters in place, freeze the base, unfreeze adapters and head."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = section.target_modules or default_targets(model)
    head = section.modules_to_save or default_head(model)
    missing = [t for t in targets if t not in _leaf_names(model)]
    if missing:
        raise ConfigError(f"peft.target_modules: no module named {missing} in this model")
    modules = dict(model.named_modules())
    for name in head:
        if name not in modules and not any(n.endswith("." + name) for n in modules):
            raise ConfigError(f"peft.modules_to_save: no module {name!r} in this model")
    config = LoraConfig(
        r=section.r,
        lora_alpha=section.alpha,
        lora_dropout=section.dropout,
        target_modules=targets,
        fan_in_fan_out="c_attn" in targets,  # GPT-2's Conv1D stores the weight transposed
    )
    model = inject_adapter_in_model(config, model)
    for p in model.parameters():
        p.requires_grad_(False)
    trainable: list[str] = []
    for name, p in model.named_parameters():
        if ADAPTER_MARK in name or _under(name, head):
            p.requires_grad_(True)
            trainable.append(name)
    info = PeftInfo(tuple(trainable), *_fingerprint(model, set(trainable)))
    return model, info


def _under(param: str, modules: list[str]) -> bool:
    """True when ``param`` belongs to one of ``modules`` (a full name or a name suffix)."""
    owner = param.rsplit(".", 1)[0]
    return any(owner == m or owner.endswith("." + m) for m in modules)


def _fingerprint(model: nn.Module, trainable: set[str]) -> tuple[int, str]:
    """Number of frozen values and sha256 over their names, shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    count = 0
    for name, tensor in model.state_dict().items():
        if name in trainable:
            continue
        t = tensor.detach()
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
        if t.device.type != "meta":  # a layout-only model has no bytes to hash
            flat = t.to("cpu").contiguous().reshape(-1)
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        count += t.numel()
    return count, digest.hexdigest()


def frozen_fingerprint(model: nn.Module, info: PeftInfo) -> str:
    """The frozen base's sha256 now (equal to ``info.frozen_sha256`` unless it changed)."""
    return _fingerprint(model, set(info.trainable))[1]


def travelling_state(model: nn.Module, info: PeftInfo | None) -> dict[str, torch.Tensor]:
    """What is flattened: the trainable parameters under LoRA, else the whole state."""
    if info is None:
        return dict(model.state_dict())
    params = dict(model.named_parameters())
    return {name: params[name] for name in info.trainable}


def with_base(manifest: LayoutManifest, info: PeftInfo) -> LayoutManifest:
    """``manifest`` plus the frozen base's fingerprint (so ``layout_id`` covers it)."""
    entry = ExcludedEntry(
        FROZEN_ENTRY,
        (info.frozen_values,),
        "sha256",
        f"frozen base, never travels; sha256 {info.frozen_sha256}",
    )
    return LayoutManifest(manifest.entries, (*manifest.excluded, entry))


def check_base(expected: str | None, info: PeftInfo) -> None:
    """Refuse a frozen base whose sha256 differs from the job's ``peft.base_sha256``."""
    if expected and expected != info.frozen_sha256:
        raise ManifestMismatchError(
            f"this client's frozen base sha256 {info.frozen_sha256[:16]}... differs from the "
            f"job's peft.base_sha256 {expected[:16]}...: every site must start LoRA from the "
            "same base weights; refusing the job"
        )


def load_trainable(model: nn.Module, state: Mapping[str, torch.Tensor], info: PeftInfo) -> None:
    """Copy the trainable tensors of ``state`` into ``model`` (the frozen base untouched)."""
    params = dict(model.named_parameters())
    if set(state) != set(info.trainable):
        raise ManifestMismatchError("the global adapters do not match this model's adapters")
    with torch.no_grad():
        for name in info.trainable:
            params[name].copy_(state[name].to(params[name].dtype))
