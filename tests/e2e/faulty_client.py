"""A client agent that dies on cue: ``python -m tests.e2e.faulty_client FAULT N --config CFG``.

FAULT is ``exit_after_chunks`` (exit 137 once N chunks were sent) or
``exit_after_commit`` (exit 137 after committing round N). Faults are injected
through :class:`fedhe_client.agent.AgentHooks`; production code reads no switch.
"""

from __future__ import annotations

import logging
import os
import sys

from fedhe_client.agent import AgentHooks, ClientAgent
from fedhe_common.config.load import load_yaml
from fedhe_common.config.models import ClientConfig
from fedhe_common.logsetup import configure_logging

logger = logging.getLogger("faulty_client")


def _exit_at(limit: int, what: str):  # type: ignore[no-untyped-def]
    def hook(count: int) -> None:
        if count >= limit:
            logger.warning("fault injection: client exits after %s %d", what, count)
            logging.shutdown()
            os._exit(137)

    return hook


def main(config_path: str, fault: str, limit: int) -> None:
    """Run one client with the named fault."""
    configure_logging("INFO")
    if fault == "exit_after_chunks":
        hooks = AgentHooks(after_chunk=_exit_at(limit, "chunk"))
    elif fault == "exit_after_commit":
        hooks = AgentHooks(after_commit=_exit_at(limit, "committing round"))
    else:
        raise SystemExit(f"unknown fault {fault!r}")
    ClientAgent(load_yaml(config_path, ClientConfig), hooks).run()


def launcher(fault: str, limit: int) -> list[str]:
    """The argv prefix for :attr:`fedhe_cli.cluster.ClientSpec.command`."""
    return [sys.executable, "-m", "tests.e2e.faulty_client", fault, str(limit)]


if __name__ == "__main__":
    fault_name, count, flag, path = sys.argv[1:5]
    assert flag == "--config"
    main(path, fault_name, int(count))
