"""``python -m tests.faults.kill_server POINT serve --config ...``: the real server CLI
with a fault hook that SIGKILLs the process the first time it reaches ``POINT``.

Test code only: production code has no fault switch; it calls the hook the server
is built with (a no-op unless a test passes one).
"""

from __future__ import annotations

import functools
import os
import signal
import sys

from fedhe_server import cli as server_cli
from fedhe_server.service import AggregationServer


def main() -> None:
    """Install the hook, then run the server CLI with the remaining arguments."""
    point = sys.argv[1]

    def faults(name: str) -> None:
        if name == point:
            print(f"fault: killing the server at {name}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    server_cli.AggregationServer = functools.partial(AggregationServer, faults=faults)  # type: ignore[misc]
    server_cli.cli(sys.argv[2:], standalone_mode=True)


if __name__ == "__main__":
    main()
