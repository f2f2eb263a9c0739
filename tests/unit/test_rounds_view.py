"""`fedhe simulate`'s round lines: mask rounds, missing metrics, key generation, aborts."""

from __future__ import annotations

from fedhe_cli.rounds_view import RoundLines, job_active
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.rpc.states import round_state


def _round(number: int, state: str, **metrics: float) -> pb.RoundSummary:
    return pb.RoundSummary(
        round=number, state=round_state(state), contributors=2, seconds=1.5, upload_bytes=2_000_000,
        metrics=metrics,
    )


def test_job_in_key_generation_is_active() -> None:
    assert job_active("KEYGEN") and job_active("RUNNING") and job_active("running")
    assert not any(job_active(s) for s in ("FINISHED", "FAILED", "CANCELLED"))


def test_mask_round_prints_without_accuracy() -> None:
    view = RoundLines(rounds=1, mask_round=True)
    lines = view.lines([_round(0, "PUBLISHED"), _round(1, "OPEN")], final=False)
    assert lines == [
        "round 0 (mask)  sensitivity maps of 2 clients summed  upload 1.000 MB/client  "
        "round 1.5 s"
    ]
    lines = view.lines([_round(0, "PUBLISHED"), _round(1, "PUBLISHED", accuracy=0.9, loss=0.3)],
                       final=False)
    assert lines == [
        "round 1/1  accuracy 0.9000  loss 0.3000  upload 1.000 MB/client  round 1.5 s  HE 0.000 s"
    ]
    assert view.last == {"accuracy": 0.9, "loss": 0.3}


def test_round_without_metrics_waits_until_the_job_ends() -> None:
    view = RoundLines(rounds=2, mask_round=False)
    history = [_round(1, "ABORTED"), _round(2, "PUBLISHED"), _round(3, "DECRYPTING")]
    assert view.lines(history, final=False) == ["round 1: aborted (2 commits)"]
    assert view.lines(history, final=True) == [
        "round 2/2  (no client reported metrics)  upload 1.000 MB/client  round 1.5 s"
    ]
    assert view.lines(history, final=True) == [] and view.last == {}
