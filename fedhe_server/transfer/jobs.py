"""The server's transfer jobs: created at submission, one :class:`TransferRun` each."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from fedhe_common.config.models import JobConfig
from fedhe_common.errors import NotFoundError
from fedhe_server.keyauth_client import KeyAuthClient
from fedhe_server.rounds import Clock, Faults
from fedhe_server.store import StateDB
from fedhe_server.store.transfer import TransferStore
from fedhe_server.transfer.files import TransferFiles
from fedhe_server.transfer.run import TrainerFactory, TransferRun, hetal_trainer

logger = logging.getLogger(__name__)


class TransferJobs:
    """Transfer jobs of one server (their rows, files and workers)."""

    def __init__(
        self,
        db: StateDB,
        state_dir: Path,
        keyauth: KeyAuthClient,
        changed: threading.Condition,
        clock: Clock,
        faults: Faults,
        config_of: Callable[[str], JobConfig],
        trainer_factory: TrainerFactory = hetal_trainer,
    ) -> None:
        self.store = TransferStore(db)
        self.config_of = config_of
        self.state_dir = state_dir
        self.keyauth = keyauth
        self.changed = changed
        self.clock = clock
        self.faults = faults
        self.trainer_factory = trainer_factory
        self.runs: dict[str, TransferRun] = {}
        self._lock = threading.Lock()

    def open(self, job_id: str, config: JobConfig) -> None:
        """At submission: the key authority expects the owner's keys; the row waits for them."""
        assert config.transfer is not None
        clients = list(config.participants.clients or ())
        self.keyauth.create_transfer(job_id, clients, config.transfer.max_eval_key_bytes)
        self.store.insert(job_id, config.transfer.mode, self.clock())

    def start(self, job_id: str, config: JobConfig) -> TransferRun:
        """The job's run (its worker started once)."""
        assert config.transfer is not None
        with self._lock:
            run = self.runs.get(job_id)
            if run is None:
                self.store.insert(job_id, config.transfer.mode, self.clock())  # no-op if there
                run = self._run(job_id, config)
                run.start()
                self.runs[job_id] = run
            return run

    def _run(self, job_id: str, config: JobConfig) -> TransferRun:
        assert config.transfer is not None
        fetch = functools.partial(
            self.keyauth.eval_keys, job_id, config.transfer.max_eval_key_bytes
        )
        return TransferRun(
            self.store,
            TransferFiles(self.state_dir, job_id),
            job_id,
            config,
            self.changed,
            fetch,
            self.trainer_factory,
            self.clock,
            self.faults,
        )

    def get(self, job_id: str) -> TransferRun:
        """A transfer job's run; a job that no longer runs gets a read-only one (no worker),
        so its owner still learns that it finished, failed or was cancelled."""
        with self._lock:
            run = self.runs.get(job_id)
            if run is None:
                if self.store.row(job_id) is None:
                    raise NotFoundError(f"no transfer job {job_id!r}")
                run = self._run(job_id, self.config_of(job_id))
                self.runs[job_id] = run
            return run

    def cancel(self, job_id: str) -> None:
        """An admin cancelled the job: stop its worker, mark the training FAILED."""
        with self._lock:
            run = self.runs.pop(job_id, None)
        if run is not None:
            run.stop()
        if self.store.row(job_id) is not None:
            self.store.fail(job_id, "cancelled by an admin", self.clock(), None)

    def stop_all(self) -> None:
        """Stop every worker (server shutdown)."""
        with self._lock:
            runs, self.runs = list(self.runs.values()), {}
        for run in runs:
            run.stop()
