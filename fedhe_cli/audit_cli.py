"""``fedhe audit``: measure what a job's encryption mask protects against DLG."""

from __future__ import annotations

import time
from pathlib import Path

import click

from fedhe_cli.output import console, parse_list, write_json
from fedhe_common.config.load import load_yaml
from fedhe_common.config.models import JobConfig


def _ratios(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    return tuple(parse_list(text, float, "ratios", lambda v: 0 < v <= 1, "in (0, 1]"))


@click.command("audit")
@click.option(
    "--job",
    "job_path",
    type=click.Path(exists=True, dir_okay=False),
    help="audit this job's model, data and selective settings "
    "(default: the built-in DLG LeNet on digits at 32x32)",
)
@click.option(
    "--ratios", help="encrypted fractions to test (default: the job's ratio, or 0.1,0.75)"
)
@click.option("--victims", default=2, show_default=True, type=click.IntRange(1, 10))
@click.option("--restarts", default=1, show_default=True, type=click.IntRange(1, 10))
@click.option(
    "--steps",
    default=20,
    show_default=True,
    type=click.IntRange(1, 500),
    help="L-BFGS outer steps per attack",
)
@click.option("--success-ssim", default=0.5, show_default=True)
@click.option(
    "--find-ratio",
    is_flag=True,
    help="bisect the smallest ratio that stops the mask-aware attacker",
)
@click.option(
    "--target-ssim",
    default=0.5,
    show_default=True,
    help="with --find-ratio: an attack succeeds above this SSIM",
)
@click.option("--json", "json_path", type=click.Path(path_type=Path))
@click.option("--png", "png_path", type=click.Path(path_type=Path))
def audit(
    job_path: str | None,
    ratios: str | None,
    victims: int,
    restarts: int,
    steps: int,
    success_ssim: float,
    find_ratio: bool,
    target_ssim: float,
    json_path: Path | None,
    png_path: Path | None,
) -> None:
    """Run DLG on single-sample gradients for sensitivity and random masks, two attackers."""
    from fedhe_cli.audit import report, runner

    job = load_yaml(job_path, JobConfig) if job_path else runner.builtin_job()
    chosen = _ratios(ratios) or (
        (job.selective.ratio,) if job.selective.enabled and job_path else (0.1, 0.75)
    )
    settings = runner.AuditSettings(
        victims=victims, restarts=restarts, ratios=chosen, steps=steps, success_ssim=success_ssim
    )
    t0 = time.perf_counter()
    target = runner.load_target(job, victims)
    console.print(
        f"auditing {job.model.name} ({target.manifest.total:,} parameters) on "
        f"{job.data.dataset}: {victims} victims x {restarts} restarts, ratios {chosen}"
    )
    attacks = runner.run_attacks(target, settings, chosen, progress=console.log)
    rows = runner.summarize(attacks, success_ssim)
    report.print_summary(rows, success_ssim)
    for line in report.verdicts(rows):
        console.print(line)
    doc: dict[str, object] = {
        "model": job.model.name,
        "dataset": job.data.dataset,
        "success_ssim": success_ssim,
        "victims": victims,
        "restarts": restarts,
        "conditions": rows,
    }
    doc["baseline_success_rate"] = report.baseline_success(rows)
    if find_ratio and report.baseline_success(rows) == 0.0:
        console.print("--find-ratio skipped: the baseline attack failed, no ratio can be judged")
        doc["find_ratio"] = None
    elif find_ratio:
        found, probes = runner.find_ratio(target, settings, target_ssim, progress=console.log)
        console.print(
            f"smallest sensitivity-mask ratio with no mask-aware success at SSIM > "
            f"{target_ssim:g}: {found:g}"
        )
        doc["find_ratio"] = {"target_ssim": target_ssim, "ratio": found, "probes": probes}
    console.print(f"audit took {time.perf_counter() - t0:.0f}s")
    if png_path:
        report.write_grid(png_path, attacks, [x[0, 0].numpy() for x, _ in target.victims])
        console.print(f"wrote {png_path}")
    if json_path:
        write_json(json_path, doc)
