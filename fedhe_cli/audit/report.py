"""Audit output: a table, the JSON document and a PNG grid of reconstructions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fedhe_cli.audit.runner import Attack
from fedhe_cli.output import print_table

SCALE = 4
GAP = 4
HEADER = 28


def print_summary(rows: list[dict[str, object]], success_ssim: float) -> None:
    """The audit table (one row per mask, ratio and attacker)."""
    print_table(
        f"fedhe audit: DLG on single-sample gradients (success = SSIM > {success_ssim:g})",
        [
            "mask",
            "ratio",
            "attacker",
            "attacks",
            "success",
            "SSIM<0.2 miss",
            "SSIM",
            "MSE",
            "PSNR",
            "label acc",
        ],
        [
            [
                r["mask"],
                r["ratio"],
                r["attacker"],
                r["attacks"],
                r["success_rate"],
                r["not_defended_rate"],
                r["ssim_mean"],
                r["mse_mean"],
                r["psnr_mean"],
                r["label_accuracy"],
            ]
            for r in rows
        ],
    )


def baseline_success(rows: list[dict[str, object]]) -> float | None:
    """Success rate of the attack on the unprotected gradient (None: no baseline row)."""
    base = [float(r["success_rate"]) for r in rows if r["mask"] == "none"]  # type: ignore[arg-type]
    return max(base) if base else None


def verdicts(rows: list[dict[str, object]]) -> list[str]:
    """Plain sentences: which attacker each mask did and did not stop.

    A mask only "stops" an attacker that succeeds without it: when the baseline attack on
    the unprotected gradient failed too, the audit refuses to judge any mask.
    """
    base = baseline_success(rows)
    if base == 0.0:
        return [
            "no conclusion: the baseline attack on the UNPROTECTED gradient also failed "
            "(0% of attacks succeeded), so a failed attack says nothing about a mask; "
            "raise --steps or --restarts (or lower --success-ssim) until the baseline succeeds"
        ]
    out = []
    for r in rows:
        if r["mask"] == "none":
            continue
        rate = float(r["success_rate"])  # type: ignore[arg-type]
        stopped = rate == 0.0
        line = (
            f"{r['mask']} mask at ratio {r['ratio']:g}: "
            f"{'stopped' if stopped else 'did NOT stop'} the {r['attacker']} attacker "
            f"({rate:.0%} of attacks succeeded)"
        )
        if stopped and base is not None and base < 1.0:
            line += f"; without a mask only {base:.0%} succeeded"
        out.append(line)
    return out


def _tile(image: np.ndarray) -> Image.Image:
    pixels = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(pixels, "L").resize(
        (pixels.shape[1] * SCALE, pixels.shape[0] * SCALE), Image.Resampling.NEAREST
    )


def write_grid(path: Path, attacks: list[Attack], originals: list[np.ndarray]) -> None:
    """Rows: victims (restart 0). Columns: original, then each condition and attacker."""
    columns: list[tuple[str, float, str]] = []
    for a in attacks:
        key = (a.mask, a.ratio, a.attacker)
        if key not in columns and not (a.mask == "none" and a.attacker != "mask-aware"):
            columns.append(key)
    h, w = originals[0].shape
    cell_w, cell_h = w * SCALE + GAP, h * SCALE + GAP
    grid = Image.new("L", (cell_w * (len(columns) + 1), HEADER + cell_h * len(originals)), 255)
    draw = ImageDraw.Draw(grid)
    labels = ["original"] + [
        "none" if m == "none" else f"{m[:4]} {p:g} {'aware' if a == 'mask-aware' else 'zero'}"
        for m, p, a in columns
    ]
    for c, label in enumerate(labels):
        draw.text((c * cell_w + 2, 8), label[:20], fill=0)
    for v, original in enumerate(originals):
        grid.paste(_tile(original), (0, HEADER + v * cell_h))
        for c, key in enumerate(columns, start=1):
            match = [
                a
                for a in attacks
                if (a.mask, a.ratio, a.attacker) == key and a.victim == v and a.restart == 0
            ]
            if match:
                grid.paste(_tile(match[0].image), (c * cell_w, HEADER + v * cell_h))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
