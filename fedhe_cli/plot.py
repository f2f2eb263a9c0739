"""``fedhe plot JOB``: a PNG of a job's history, drawn with Pillow (no matplotlib).

Top: accuracy and loss per round (mean over the clients that reported). Bottom: each
client's mean per-step overhead per round (train, encrypt, upload, aggregate, download,
decrypt seconds) as stacked bars, as in FedML-HE's Fig. 13.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from fedhe_cli.admin_cli import server_options
from fedhe_cli.job_history import STEPS, history_rows
from fedhe_cli.output import console
from fedhe_common.config.models import PeerSection
from fedhe_common.errors import FedHEError

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
MIN_SIZE, MAX_SIZE = 400, 4000


def per_round(rows: list[dict[str, Any]], name: str) -> list[tuple[int, float]]:
    """(round, mean of ``name`` over the clients that reported it), rounds with a value."""
    sums: dict[int, list[float]] = {}
    for row in rows:
        if row.get(name) is not None:
            sums.setdefault(int(row["round"]), []).append(float(row[name]))
    return [(n, sum(v) / len(v)) for n, v in sorted(sums.items())]


def per_client_steps(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """client -> mean seconds per round of each step in :data:`STEPS`."""
    acc: dict[str, list[list[float]]] = {}
    for row in rows:
        if not row["client"] or all(row.get(s) is None for s in STEPS):
            continue
        acc.setdefault(row["client"], []).append([float(row.get(s) or 0.0) for s in STEPS])
    return {c: [sum(col) / len(v) for col in zip(*v, strict=True)] for c, v in sorted(acc.items())}


def render(rows: list[dict[str, Any]], title: str, out: Path, size: tuple[int, int]) -> None:
    """Draw the three panels into a PNG at ``out``."""
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 5), title, fill="black")
    half = width // 2
    top = (30, height // 2 - 10)
    _line_panel(draw, (50, top[0], half - 20, top[1]), per_round(rows, "accuracy"), "accuracy",
                COLORS[0])  # fmt: skip
    _line_panel(draw, (half + 50, top[0], width - 20, top[1]), per_round(rows, "loss"), "loss",
                COLORS[1])  # fmt: skip
    _bar_panel(draw, (50, height // 2 + 30, width - 180, height - 40), per_client_steps(rows))
    for i, step in enumerate(STEPS):  # legend
        y = height // 2 + 30 + 18 * i
        draw.rectangle((width - 160, y, width - 148, y + 12), fill=COLORS[i])
        draw.text((width - 142, y), step, fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG")


def _axes(draw: Any, box: tuple[int, int, int, int], label: str, lo: float, hi: float) -> None:
    x0, y0, x1, y1 = box
    draw.line((x0, y0, x0, y1, x1, y1), fill="black")
    draw.text((x0, y0 - 14), label, fill="black")
    draw.text((x0 - 45, y0), f"{hi:.3g}", fill="black")
    draw.text((x0 - 45, y1 - 10), f"{lo:.3g}", fill="black")


def _line_panel(
    draw: Any, box: tuple[int, int, int, int], points: list[tuple[int, float]], label: str,
    color: str,
) -> None:  # fmt: skip
    x0, y0, x1, y1 = box
    values = [v for _, v in points]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    _axes(draw, box, f"{label} per round", lo, hi)
    if not points:
        draw.text((x0 + 10, (y0 + y1) // 2), "no rounds reported", fill="gray")
        return
    first, last = points[0][0], points[-1][0]
    span = max(1, last - first)
    xy = [
        (x0 + (x1 - x0) * (n - first) / span, y1 - (y1 - y0) * (v - lo) / (hi - lo))
        for n, v in points
    ]
    if len(xy) > 1:
        draw.line(xy, fill=color, width=2)
    for x, y in xy:
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=color)
    draw.text((x0, y1 + 4), f"round {first}", fill="black")
    draw.text((x1 - 60, y1 + 4), f"round {last}", fill="black")


def _bar_panel(
    draw: Any, box: tuple[int, int, int, int], steps: dict[str, list[float]]
) -> None:
    x0, y0, x1, y1 = box
    top = max((sum(v) for v in steps.values()), default=0.0) or 1.0
    _axes(draw, box, "seconds per round and step, per client", 0.0, top)
    if not steps:
        draw.text((x0 + 10, (y0 + y1) // 2), "no per-step metrics reported", fill="gray")
        return
    slot = (x1 - x0) / len(steps)
    for i, (client, values) in enumerate(steps.items()):
        left, right = x0 + slot * i + slot * 0.2, x0 + slot * (i + 0.8)
        base = float(y1)
        for j, v in enumerate(values):
            h = (y1 - y0) * v / top
            if h > 0:
                draw.rectangle((left, base - h, right, base), fill=COLORS[j])
            base -= h
        draw.text((left, y1 + 4), client[:16], fill="black")


@click.command("plot")
@click.argument("job_id")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="default: JOB_ID.png")
@click.option("--size", default="1200x800", show_default=True, help="WIDTHxHEIGHT in pixels")
@click.option("--last", type=click.IntRange(min=0), default=0, help="only the last N rounds")
@server_options
def plot(job_id: str, out: Path | None, size: str, last: int, peer: PeerSection) -> None:
    """PNG of a job: accuracy/loss per round, per-step overhead per client (stacked)."""
    from fedhe_cli.admin_cli import _history

    try:
        w, h = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise click.BadParameter("--size must be WIDTHxHEIGHT, e.g. 1200x800") from None
    if not (MIN_SIZE <= w <= MAX_SIZE and MIN_SIZE <= h <= MAX_SIZE):
        raise click.BadParameter(f"--size: each side must be {MIN_SIZE}-{MAX_SIZE} pixels")
    try:
        _, rounds = _history(peer, job_id, last)
    except FedHEError as exc:
        raise click.ClickException(str(exc)) from None
    out = out or Path(f"{job_id}.png")
    render(history_rows(rounds), f"job {job_id}: {len(rounds)} rounds", out, (w, h))
    console.print(f"wrote {out}")
