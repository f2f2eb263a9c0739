"""Run the DLG audit for a job's model: conditions x attackers x victims x restarts."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from fedhe_cli.audit.dlg import Attacker, dlg_attack, victim_gradient
from fedhe_cli.audit.metrics import mse, psnr, ssim
from fedhe_client.data import load_dataset
from fedhe_client.models import build_model
from fedhe_common.config.load import parse_yaml
from fedhe_common.config.models import JobConfig
from fedhe_common.mlbridge.flatten import build_manifest
from fedhe_common.mlbridge.layout import LayoutManifest
from fedhe_common.mlbridge.masks import EncryptionMask, top_p_mask
from fedhe_common.mlbridge.sensitivity import sensitivity_map

BUILTIN_JOB = """
job: {name: audit-lenet-digits, rounds: 1, seed: 0}
model: {name: lenet-dlg, init: dlg}
data: {dataset: digits32}
selective: {ratio: 0.1, sensitivity: exact, samples: 32}
"""
ATTACKERS: tuple[Attacker, ...] = ("mask-aware", "zero-fill")
NOT_DEFENDED_SSIM = 0.2


@dataclass(frozen=True)
class AuditSettings:
    """How much attacking to do (the defaults finish in a few minutes on 2 cores)."""

    victims: int = 2
    restarts: int = 1
    ratios: tuple[float, ...] = (0.1, 0.75)
    steps: int = 20
    max_iter: int = 20
    success_ssim: float = 0.5
    seed: int = 0


@dataclass
class Attack:
    """One attack's outcome."""

    mask: str
    ratio: float
    attacker: str
    victim: int
    restart: int
    encrypted_fraction: float
    ssim: float
    mse: float
    psnr: float
    label_ok: bool
    loss: float
    image: np.ndarray = field(repr=False)


@dataclass
class AuditTarget:
    """The job's model at initialisation, its data and its sensitivity scores."""

    job: JobConfig
    model: torch.nn.Module
    manifest: LayoutManifest
    scores: np.ndarray
    victims: list[tuple[torch.Tensor, int]]
    classes: int
    image_shape: tuple[int, int, int]


def load_target(job: JobConfig, victims: int) -> AuditTarget:
    """Build the model as clients do at round 0 and pick victims with distinct labels."""
    data = load_dataset(job.data, job.job.seed)
    torch.manual_seed(job.job.seed)
    model = build_model(job.model.name, data.shape, data.classes, job.model.hidden, job.model.init)
    manifest = build_manifest(model.state_dict())
    k = job.selective.samples
    scores = sensitivity_map(
        model,
        torch.from_numpy(data.x_train[:k]),
        torch.from_numpy(data.y_train[:k]),
        job.selective.sensitivity,
        job.job.seed,
    )
    picked: list[tuple[torch.Tensor, int]] = []
    seen: set[int] = set()
    for x, y in zip(data.x_test, data.y_test, strict=True):
        if int(y) not in seen:
            seen.add(int(y))
            picked.append((torch.from_numpy(x[None]), int(y)))
        if len(picked) == victims:
            break
    return AuditTarget(job, model, manifest, scores, picked, data.classes, data.shape)


def visible_tensors(
    model: torch.nn.Module, manifest: LayoutManifest, mask: EncryptionMask | None
) -> list[torch.Tensor]:
    """Per-parameter 0/1 tensors: 1 where the gradient entry travels in plaintext."""
    keep = np.ones(manifest.total) if mask is None else (~mask.boolean()).astype(np.float64)
    entries = {e.name: e for e in manifest.entries}
    out = []
    for name, p in model.named_parameters():
        e = entries[name]
        out.append(
            torch.from_numpy(keep[e.offset : e.offset + e.length]).reshape(p.shape).to(p.dtype)
        )
    return out


def _random_mask(total: int, count: int, seed: list[int]) -> EncryptionMask:
    chosen = np.random.default_rng(seed).choice(total, size=count, replace=False)
    return EncryptionMask(total, np.sort(chosen).astype(np.int64))


