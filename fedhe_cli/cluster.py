"""Launch key authority, server and clients as separate processes on loopback.

Used by ``fedhe demo``, ``fedhe simulate``, ``fedhe bench round`` and the e2e
tests: each service is the real console script with its own YAML, token files
and state folder under one working directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fedhe_common.rpc.auth import new_token, token_sha256, write_secret_file

BIN = Path(sys.executable).parent
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_client(clients: int, cores: int | None = None) -> int:
    """Torch / BLAS threads for each of ``clients`` co-located clients: the cores, shared."""
    return max(1, (cores or available_cores()) // max(1, clients))


@contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C: unwind (so ``LocalCluster`` stops its processes), exit 143.

    A second SIGTERM during the clean-up is ignored so that the clean-up finishes.
    """

    def handler(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("terminated: stopping key authority, server and clients", file=sys.stderr)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class ClientSpec:
    """One client process: its partition and optional environment (fault injection)."""

    client_id: str
    index: int
    count: int
    num_samples: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    # Argv run instead of ``fedhe-client run`` (``--config PATH`` is appended): tests
    # start fault-injecting agents this way.
    command: list[str] | None = None
    # False: ``fedhe-client run --once`` (one job, then exit); True: the long-lived agent.
    long_lived: bool = False


class LocalCluster:
    """Processes and files of a loopback federation under ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        clients: list[ClientSpec],
        export: bool = False,
        torch_threads: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.clients = {c.client_id: c for c in clients}
        self.export = export
        self.torch_threads = torch_threads or threads_per_client(len(clients))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.tokens = {name: new_token() for name in ["server", "admin", *self.clients]}
        for name, token in self.tokens.items():
            write_secret_file(workdir / "tokens" / f"{name}.token", token)
        self.keyauth_port = 0
        self.server_port = 0

    # ---------------------------------------------------------------- configs
    def _identity(self, name: str, role: str) -> dict[str, str]:
        return {"id": name, "role": role, "token_sha256": token_sha256(self.tokens[name])}

    def _write(self, name: str, doc: dict[str, object]) -> Path:
        path = self.workdir / "config" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def token_file(self, name: str) -> str:
        """Path of an identity's token file."""
        return str(self.workdir / "tokens" / f"{name}.token")

    def _peer(self, port: int, name: str) -> dict[str, object]:
        return {
            "address": f"127.0.0.1:{port}",
            "token_file": self.token_file(name),
            "insecure": True,
        }

    # ---------------------------------------------------------------- processes
    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.procs[name] = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=self.workdir
        )

    def _wait_port(self, name: str, port_file: Path, timeout_s: float = 60) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if port_file.exists() and port_file.read_text().strip():
                return int(port_file.read_text())
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited:\n{self.log_tail(name)}")
            time.sleep(0.05)
        raise TimeoutError(f"{name} did not start:\n{self.log_tail(name)}")

    def start_keyauth(self, port: int = 0) -> int:
        """Start (or restart on the same state folder) the key authority; return its port."""
        cfg = self._write(
            "keyauth",
            {
                "listen": f"127.0.0.1:{port}",
                "insecure": True,
                "state_dir": str(self.workdir / "keyauth-state"),
                "identities": [
                    self._identity("server", "server"),
                    *(self._identity(c, "client") for c in self.clients),
                ],
            },
        )
        port_file = self.workdir / "keyauth.port"
        port_file.unlink(missing_ok=True)
        self._spawn(
            "keyauth",
            [
                str(BIN / "fedhe-keyauth"),
                "serve",
                "--config",
                str(cfg),
                "--port-file",
                str(port_file),
            ],
        )
        self.keyauth_port = self._wait_port("keyauth", port_file)
        return self.keyauth_port

    def start_server(
        self,
        job_yaml: str | None = None,
        env: dict[str, str] | None = None,
        port: int = 0,
        metrics_port: int = 0,
    ) -> int:
        """Start (or restart on the same state folder) the aggregation server."""
        cfg = self._write(
            "server",
            {
                "listen": f"127.0.0.1:{port}",
                "insecure": True,
                "state_dir": str(self.workdir / "server-state"),
                "keyauth": self._peer(self.keyauth_port, "server"),
                "identities": [
                    self._identity("admin", "admin"),
                    *(self._identity(c, "client") for c in self.clients),
                ],
                "metrics_port": metrics_port,
            },
        )
        args = [str(BIN / "fedhe-server"), "serve", "--config", str(cfg)]
        if job_yaml is not None:
            job_path = self.workdir / "config" / "job.yaml"
            job_path.write_text(job_yaml)
            args += ["--job", str(job_path)]
        port_file = self.workdir / "server.port"
        port_file.unlink(missing_ok=True)
        self._spawn("server", [*args, "--port-file", str(port_file)], env)
        self.server_port = self._wait_port("server", port_file)
        return self.server_port

    def client_config(self, client_id: str) -> Path:
        """Write a client's YAML (pointing at the running services)."""
        spec = self.clients[client_id]
        partition: dict[str, object] = {"index": spec.index, "count": spec.count}
        if spec.num_samples:
            partition["num_samples"] = spec.num_samples
        doc: dict[str, object] = {
            "client_id": client_id,
            "server": self._peer(self.server_port, client_id),
            "keyauth": self._peer(self.keyauth_port, client_id),
            "partition": partition,
            "progress": False,
            "torch_threads": self.torch_threads,  # the clients share this machine's cores
            "state_dir": str(self.workdir / "client-state" / client_id),
        }
        if self.export:
            doc["export_dir"] = str(self.workdir / "export" / client_id)
        return self._write(client_id, doc)

    def start_client(self, client_id: str) -> None:
        """Start one client agent."""
        cfg = self.client_config(client_id)
        spec = self.clients[client_id]
        self._spawn(
            client_id,
            [*(spec.command or self._client_argv(spec)), "--config", str(cfg)],
            self.client_env(client_id),
        )

    @staticmethod
    def _client_argv(spec: ClientSpec) -> list[str]:
        return [str(BIN / "fedhe-client"), "run", *([] if spec.long_lived else ["--once"])]

    def client_env(self, client_id: str) -> dict[str, str]:
        """Extra environment of a client: BLAS/OpenMP threads as torch's, then the spec's."""
        threads = dict.fromkeys(THREAD_ENV, str(self.torch_threads))
        return {**threads, **self.clients[client_id].env}

    def start_clients(self) -> None:
        """Start every client agent."""
        for client_id in self.clients:
            self.start_client(client_id)

    def clients_exited(self) -> bool:
        """True when every started client process has exited."""
        started = [self.procs[c] for c in self.clients if c in self.procs]
        return bool(started) and all(p.poll() is not None for p in started)

    def wait(self, name: str, timeout_s: float) -> int:
        """Wait for a process to exit; return its code."""
        try:
            return self.procs[name].wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"{name} still running after {timeout_s}s:\n{self.log_tail(name)}"
            ) from None

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send a signal to a process and wait for it."""
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)
        proc.wait(timeout=30)

    def log_tail(self, name: str, lines: int = 40) -> str:
        """Last lines of a process's log."""
        path = self.logs / f"{name}.log"
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
        )

    def stop(self) -> None:
        """Terminate everything still running."""
        stop_processes(self.procs.values())

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_processes(procs: Iterable[subprocess.Popen[bytes]], grace_s: float = 15) -> None:
    """SIGTERM every process still running, then wait (SIGKILL after ``grace_s``)."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
