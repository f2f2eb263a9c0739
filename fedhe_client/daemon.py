"""The long-lived edge agent: wait for a job this site may take, run it, take the next.

``fedhe-client run`` without ``--once``. Jobs come from the server's ``ListJobs``
long-poll, filtered by the client config's ``jobs`` allow-list. A job that fails on
this side is reported (``ReportError``) and not taken again by this process; a server
or key authority that is down is waited for with capped exponential backoff and full
jitter, and the job in hand is taken again once it is back. A TLS certificate error
(a foreign CA, an expired or refused certificate) ends the agent with that error.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

from fedhe_client.agent import AgentHooks, ClientAgent, JobCancelledError
from fedhe_client.connection import ServerConnection
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.models import ClientConfig
from fedhe_common.errors import ConfigError, FedHEError, UnavailableError
from fedhe_common.pki import tls_problem
from fedhe_common.rpc.errors import is_certificate_error

logger = logging.getLogger(__name__)
LIST_WAIT_S = 20
MAX_MESSAGE = 2000
MAX_SKIPS = 1000
JobResult = Callable[[str, dict[str, float]], None]


def _ignore(_job: str, _metrics: dict[str, float]) -> None:
    return None


class Backoff:
    """Capped exponential backoff with full jitter (reset after a success)."""

    def __init__(self, cap_s: float, base_s: float = 0.5) -> None:
        self.cap_s = cap_s
        self.base_s = base_s
        self.attempt = 0

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt."""
        delay = min(self.cap_s, self.base_s * 2**self.attempt) * random.random()
        self.attempt = min(self.attempt + 1, 30)
        return delay

    def reset(self) -> None:
        """A call got through."""
        self.attempt = 0


class EdgeDaemon:
    """Takes the jobs this site is allowed to, one after another, until stopped."""

    def __init__(
        self,
        config: ClientConfig,
        on_result: JobResult = _ignore,
        hooks: AgentHooks | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.on_result = on_result
        self.hooks = hooks
        self.stop = stop or threading.Event()
        self.backoff = Backoff(config.reconnect_max_s)
        self.skipped: dict[str, str] = {}  # job id -> why (done, failed, cancelled, not allowed)
        self.conn = ServerConnection(config.server)

    def run(self) -> None:
        """Serve jobs until :attr:`stop` is set (a TLS certificate error is raised)."""
        logger.info("client %s waiting for jobs", self.config.client_id)
        try:
            self._check_certificates()
            while not self.stop.is_set():
                self._serve_once()
        finally:
            self.conn.close()

    def _serve_once(self) -> None:
        try:
            job_id = self._next_job()
            if job_id is not None:
                self._take(job_id)
            self.backoff.reset()
        except UnavailableError as exc:
            if is_certificate_error(exc.message):
                raise  # a certificate the peer refuses (or we distrust) is not transient
            self._check_certificates()
            delay = self.backoff.next_delay()
            logger.warning("server unreachable (%s); retrying in %.1fs", exc.message, delay)
            self.stop.wait(delay)

    def _check_certificates(self) -> None:
        check_certificates(self.config)

    def allowed(self, offer: pb.JobOffer) -> bool:
        """The config's allow-list: job names (and ``job_id``) and task names."""
        names = set(self.config.jobs.names)
        if self.config.job_id:
            names.add(self.config.job_id)
        tasks = set(self.config.jobs.tasks)
        return (not names or offer.job_id in names) and (not tasks or offer.task in tasks)

    def _next_job(self) -> str | None:
        skip = list(self.skipped)[-MAX_SKIPS:]
        reply: pb.ListJobsResponse = self.conn.call(
            "ListJobs",
            pb.ListJobsRequest(client_id=self.config.client_id, skip_job_ids=skip,
                               wait_s=LIST_WAIT_S),
            timeout=LIST_WAIT_S + 15,
        )  # fmt: skip
        for offer in reply.jobs:
            if self.allowed(offer):
                return offer.job_id
            logger.info("job %s (task %r) is not in this site's jobs allow-list", offer.job_id,
                        offer.task)  # fmt: skip
            self.skipped[offer.job_id] = "not allowed"
        return None

    def _take(self, job_id: str) -> None:
        """Run one job to its end; report a failure on this side and move on."""
        logger.info("client %s takes job %s", self.config.client_id, job_id)
        agent: ClientAgent | None = None
        try:
            agent = ClientAgent(self.config.model_copy(update={"job_id": job_id}), self.hooks)
            metrics = agent.run()
        except UnavailableError:
            raise  # the server or key authority is away: take the job again later
        except JobCancelledError as exc:
            logger.warning("%s; waiting for the next job", exc.message)
            self.skipped[job_id] = "cancelled"
            return
        except Exception as exc:  # any failure of a job is reported, then the next job
            phase, number = agent.where if agent is not None else ("setup", 0)
            self._report(job_id, number, phase, exc)
            self.skipped[job_id] = "failed"
            return
        finally:
            if agent is not None:
                agent.conn.close()
        self.skipped[job_id] = "done"
        self.on_result(job_id, metrics)

    def _report(self, job_id: str, number: int, phase: str, exc: Exception) -> None:
        text = exc.message if isinstance(exc, FedHEError) else f"{type(exc).__name__}: {exc}"
        text = "".join(c if c.isprintable() or c in "\n\t" else "?" for c in text)
        logger.error("job %s failed here in %s (round %d): %s", job_id, phase, number, text)
        try:
            self.conn.call(
                "ReportError",
                pb.ReportErrorRequest(
                    job_id=job_id,
                    client_id=self.config.client_id,
                    round=number,
                    phase=phase,
                    message=text[:MAX_MESSAGE] or type(exc).__name__,
                ),
            )
        except FedHEError as report_exc:
            logger.warning("could not report the error to the server: %s", report_exc.message)


def check_certificates(config: ClientConfig) -> None:
    """A certificate the server or key authority refuses ends the agent at once."""
    for peer in (config.server, config.keyauth):
        why = tls_problem(peer)
        if why is not None:
            raise ConfigError(f"TLS certificate error: {why}")
