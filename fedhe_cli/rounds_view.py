"""One printed line per finished round of a job, from ``GetJobStatus`` round summaries.

Used by ``fedhe demo`` and ``fedhe simulate``. Knows the rounds that carry no accuracy:
the mask round 0 of a selective job, aborted rounds, and (once the job has ended) rounds
whose clients never reported metrics, so that following a job always terminates.
"""

from __future__ import annotations

from collections.abc import Iterable

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.rpc.states import round_state_name

ACTIVE_JOB_STATES = frozenset({"KEYGEN", "RUNNING"})
DONE_ROUND_STATES = frozenset({"PUBLISHED", "ABORTED"})


def job_active(state: str) -> bool:
    """True while the job can still publish rounds (key generation or running)."""
    return state.upper() in ACTIVE_JOB_STATES


class RoundLines:
    """Turns round summaries into console lines, each round printed once."""

    def __init__(self, rounds: int, mask_round: bool) -> None:
        self.rounds = rounds
        self.mask_round = mask_round
        self.printed: set[int] = set()
        self.last: dict[str, float] = {}

    def lines(self, history: Iterable[pb.RoundSummary], final: bool) -> list[str]:
        """Lines for rounds newly done; ``final``: the job ended, print even without metrics."""
        out: list[str] = []
        for r in sorted(history, key=lambda s: s.round):
            state = round_state_name(r.state)
            if r.round in self.printed or state not in DONE_ROUND_STATES:
                continue
            metrics = {str(k): float(v) for k, v in r.metrics.items()}
            mb = r.upload_bytes / max(1, r.contributors) / 1e6
            if state == "ABORTED":
                out.append(f"round {r.round}: aborted ({r.contributors} commits)")
            elif self.mask_round and r.round == 0:
                out.append(
                    f"round 0 (mask)  sensitivity maps of {r.contributors} clients summed  "
                    f"upload {mb:.3f} MB/client  round {r.seconds:.1f} s"
                )
            elif "accuracy" in metrics:
                self.last = metrics
                out.append(
                    f"round {r.round}/{self.rounds}  accuracy {metrics['accuracy']:.4f}  "
                    f"loss {metrics.get('loss', float('nan')):.4f}  upload {mb:.3f} MB/client  "
                    f"round {r.seconds:.1f} s  HE {metrics.get('he_s', 0.0):.3f} s"
                )
            elif final:
                out.append(
                    f"round {r.round}/{self.rounds}  (no client reported metrics)  "
                    f"upload {mb:.3f} MB/client  round {r.seconds:.1f} s"
                )
            else:
                continue  # published; the clients' metrics are still on their way
            self.printed.add(r.round)
        return out