def run_attacks(
    target: AuditTarget,
    settings: AuditSettings,
    ratios: tuple[float, ...],
    kinds: tuple[str, ...] = ("none", "sensitivity", "random"),
    attackers: tuple[Attacker, ...] = ATTACKERS,
    progress: Callable[[str], None] = lambda s: None,
) -> list[Attack]:
    """Every (condition, attacker, victim, restart) attack."""
    sel = target.job.selective
    results = []
    for v, (x, label) in enumerate(target.victims):
        grads = victim_gradient(target.model, x, label)
        for r in range(settings.restarts):
            conditions: list[tuple[str, float, EncryptionMask | None]] = []
            if "none" in kinds:
                conditions.append(("none", 0.0, None))
            for p in ratios:
                smask = top_p_mask(
                    target.scores, p, target.manifest, sel.include_first_last, sel.include_layers
                )
                if "sensitivity" in kinds:
                    conditions.append(("sensitivity", p, smask))
                if "random" in kinds:
                    seed = [settings.seed, v, r, int(p * 1000)]
                    conditions.append(
                        ("random", p, _random_mask(target.manifest.total, smask.count, seed))
                    )
            for name, p, mask in conditions:
                visible = visible_tensors(target.model, target.manifest, mask)
                for attacker in attackers if mask is not None else attackers[:1]:
                    t0 = time.perf_counter()
                    res = dlg_attack(
                        target.model,
                        grads,
                        visible,
                        attacker,
                        target.image_shape,
                        target.classes,
                        seed=1000 * settings.seed + 17 * v + r,
                        steps=settings.steps,
                        max_iter=settings.max_iter,
                    )
                    rec = res.image.clamp(0, 1)[0, 0].numpy()
                    gt = x[0, 0].numpy()
                    attack = Attack(
                        name,
                        p,
                        attacker,
                        v,
                        r,
                        mask.ratio if mask is not None else 0.0,
                        ssim(gt, rec),
                        mse(gt, rec),
                        psnr(gt, rec),
                        res.label == label,
                        res.loss,
                        rec,
                    )
                    results.append(attack)
                    if mask is None:  # both attackers face the same problem
                        results.append(Attack(**{**attack.__dict__, "attacker": attackers[-1]}))
                    progress(
                        f"victim {v} restart {r} {name}@{p:g} {attacker}: "
                        f"SSIM {attack.ssim:.3f} ({time.perf_counter() - t0:.1f}s)"
                    )
    return results


def summarize(attacks: list[Attack], success_ssim: float) -> list[dict[str, object]]:
    """One row per (mask, ratio, attacker): the JSON contract of ``fedhe audit``."""
    groups: dict[tuple[str, float, str], list[Attack]] = {}
    for a in attacks:
        groups.setdefault((a.mask, a.ratio, a.attacker), []).append(a)
    rows = []
    for (mask, ratio, attacker), group in groups.items():
        best: dict[int, Attack] = {}
        for a in group:  # the attacker can see its matching loss: keep its best restart
            if a.victim not in best or a.loss < best[a.victim].loss:
                best[a.victim] = a
        rows.append(
            {
                "mask": mask,
                "ratio": ratio,
                "attacker": attacker,
                "attacks": len(group),
                "encrypted_fraction": float(np.mean([a.encrypted_fraction for a in group])),
                "success_rate": float(np.mean([a.ssim > success_ssim for a in group])),
                "not_defended_rate": float(np.mean([a.ssim >= NOT_DEFENDED_SSIM for a in group])),
                "ssim_mean": float(np.mean([a.ssim for a in group])),
                "mse_mean": float(np.mean([a.mse for a in group])),
                "psnr_mean": float(np.mean([min(a.psnr, 100.0) for a in group])),
                "label_accuracy": float(np.mean([a.label_ok for a in group])),
                "attacker_best_ssim_mean": float(np.mean([a.ssim for a in best.values()])),
            }
        )
    return rows


def find_ratio(
    target: AuditTarget,
    settings: AuditSettings,
    target_ssim: float,
    resolution: float = 0.05,
    progress: Callable[[str], None] = lambda s: None,
) -> tuple[float, list[dict[str, float]]]:
    """Smallest sensitivity-mask ratio whose mask-aware success rate is 0 (bisection).

    Success means SSIM > ``target_ssim``. Assumes success falls as the ratio grows.
    """
    lo, hi = 0.0, 1.0
    probes = []
    while hi - lo > resolution:
        mid = round((lo + hi) / 2, 4)
        attacks = run_attacks(target, settings, (mid,), ("sensitivity",), ("mask-aware",), progress)
        rate = float(np.mean([a.ssim > target_ssim for a in attacks]))
        probes.append(
            {"ratio": mid, "success_rate": rate, "ssim_max": float(max(a.ssim for a in attacks))}
        )
        if rate == 0.0:
            hi = mid
        else:
            lo = mid
    return hi, probes


def builtin_job() -> JobConfig:
    """The built-in audit target: the DLG LeNet on digits upsampled to 32x32."""
    return parse_yaml(BUILTIN_JOB, JobConfig, "built-in audit job")
