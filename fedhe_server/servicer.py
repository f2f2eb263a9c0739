"""AggregationService on grpc.aio: authenticates, then hands each RPC to the job's run.

Handlers are coroutines; blocking work (SQLite, SEAL, chunk files) runs on the
server's thread pool through :func:`blocking`, so an idle long-poll or a call
that never sends its request holds no thread. Requests are parsed and errors
mapped to statuses in :mod:`fedhe_common.rpc.serving`.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import AsyncIterator

import grpc

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.errors import AuthenticationError, NotFoundError
from fedhe_common.rpc.auth import Identity, TokenAuthority
from fedhe_common.rpc.serving import Register, add_service, blocking
from fedhe_common.rpc.states import job_state
from fedhe_server.decryption import ThresholdDecryption
from fedhe_server.edge import job_offers
from fedhe_server.hostload import host_load
from fedhe_server.jobrun import JobRun
from fedhe_server.service import AggregationServer, max_message_bytes
from fedhe_server.transfer.rpc import TransferServicer
from fedhe_server.upload_gate import DownloadSlots, UploadGate
from fedhe_server.views import ensure_enrolled, job_history, job_list, job_status, round_plan

logger = logging.getLogger(__name__)
MAX_WAIT_S = 30
# Long-polls held at once. A held poll is a coroutine, not a thread; the bound only
# caps memory. Past it, polls are answered at once with a back-off hint.
LONG_POLL_SLOTS = 4096
BUSY_RETRY_MS = (1000, 3000)
Context = grpc.aio.ServicerContext


class AggregationServicer(TransferServicer):
    """Thin adapter: identity checks and protobuf <-> JobRun / TransferRun calls."""

    def __init__(self, server: AggregationServer, auth: TokenAuthority) -> None:
        self.server = server
        self.auth = auth
        self._held_polls = 0
        # Bounded transfers in flight: memory flat in the number of clients (issue 15).
        self._uploads = UploadGate(server.config.transfer_slots)
        self._downloads = DownloadSlots(server.config.transfer_slots)

    def _client(self, context: Context, claimed_id: str) -> Identity:
        """The calling client, which must be the client the request names."""
        who = self.auth.require(context, "client")
        if claimed_id != who.id:
            raise AuthenticationError("client_id does not match the caller's identity")
        return who

    async def SubmitJob(
        self, request: pb.SubmitJobRequest, context: Context
    ) -> pb.SubmitJobResponse:
        self.auth.require(context, "admin")
        job_id, created = await blocking(self.server.submit, request.job_yaml)
        return pb.SubmitJobResponse(job_id=job_id, created=created)

    async def GetJobStatus(
        self, request: pb.GetJobStatusRequest, context: Context
    ) -> pb.GetJobStatusResponse:
        who = self.auth.require(context, "admin", "client")
        return await blocking(self._job_status, request, who)

    def _job_status(
        self, request: pb.GetJobStatusRequest, who: Identity
    ) -> pb.GetJobStatusResponse:
        if who.role == "client":
            ensure_enrolled(self.server, request.job_id, who.id)
        return job_status(
            self.server.db, request.job_id, request.history_limit, request.history_before
        )

    async def RegisterClient(
        self, request: pb.RegisterClientRequest, context: Context
    ) -> pb.RegisterClientResponse:
        who = self._client(context, request.client_id)
        return await blocking(self._register, who, request.job_id)

    def _register(self, who: Identity, requested_job: str) -> pb.RegisterClientResponse:
        job_id = requested_job or self.server.active_job()
        job = self.server.db.job(job_id)
        if job is None:
            raise NotFoundError(f"unknown job {job_id!r}")
        run = self.server.register_client(job_id, who.id)
        return pb.RegisterClientResponse(
            job_id=job_id,
            job_yaml=str(job.config_yaml),
            context_fingerprint=run.fingerprint if run else b"",
            values_per_chunk=run.values_per_chunk if run else 0,
            max_message_bytes=max_message_bytes(),
        )

    async def ListJobs(self, request: pb.ListJobsRequest, context: Context) -> pb.ListJobsResponse:
        who = self._client(context, request.client_id)
        skip = list(request.skip_job_ids)
        offers = await blocking(job_offers, self.server, who.id, skip)
        deadline = time.monotonic() + min(request.wait_s or 0, MAX_WAIT_S)
        while not offers.jobs and self._held_polls < LONG_POLL_SLOTS:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._held_polls += 1
            try:  # submissions, cancellations and round changes notify ``changed``
                await self.server.changed.wait_async(min(5.0, left))
            finally:
                self._held_polls -= 1
            offers = await blocking(job_offers, self.server, who.id, skip)
        return offers

    async def ReportError(
        self, request: pb.ReportErrorRequest, context: Context
    ) -> pb.ReportErrorResponse:
        who = self._client(context, request.client_id)
        await blocking(
            self.server.report_error,
            request.job_id,
            request.round,
            who.id,
            request.phase,
            request.message,
        )
        return pb.ReportErrorResponse()

    async def CancelJob(
        self, request: pb.CancelJobRequest, context: Context
    ) -> pb.CancelJobResponse:
        self.auth.require(context, "admin")
        aborted = await blocking(self.server.cancel, request.job_id)
        job = await blocking(self.server.db.job, request.job_id)
        state = job_state(str(job.state)) if job is not None else pb.JOB_STATE_UNSPECIFIED
        return pb.CancelJobResponse(job_id=request.job_id, state=state, aborted_rounds=aborted)

    async def ListJobSummaries(
        self, request: pb.ListJobSummariesRequest, context: Context
    ) -> pb.ListJobSummariesResponse:
        self.auth.require(context, "admin")
        return await blocking(job_list, self.server.db, request.limit, request.after_job_id)

    async def GetJobHistory(
        self, request: pb.GetJobHistoryRequest, context: Context
    ) -> pb.GetJobHistoryResponse:
        self.auth.require(context, "admin")
        return await blocking(
            job_history, self.server.db, request.job_id, request.limit, request.before
        )

    async def GetRoundPlan(
        self, request: pb.GetRoundPlanRequest, context: Context
    ) -> pb.GetRoundPlanResponse:
        who = self._client(context, request.client_id)
        plan = await blocking(self._current_plan, request, who.id)
        wait_s = min(request.wait_s or 0, MAX_WAIT_S)
        if not plan.retry or wait_s <= 0:
            return plan
        if self._held_polls >= LONG_POLL_SLOTS:
            plan.retry_after_ms = random.randint(*BUSY_RETRY_MS)
            return plan
        # Wait without a thread: the round keeper and commits notify ``changed``.
        self._held_polls += 1
        try:
            deadline = time.monotonic() + wait_s
            while plan.retry:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                await self.server.changed.wait_async(min(5.0, left))
                plan = await blocking(self._current_plan, request, who.id)
            return plan
        finally:
            self._held_polls -= 1

    def _current_plan(
        self, request: pb.GetRoundPlanRequest, client_id: str
    ) -> pb.GetRoundPlanResponse:
        ensure_enrolled(self.server, request.job_id, client_id)
        return round_plan(self.server, request.job_id, request.after_round, client_id)

    async def GetAggregate(
        self, request: pb.GetAggregateRequest, context: Context
    ) -> AsyncIterator[pb.GetAggregateResponse]:
        async with self._downloads.slot():  # bounded sends in flight (issue 15)
            async for item in self._aggregate_stream(request, context):
                yield item

    async def _aggregate_stream(
        self, request: pb.GetAggregateRequest, context: Context
    ) -> AsyncIterator[pb.GetAggregateResponse]:
        who = self.auth.require(context, "client")
        await blocking(ensure_enrolled, self.server, request.job_id, who.id)
        run = await blocking(self.server.run_for, request.job_id)
        header = await blocking(run.files.read_aggregate_header, request.round)
        if header is None:
            raise NotFoundError(f"round {request.round} has no published aggregate")
        yield pb.GetAggregateResponse(
            header=pb.AggregateHeader(
                round=request.round,
                weight_sum=int(header["weight_sum"]),  # type: ignore[call-overload]
                contributors=int(header["contributors"]),  # type: ignore[call-overload]
                ciphertext_chunks=int(header["ciphertext_chunks"]),  # type: ignore[call-overload]
                plaintext_chunks=int(header["plaintext_chunks"]),  # type: ignore[call-overload]
                num_values=int(header["num_values"]),  # type: ignore[call-overload]
                layout_id=str(header["layout_id"]),
                active_parties=[int(a) for a in header.get("active_parties", [])],  # type: ignore[attr-defined]
                context_fingerprint=run.fingerprint,
            )
        )
        ct_plan, pt_plan = run.plans(int(header["num_values"]), request.round)  # type: ignore[call-overload]
        for stream, plan in (
            (pb.STREAM_KIND_CIPHERTEXT, ct_plan),
            (pb.STREAM_KIND_PLAINTEXT, pt_plan),
        ):
            for k in range(plan.count):
                path = run.files.aggregate_chunk_path(request.round, stream, k)
                payload = await blocking(path.read_bytes)
                yield pb.GetAggregateResponse(
                    chunk=pb.Chunk(
                        stream=stream,
                        index=k,
                        num_values=plan.length(k),
                        payload=payload,
                        sha256=hashlib.sha256(payload).digest(),
                    )
                )
        for alpha in header.get("active_parties", []):  # type: ignore[attr-defined]
            for k in range(ct_plan.count):
                path = run.files.share_path(request.round, int(alpha), k)
                payload = await blocking(path.read_bytes)
                yield pb.GetAggregateResponse(
                    chunk=pb.Chunk(
                        stream=pb.STREAM_KIND_DECRYPTION_SHARE,
                        index=k,
                        party=int(alpha),
                        payload=payload,
                        sha256=hashlib.sha256(payload).digest(),
                    )
                )

    async def VolunteerDecryption(
        self, request: pb.VolunteerDecryptionRequest, context: Context
    ) -> pb.VolunteerDecryptionResponse:
        who = self._client(context, request.client_id)
        run = await blocking(self.server.run_for, request.job_id)
        return await blocking(ThresholdDecryption(run).volunteer, who.id, request.round)

    async def GetContributions(
        self, request: pb.GetContributionsRequest, context: Context
    ) -> AsyncIterator[pb.Contribution]:
        who = self._client(context, request.client_id)
        run = await blocking(self.server.run_for, request.job_id)
        items = await blocking(
            ThresholdDecryption(run).contributions, who.id, request.round, request.chunk
        )
        for item in items:
            yield item

    async def SubmitDecryptionShares(
        self,
        request_iterator: AsyncIterator[pb.SubmitDecryptionSharesRequest],
        context: Context,
    ) -> pb.SubmitDecryptionSharesResponse:
        who = self.auth.require(context, "client")
        accepted = 0
        async for message in request_iterator:
            run = await blocking(self.server.run_for, message.job_id)
            decryption = ThresholdDecryption(run)
            if not await blocking(decryption.put_share, who.id, message.round, message.chunk):
                accepted += 1
        return pb.SubmitDecryptionSharesResponse(accepted=accepted)

    async def BeginUpload(
        self, request: pb.BeginUploadRequest, context: Context
    ) -> pb.BeginUploadResponse:
        self._client(context, request.manifest.client_id)
        run = await blocking(self.server.run_for, request.manifest.job_id)
        response = await blocking(run.begin_upload, request.manifest)
        if not response.committed and (response.missing_ciphertext or response.missing_plaintext):
            self._uploads.admit(response.upload_id)  # or RESOURCE_EXHAUSTED: clients retry
        return response

    async def UploadChunks(
        self, request_iterator: AsyncIterator[pb.UploadChunksRequest], context: Context
    ) -> pb.UploadChunksResponse:
        who = self.auth.require(context, "client")
        accepted = duplicates = 0
        run: JobRun | None = None
        streaming: str | None = None
        try:
            async for message in request_iterator:
                chunk = message.chunk
                if streaming is None:
                    streaming = chunk.upload_id
                    self._uploads.stream_started(streaming)
                self._uploads.chunk_received(streaming)
                if run is None:
                    run = await blocking(self._run_of_upload, chunk.upload_id)
                if await blocking(run.put_chunk, chunk, who.id):
                    duplicates += 1
                else:
                    accepted += 1
        except Exception as exc:
            if not isinstance(exc, grpc.aio.AbortError):
                self.server.metrics.chunk_rejected(exc)
            raise
        finally:
            if streaming is not None:
                self._uploads.stream_ended(streaming)
        return pb.UploadChunksResponse(accepted=accepted, duplicates=duplicates)

    def _run_of_upload(self, upload_id: str) -> JobRun:
        row = self.server.db.upload(upload_id)
        if row is None:
            raise NotFoundError("unknown upload")
        return self.server.run_for(row.job_id)

    async def GetUploadStatus(
        self, request: pb.GetUploadStatusRequest, context: Context
    ) -> pb.GetUploadStatusResponse:
        who = self.auth.require(context, "client")
        run = await blocking(self._run_of_upload, request.upload_id)
        return await blocking(run.upload_status, request.upload_id, who.id)

    async def CommitUpload(
        self, request: pb.CommitUploadRequest, context: Context
    ) -> pb.CommitUploadResponse:
        who = self.auth.require(context, "client")
        run = await blocking(self._run_of_upload, request.upload_id)
        signed = (bytes(request.statement), bytes(request.signature))
        receipt = await blocking(run.commit, request.upload_id, who.id, *signed)
        return pb.CommitUploadResponse(upload_id=request.upload_id, receipt_sha256=receipt)

    async def SendHeartbeat(
        self, request: pb.SendHeartbeatRequest, context: Context
    ) -> pb.SendHeartbeatResponse:
        who = self._client(context, request.client_id)
        return await blocking(self._heartbeat, request, who.id)

    def _heartbeat(
        self, request: pb.SendHeartbeatRequest, client_id: str
    ) -> pb.SendHeartbeatResponse:
        job_id, t = request.job_id, self.server.clock()
        config = self.server.job_config(job_id)
        if not self.server.db.touch_client(job_id, client_id, t):
            raise NotFoundError(f"client {client_id!r} is not registered for job {job_id!r}")
        load = host_load(request)  # liveness is recorded even when the load is malformed
        if load is not None:
            self.server.db.put_host_load(client_id, load, t)
        return pb.SendHeartbeatResponse(
            heartbeat_interval_s=config.participants.heartbeat_interval_s
        )

    async def SubmitMask(
        self, request: pb.SubmitMaskRequest, context: Context
    ) -> pb.SubmitMaskResponse:
        who = self._client(context, request.client_id)
        await blocking(ensure_enrolled, self.server, request.job_id, who.id)
        run = await blocking(self.server.run_for, request.job_id)
        recorded = await blocking(run.submit_mask, request.mask_id, request.mask)
        return pb.SubmitMaskResponse(mask_id=request.mask_id, recorded=recorded)

    async def ReportMetrics(
        self, request: pb.ReportMetricsRequest, context: Context
    ) -> pb.ReportMetricsResponse:
        who = self.auth.require(context, "client")
        await blocking(self._store_metrics, request, who.id)
        return pb.ReportMetricsResponse()

    def _store_metrics(self, request: pb.ReportMetricsRequest, client_id: str) -> None:
        self.server.report_metrics(
            request.job_id, request.round, client_id, dict(request.metrics)
        )


def register(servicer: AggregationServicer) -> Register:
    """Registration callback for :func:`fedhe_common.rpc.serving.create_server`."""

    def _register(server: grpc.aio.Server) -> list[str]:
        return [add_service(server, pb.DESCRIPTOR.services_by_name["AggregationService"], servicer)]

    return _register
