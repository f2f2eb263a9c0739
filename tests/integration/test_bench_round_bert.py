"""The BERT-base round of issue 12 (slow: minutes on 2 cores; ``pytest -m slow``).

Full encryption of BERT-base, 3 clients, one round through keyauth, server and client
processes; writes docs/bench_round_bert.json and checks the issue's targets.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedhe_cli.bench.round_bench import run_round_bench

DOC = Path(__file__).resolve().parents[2] / "docs" / "bench_round_bert.json"


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_bert_base_full_encryption_round_meets_the_memory_targets() -> None:
    result = run_round_bench("bert-base", memory_only=True)
    DOC.write_text(json.dumps(result, indent=2) + "\n")
    memory = result["memory_round"]
    assert isinstance(memory, dict)
    assert memory["n_values"] >= 109_482_240
    targets = memory["targets"]
    assert targets["met"], json.dumps(result, indent=2)
