"""``fedhe simulate --backend ray``: the simulated clients as Ray actors (issue 15, item 4a).

Key authority and server still run as processes (:class:`~fedhe_cli.cluster.LocalCluster`);
each client is one Ray actor running the ordinary client agent
(:class:`fedhe_client.agent.ClientAgent`, ``--once`` behaviour) on its own YAML.
Without an address a local Ray is started on this host; with ``--ray-address``
the actors go to that cluster (spread over its nodes), which must reach the
server and key authority addresses and read the client files (shared folder).
Ray is the optional extra ``fedhe[ray]``.
"""

from __future__ import annotations

import time
from typing import Any

from fedhe_cli.cluster import LocalCluster
from fedhe_common.errors import ConfigError


def import_ray() -> Any:
    """The ``ray`` module, or a ConfigError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--backend ray needs Ray: pip install 'fedhe[ray]' (or pip install ray)"
        ) from None
    return ray


class ClientActor:
    """One federated client in a Ray worker process."""

    def __init__(self, config_path: str, env: dict[str, str]) -> None:
        import os

        os.environ.update(env)  # BLAS/OpenMP threads as the local cluster's clients
        self.config_path = config_path

    def run(self) -> dict[str, float]:
        """Take part in the job until it finishes; return the final metrics."""
        from fedhe_client.agent import ClientAgent
        from fedhe_common.config.load import load_yaml
        from fedhe_common.config.models import ClientConfig

        config = load_yaml(self.config_path, ClientConfig)
        return ClientAgent(config).run()


class RayClients:
    """The cluster's clients as running Ray actors."""

    def __init__(
        self, cluster: LocalCluster, address: str | None = None, num_cpus: int | None = None
    ) -> None:
        self.ray = import_ray()
        self.started_ray = not self.ray.is_initialized()
        if self.started_ray:
            self.ray.init(
                address=address,
                num_cpus=num_cpus if address is None else None,
                include_dashboard=False,
                log_to_driver=False,
            )
        actor = self.ray.remote(num_cpus=0)(ClientActor)  # a client waits more than it trains
        self.names = list(cluster.clients)
        self.actors = [
            actor.options(name=None, scheduling_strategy="SPREAD").remote(
                str(cluster.client_config(name)), cluster.client_env(name)
            )
            for name in self.names
        ]
        self.refs = [a.run.remote() for a in self.actors]

    def exited(self) -> bool:
        """True when every client actor has returned or failed."""
        ready, _ = self.ray.wait(self.refs, num_returns=len(self.refs), timeout=0)
        return len(ready) == len(self.refs)

    def results(self, timeout_s: float) -> dict[str, dict[str, float]]:
        """Each client's final metrics; raises the first client's error."""
        deadline = time.monotonic() + timeout_s
        self.ray.wait(self.refs, num_returns=len(self.refs), timeout=timeout_s)
        if time.monotonic() > deadline and not self.exited():
            raise TimeoutError(f"Ray clients still running after {timeout_s:.0f}s")
        out: dict[str, dict[str, float]] = {}
        for name, ref in zip(self.names, self.refs, strict=True):
            try:
                out[name] = self.ray.get(ref)
            except self.ray.exceptions.RayError as exc:
                raise RuntimeError(f"{name} failed on Ray: {exc}") from None
        return out

    def stop(self) -> None:
        """Kill the actors; shut down a Ray this object started."""
        for a in self.actors:
            self.ray.kill(a)
        if self.started_ray:
            self.ray.shutdown()
