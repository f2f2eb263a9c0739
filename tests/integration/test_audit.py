"""`fedhe audit`: JSON contract, PNG grid, find-ratio, on a tiny setting."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from fedhe_cli.app import cli
from fedhe_cli.audit.report import verdicts


def test_audit_json_png_and_find_ratio(tmp_path: Path) -> None:
    out, png = tmp_path / "audit.json", tmp_path / "audit.png"
    result = CliRunner().invoke(
        cli,
        [
            "audit",
            "--victims",
            "1",
            "--steps",
            "12",
            "--ratios",
            "0.1",
            "--find-ratio",
            "--json",
            str(out),
            "--png",
            str(png),
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    keys = {"mask", "ratio", "attacker", "attacks", "success_rate", "ssim_mean", "mse_mean"}
    seen = set()
    for row in doc["conditions"]:
        assert keys <= set(row)
        assert row["attacker"] in ("mask-aware", "zero-fill")
        assert 0.0 <= row["success_rate"] <= 1.0
        seen.add((row["mask"], row["attacker"]))
    assert {("none", "mask-aware"), ("sensitivity", "mask-aware"), ("random", "zero-fill")} <= seen
    none = next(r for r in doc["conditions"] if r["mask"] == "none")
    assert none["ssim_mean"] > 0.5  # an unprotected gradient leaks within 12 steps
    assert 0.0 < doc["find_ratio"]["ratio"] <= 1.0 and doc["find_ratio"]["probes"]
    assert "did NOT stop the mask-aware attacker" in result.output
    width, height = Image.open(png).size
    assert width > height > 0


def test_audit_rejects_bad_ratios() -> None:
    result = CliRunner().invoke(cli, ["audit", "--ratios", "1.5"])
    assert result.exit_code != 0 and "ratios" in result.output


def test_audit_refuses_to_judge_when_the_baseline_attack_fails(tmp_path: Path) -> None:
    # SSIM never exceeds 1: no attack can succeed, the unprotected baseline included.
    out = tmp_path / "audit.json"
    result = CliRunner().invoke(
        cli,
        [
            "audit", "--victims", "1", "--steps", "1", "--ratios", "0.1",
            "--success-ssim", "1.0", "--find-ratio", "--json", str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "stopped" not in result.output
    assert "no conclusion" in result.output and "baseline" in result.output
    doc = json.loads(out.read_text())
    assert doc["baseline_success_rate"] == 0.0 and doc["find_ratio"] is None


def test_verdicts_judge_masks_against_the_baseline() -> None:
    def row(mask: str, rate: float, attacker: str = "mask-aware") -> dict[str, object]:
        return {"mask": mask, "ratio": 0.0 if mask == "none" else 0.5, "attacker": attacker,
                "success_rate": rate}

    failed = verdicts([row("none", 0.0), row("sensitivity", 0.0), row("random", 0.0)])
    assert len(failed) == 1 and failed[0].startswith("no conclusion")
    half = verdicts([row("none", 0.5), row("sensitivity", 0.0), row("random", 0.5)])
    assert half == [
        "sensitivity mask at ratio 0.5: stopped the mask-aware attacker (0% of attacks "
        "succeeded); without a mask only 50% succeeded",
        "random mask at ratio 0.5: did NOT stop the mask-aware attacker (50% of attacks "
        "succeeded)",
    ]
    full = verdicts([row("none", 1.0), row("sensitivity", 0.0, "zero-fill")])
    assert full == ["sensitivity mask at ratio 0.5: stopped the zero-fill attacker (0% of "
                    "attacks succeeded)"]
