"""The aggregation server: jobs, their runs, and the thread that closes rounds."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from fedhe_common.config.load import parse_yaml
from fedhe_common.config.models import JobConfig, ServerConfig
from fedhe_common.errors import (
    ConflictError,
    FedHEError,
    InvalidArgumentError,
    KeyMaterialError,
    NotFoundError,
)
from fedhe_common.rpc.transport import MESSAGE_MARGIN_BYTES
from fedhe_server.changes import ChangeSignal
from fedhe_server.jobrun import JobRun
from fedhe_server.keyauth_client import KeyAuthClient
from fedhe_server.keymodes import aggregation_mode
from fedhe_server.limits import MAX_METRIC_NAMES_PER_ROUND, validated_metrics
from fedhe_server.metrics import ServerMetrics
from fedhe_server.rounds import Clock, Faults, no_faults
from fedhe_server.staging import JobFiles
from fedhe_server.store import JobState, StateDB, now
from fedhe_server.transfer.jobs import TransferJobs
from fedhe_server.transfer.run import TrainerFactory, hetal_trainer

logger = logging.getLogger(__name__)
TICK_S = 0.2
KEYGEN_POLL_S = 1.0


def max_message_bytes() -> int:
    """Largest chunk of any supported preset plus a margin (never gigabytes)."""
    from fedhe_common.crypto.presets import PRESETS

    largest = max(
        16 * p.poly_modulus_degree * len(p.data_modulus_bits) + 512 for p in PRESETS.values()
    )
    return largest + MESSAGE_MARGIN_BYTES


class AggregationServer:
    """Owns the state database and one :class:`JobRun` per running job."""

    def __init__(
        self,
        config: ServerConfig,
        keyauth: KeyAuthClient | None = None,
        faults: Faults = no_faults,
        clock: Clock = now,
        trainer_factory: TrainerFactory = hetal_trainer,
    ) -> None:
        self.config = config
        self.faults = faults  # tests name crash points; production passes nothing
        self.clock = clock
        self.state_dir = Path(config.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.db = StateDB(self.state_dir / "state.sqlite")
        self.metrics = ServerMetrics(self.db)
        self.keyauth = keyauth or KeyAuthClient(config.keyauth)
        self.changed = ChangeSignal()  # also wakes async long-polls
        self.runs: dict[str, JobRun] = {}
        self._configs: dict[str, JobConfig] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.transfers = TransferJobs(
            self.db, self.state_dir, self.keyauth, self.changed, clock, faults, self.job_config,
            trainer_factory,
        )  # fmt: skip
        for job_id in self.db.running_jobs():
            self._start_run(job_id)
        self._keeper = threading.Thread(target=self._keep_rounds, name="round-keeper", daemon=True)
        self._keeper.start()

    # --------------------------------------------------------------------- jobs
    def submit(self, job_yaml: str, source: str = "<submitted job>") -> tuple[str, bool]:
        """Create a job from YAML (idempotent for identical YAML)."""
        config = parse_yaml(job_yaml, JobConfig, source)
        job_id = config.job.name
        with self._lock:
            existing = self.db.job(job_id)
            if existing is not None:
                if parse_yaml(str(existing.config_yaml), JobConfig) != config:
                    raise ConflictError(f"job {job_id!r} exists with another configuration")
                return job_id, False
            params_json, fingerprint, state = None, b"", JobState.RUNNING
            clients = list(config.participants.clients or ())
            # One bounded attempt each: a key authority that is down fails the submission
            # now (UNAVAILABLE) instead of creating the job after the caller gave up.
            if config.transfer is not None:  # the data owner makes the keys on its device
                self.transfers.open(job_id, config)
            elif config.threshold_keys:
                assert config.keys.parties and config.keys.threshold
                self.keyauth.create_threshold(
                    job_id,
                    config.preset_name,
                    config.encryption.clip_bound,
                    config.keys.parties,
                    config.keys.threshold,
                    clients,
                )
                state = JobState.KEYGEN
            elif config.encryption.mode == "ckks":
                params, fingerprint = self.keyauth.public_params(
                    job_id, config.preset_name, config.encryption.clip_bound, clients
                )
                params_json = params.to_json()
            self.db.insert_job(
                job_id, job_yaml, state, params_json, fingerprint, config.job.rounds, self.clock()
            )
            if state == JobState.RUNNING:
                self._start_run(job_id)
        with self.changed:  # wakes agents waiting in ListJobs
            self.changed.notify_all()
        logger.info(
            "job %s submitted: %d rounds, encryption %s",
            job_id,
            config.job.rounds,
            config.encryption.mode,
        )
        return job_id, True

    def _start_run(self, job_id: str) -> None:
        job = self.db.job(job_id)
        assert job is not None
        config = parse_yaml(str(job.config_yaml), JobConfig)
        if config.transfer is not None:
            if job.state == JobState.RUNNING:
                self.transfers.start(job_id, config)
            return
        params_json = str(job.params_json) if job.params_json else None
        try:
            fingerprint = bytes(job.fingerprint or b"")  # type: ignore[arg-type]
            mode = aggregation_mode(config, params_json, fingerprint)
        except KeyMaterialError as exc:
            raise KeyMaterialError(f"job {job_id}: {exc.message}") from None
        run = JobRun(
            self.db,
            JobFiles(self.state_dir, job_id),
            job_id,
            config,
            mode,
            self.changed,
            self.metrics,
            clock=self.clock,
            faults=self.faults,
        )
        if job.state == JobState.RUNNING:
            run.start()  # opens, repairs or resumes rounds; a finished job's run only reads
        self.runs[job_id] = run

    def run_for(self, job_id: str) -> JobRun:
        """The run of a job (running or finished); never starts rounds of a finished job."""
        with self._lock:
            run = self.runs.get(job_id)
            if run is None:
                if self.db.job(job_id) is None:
                    raise NotFoundError(f"unknown job {job_id!r}")
                if self.job_config(job_id).transfer is not None:
                    raise InvalidArgumentError(f"job {job_id!r} is a transfer job: no rounds")
                self._start_run(job_id)
                run = self.runs[job_id]
            return run

    def job_config(self, job_id: str) -> JobConfig:
        """A job's parsed configuration (cached: it never changes)."""
        config = self._configs.get(job_id)
        if config is None:
            job = self.db.job(job_id)
            if job is None:
                raise NotFoundError(f"unknown job {job_id!r}")
            config = parse_yaml(str(job.config_yaml), JobConfig)
            self._configs[job_id] = config
        return config

    def register_client(self, job_id: str, client_id: str) -> JobRun | None:
        """Register an enrolled client (idempotent); its job's run once keys exist."""
        from fedhe_server.views import ensure_may_register

        ensure_may_register(self, job_id, client_id)
        job = self.db.job(job_id)
        assert job is not None
        rounds = job.state != JobState.KEYGEN and self.job_config(job_id).transfer is None
        run = self.run_for(job_id) if rounds else None
        self.db.register_client(job_id, client_id, self.clock())
        logger.info("client %s registered for job %s", client_id, job_id)
        return run

    def report_metrics(
        self, job_id: str, number: int, client_id: str, metrics: dict[str, float]
    ) -> None:
        """Keep a registered client's validated metrics for a round it could be in."""
        from fedhe_server.views import ensure_enrolled

        ensure_enrolled(self, job_id, client_id)
        clean = validated_metrics(metrics)
        rounds = self.db.rounds_page(job_id, 1)[0]
        if not rounds or number > rounds[-1].round:
            raise InvalidArgumentError(f"round {number} has not started")
        self.db.report_metrics(job_id, number, client_id, clean, MAX_METRIC_NAMES_PER_ROUND)

    def report_error(
        self, job_id: str, number: int, client_id: str, phase: str, message: str
    ) -> None:
        """Keep a registered client's validated error report for a job."""
        from fedhe_server.edge import validated_error
        from fedhe_server.views import ensure_enrolled

        ensure_enrolled(self, job_id, client_id)
        phase, message = validated_error(phase, message)
        self.db.report_client_error(job_id, client_id, number, phase, message, self.clock())
        logger.warning("client %s reported an error in job %s (%s)", client_id, job_id, phase)

    def cancel(self, job_id: str) -> list[int]:
        """Stop a job: CANCELLED, its open round aborted, in one transaction; wake clients."""
        with self._lock:
            run = self.runs.get(job_id)
            if run is not None:
                with run.lock:  # no tick or commit of the job runs meanwhile
                    changed, aborted = self.db.cancel_job(job_id, self.clock())
            else:
                changed, aborted = self.db.cancel_job(job_id, self.clock())
        if changed and self.job_config(job_id).transfer is not None:
            self.transfers.cancel(job_id)
        if changed and run is not None:
            for number in aborted:
                run.files.drop_uploads(number)
        if changed:
            logger.warning("job %s cancelled; aborted rounds %s", job_id, aborted)
        with self.changed:
            self.changed.notify_all()
        return aborted

    def active_job(self) -> str:
        """The only running job (clients that name no job join it)."""
        running = self.db.jobs_in_state(JobState.RUNNING, JobState.KEYGEN)
        if len(running) != 1:
            raise NotFoundError(f"{len(running)} running jobs; name one with job_id")
        return running[0]

    # ------------------------------------------------------------------- rounds
    def _keep_rounds(self) -> None:
        last_keygen_check = 0.0
        while not self._stop.wait(TICK_S):
            if time.monotonic() - last_keygen_check > KEYGEN_POLL_S:
                last_keygen_check = time.monotonic()
                self._finish_key_generations()
            for run in list(self.runs.values()):
                try:
                    run.tick()
                except Exception:
                    logger.exception("job %s: round keeper failed", run.job_id)

    def _finish_key_generations(self) -> None:
        """Start threshold jobs whose parties have published the collective key."""
        for job_id in self.db.jobs_in_state(JobState.KEYGEN):
            try:
                result = self.keyauth.threshold_keys(str(job_id))
            except FedHEError as exc:
                logger.info("job %s: key generation status unavailable (%s)", job_id, exc)
                continue
            if result is None:
                continue
            params, fingerprint, parties, identities = result
            # Uploads of threshold jobs must verify against these (issue 10, finding 3).
            JobFiles(self.state_dir, job_id).write_identity_keys(identities)
            self.db.keys_ready(job_id, params.to_json(), fingerprint, json.dumps(parties))
            self._start_run(job_id)
            logger.info("job %s: collective public key in; %d parties", job_id, len(parties))
            with self.changed:
                self.changed.notify_all()

    def wait_for_change(self, timeout_s: float) -> None:
        """Block until a round changes or ``timeout_s`` passes (long-poll)."""
        with self.changed:
            self.changed.wait(timeout_s)

    def stop(self) -> None:
        """Stop the round keeper."""
        self._stop.set()
        self._keeper.join(timeout=5)
        for run in list(self.runs.values()):
            run.close()
        self.transfers.stop_all()
        self.keyauth.close()
