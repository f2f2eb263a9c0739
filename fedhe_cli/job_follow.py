"""``fedhe job submit --follow``: one line per closed round and per client error, until the
job ends (exit 0 when it finished, 1 when it failed or was cancelled)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fedhe_common.rpc.states import job_state_name, round_state_name

if TYPE_CHECKING:  # imported on use (SEAL, numpy): `fedhe job --help` stays fast
    from fedhe_client.connection import ServerConnection

POLL_S = 1.0
GRACE_S = 10.0
ENDED = ("FINISHED", "FAILED", "CANCELLED")


def round_line(summary: Any, rounds: int) -> str:
    """``round 1/2 PUBLISHED: 3 clients, accuracy 0.9321, loss 0.2012, 1.4 s``."""
    parts = [f"{summary.contributors} clients"]
    parts += [f"{name} {summary.metrics[name]:.4f}" for name in ("accuracy", "loss")
              if name in summary.metrics]  # fmt: skip
    parts.append(f"{summary.seconds:.1f} s")
    state = round_state_name(summary.state)
    return f"round {summary.round}/{rounds} {state}: {', '.join(parts)}"


def _ready(summary: Any, closed: list[Any]) -> bool:
    """A closed round is shown once its clients reported metrics (they decrypt and evaluate
    after the round is published), it was aborted, or a later round closed."""
    if round_state_name(summary.state) == "ABORTED" or "accuracy" in summary.metrics:
        return True
    return any(later.round > summary.round for later in closed)


def follow(
    conn: ServerConnection,
    job_id: str,
    echo: Callable[[str], None],
    poll_s: float = POLL_S,
    grace_s: float = GRACE_S,
) -> str:
    """Print rounds as they close and client errors as they arrive; the job's end state.

    After the job ends, the last round's metrics are waited for at most ``grace_s``.
    """
    shown_rounds: set[int] = set()
    shown_errors: set[tuple[str, int]] = set()
    ended_at: float | None = None
    while True:
        status = conn.job_status(job_id)
        state = job_state_name(status.state)
        if state in ENDED and ended_at is None:
            ended_at = time.monotonic()
        late = ended_at is not None and time.monotonic() - ended_at >= grace_s
        closed = [r for r in status.history
                  if round_state_name(r.state) in ("PUBLISHED", "ABORTED")]  # fmt: skip
        for summary in closed:
            if summary.round not in shown_rounds and (late or _ready(summary, closed)):
                shown_rounds.add(summary.round)
                echo(round_line(summary, status.rounds))
        for client in status.clients:
            key = (client.client_id, client.error.unix_ms)
            if client.error.phase and key not in shown_errors:
                shown_errors.add(key)
                echo(f"client {client.client_id} error in round {client.error.round} "
                     f"{client.error.phase}: {client.error.message}")  # fmt: skip
        if ended_at is not None and all(r.round in shown_rounds for r in closed):
            echo(f"job {job_id}: {state}")
            return state
        time.sleep(poll_s)
