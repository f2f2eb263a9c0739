"""AggregationService: authenticates, then hands each RPC to the job's run."""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections.abc import Iterator

import grpc

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2_grpc as pb_grpc
from fedhe_common.errors import AuthenticationError, NotFoundError
from fedhe_common.rpc.auth import Identity, TokenAuthority
from fedhe_common.rpc.errors import abort, translate_errors, translate_stream_errors
from fedhe_server.decryption import ThresholdDecryption
from fedhe_server.jobrun import JobRun
from fedhe_server.service import SERVER_WORKERS, AggregationServer, max_message_bytes

logger = logging.getLogger(__name__)
MAX_WAIT_S = 30
# Long-polls held at once; the other workers stay free for uploads and commits.
LONG_POLL_SLOTS = SERVER_WORKERS * 3 // 4
BUSY_RETRY_MS = (1000, 3000)


class AggregationServicer(pb_grpc.AggregationServiceServicer):
    """Thin adapter: identity checks and protobuf <-> JobRun calls."""

    def __init__(self, server: AggregationServer, auth: TokenAuthority) -> None:
        self.server = server
        self.auth = auth
        self._poll_slots = threading.BoundedSemaphore(LONG_POLL_SLOTS)

    def _client(self, context: grpc.ServicerContext, claimed_id: str) -> Identity:
        """The calling client, which must be the client the request names."""
        who = self.auth.require(context, "client")
        if claimed_id != who.id:
            raise AuthenticationError("client_id does not match the caller's identity")
        return who

    @translate_errors
    def SubmitJob(
        self, request: pb.SubmitJobRequest, context: grpc.ServicerContext
    ) -> pb.SubmitJobResponse:
        self.auth.require(context, "admin")
        job_id, created = self.server.submit(request.job_yaml)
        return pb.SubmitJobResponse(job_id=job_id, created=created)

    @translate_errors
    def GetJobStatus(
        self, request: pb.GetJobStatusRequest, context: grpc.ServicerContext
    ) -> pb.GetJobStatusResponse:
        self.auth.require(context, "admin", "client")
        db = self.server.db
        job = db.job(request.job_id)
        if job is None:
            raise NotFoundError(f"unknown job {request.job_id!r}")
        history = []
        for r in db.rounds(request.job_id):
            seconds = (r.closed or time.time()) - r.opened
            history.append(
                pb.RoundSummary(
                    round=r.round,
                    state=r.state,
                    contributors=r.contributors or 0,
                    weight_sum=r.weight_sum or 0,
                    seconds=seconds,
                    upload_bytes=r.upload_bytes or 0,
                    metrics=db.round_metrics(request.job_id, r.round),
                )
            )
        open_row = db.open_round(request.job_id)
        return pb.GetJobStatusResponse(
            job_id=request.job_id,
            state=str(job["state"]),
            current_round=open_row.round if open_row else db.last_published(request.job_id),
            rounds=int(job["rounds"]),
            history=history,
        )  # type: ignore[call-overload]

    @translate_errors
    def RegisterClient(
        self, request: pb.RegisterClientRequest, context: grpc.ServicerContext
    ) -> pb.RegisterClientResponse:
        who = self._client(context, request.client_id)
        job_id = request.job_id or self.server.active_job()
        job = self.server.db.job(job_id)
        if job is None:
            raise NotFoundError(f"unknown job {job_id!r}")
        run = self.server.run_for(job_id) if job["state"] != "KEYGEN" else None
        self.server.db.register_client(job_id, who.id, time.time())
        job = self.server.db.job(job_id)
        assert job is not None
        logger.info("client %s registered for job %s", who.id, job_id)
        return pb.RegisterClientResponse(
            job_id=job_id,
            job_yaml=str(job["config_yaml"]),
            context_fingerprint=run.fingerprint if run else b"",
            values_per_chunk=run.values_per_chunk if run else 0,
            max_message_bytes=max_message_bytes(),
        )

    @translate_errors
    def GetRoundPlan(
        self, request: pb.GetRoundPlanRequest, context: grpc.ServicerContext
    ) -> pb.GetRoundPlanResponse:
        who = self._client(context, request.client_id)
        plan = self._current_plan(request, who.id)
        wait_s = min(request.wait_s or 0, MAX_WAIT_S)
        if not plan.retry or wait_s <= 0:
            return plan
        # Each held poll keeps a worker thread; past the budget, answer at once so
        # uploads and commits always find a free worker.
        if not self._poll_slots.acquire(blocking=False):
            plan.retry_after_ms = random.randint(*BUSY_RETRY_MS)
            return plan
        try:
            deadline = time.monotonic() + wait_s
            while plan.retry and context.is_active():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.server.wait_for_change(min(1.0, left))
                plan = self._current_plan(request, who.id)
            return plan
        finally:
            self._poll_slots.release()

    def _current_plan(
        self, request: pb.GetRoundPlanRequest, client_id: str
    ) -> pb.GetRoundPlanResponse:
        job = self.server.db.job(request.job_id)
        if job is None:
            raise NotFoundError(f"unknown job {request.job_id!r}")
        if job["state"] == "KEYGEN":  # threshold keys not generated yet
            return pb.GetRoundPlanResponse(job_id=request.job_id, retry=True)
        return self._plan(self.server.run_for(request.job_id), request.after_round, client_id)

    def _plan(self, run: JobRun, after_round: int, client_id: str) -> pb.GetRoundPlanResponse:
        db = self.server.db
        job = db.job(run.job_id)
        assert job is not None
        base = {
            "job_id": run.job_id,
            "aggregate_round": db.last_published(run.job_id),
            "layout_id": str(job["layout_id"] or ""),
            "context_fingerprint": run.fingerprint,
            "mask_required": run.selective,
            "mask_id": run.mask_id(),
        }
        if job["state"] == "FINISHED":
            return pb.GetRoundPlanResponse(phase=pb.ROUND_PHASE_JOB_FINISHED, **base)
        if job["state"] == "FAILED":
            return pb.GetRoundPlanResponse(phase=pb.ROUND_PHASE_JOB_FAILED, **base)
        decrypting = run.decrypting_round()
        if decrypting is not None:
            if ThresholdDecryption(run).pending_for(client_id, decrypting.round):
                return pb.GetRoundPlanResponse(
                    phase=pb.ROUND_PHASE_DECRYPT, round=decrypting.round, **base
                )
            return pb.GetRoundPlanResponse(phase=pb.ROUND_PHASE_TRAIN, retry=True, **base)
        row = db.open_round(run.job_id)
        if row is None or not self._is_new_for(row.round, after_round, run.job_id, client_id):
            return pb.GetRoundPlanResponse(phase=pb.ROUND_PHASE_TRAIN, retry=True, **base)
        phase = pb.ROUND_PHASE_MASK if row.round == 0 else pb.ROUND_PHASE_TRAIN
        return pb.GetRoundPlanResponse(
            phase=phase, round=row.round, deadline_unix_ms=int(row.deadline * 1000), **base
        )

    def _is_new_for(self, number: int, after_round: int, job_id: str, client_id: str) -> bool:
        if number > after_round:
            return True
        if number == 0:  # the mask round: new unless this client already committed it
            return not self.server.db.query(
                "SELECT 1 FROM uploads WHERE job_id=? AND round=0 AND client_id=? "
                "AND state='COMMITTED'",
                (job_id, client_id),
            )
        return False

    @translate_stream_errors
    def GetAggregate(
        self, request: pb.GetAggregateRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.GetAggregateResponse]:
        self.auth.require(context, "client")
        run = self.server.run_for(request.job_id)
        header = run.files.read_aggregate_header(request.round)
        if header is None:
            raise NotFoundError(f"round {request.round} has no published aggregate")
        yield pb.GetAggregateResponse(
            header=pb.AggregateHeader(
                round=request.round,
                weight_sum=int(header["weight_sum"]),
                contributors=int(header["contributors"]),
                ciphertext_chunks=int(header["ciphertext_chunks"]),
                plaintext_chunks=int(header["plaintext_chunks"]),
                num_values=int(header["num_values"]),
                layout_id=str(header["layout_id"]),
                active_parties=[int(a) for a in header.get("active_parties", [])],  # type: ignore[attr-defined]
                context_fingerprint=run.fingerprint,
            )
        )
        ct_plan, pt_plan = run.plans(int(header["num_values"]), request.round)
        for stream, plan in (
            (pb.STREAM_KIND_CIPHERTEXT, ct_plan),
            (pb.STREAM_KIND_PLAINTEXT, pt_plan),
        ):
            for k in range(plan.count):
                payload = run.files.aggregate_chunk_path(request.round, stream, k).read_bytes()
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
                payload = run.files.share_path(request.round, int(alpha), k).read_bytes()
                yield pb.GetAggregateResponse(
                    chunk=pb.Chunk(
                        stream=pb.STREAM_KIND_DECRYPTION_SHARE,
                        index=k,
                        party=int(alpha),
                        payload=payload,
                        sha256=hashlib.sha256(payload).digest(),
                    )
                )

    @translate_errors
    def VolunteerDecryption(
        self, request: pb.VolunteerDecryptionRequest, context: grpc.ServicerContext
    ) -> pb.VolunteerDecryptionResponse:
        who = self._client(context, request.client_id)
        run = self.server.run_for(request.job_id)
        return ThresholdDecryption(run).volunteer(who.id, request.round)

    def SubmitDecryptionShares(
        self,
        request_iterator: Iterator[pb.SubmitDecryptionSharesRequest],
        context: grpc.ServicerContext,
    ) -> pb.SubmitDecryptionSharesResponse:
        accepted = 0
        try:
            who = self.auth.require(context, "client")
            for message in request_iterator:
                run = self.server.run_for(message.job_id)
                if not ThresholdDecryption(run).put_share(who.id, message.round, message.chunk):
                    accepted += 1
        except grpc.RpcError:
            raise
        except Exception as exc:
            abort(context, exc)
        return pb.SubmitDecryptionSharesResponse(accepted=accepted)

    @translate_errors
    def BeginUpload(
        self, request: pb.BeginUploadRequest, context: grpc.ServicerContext
    ) -> pb.BeginUploadResponse:
        self._client(context, request.manifest.client_id)
        return self.server.run_for(request.manifest.job_id).begin_upload(request.manifest)

    def UploadChunks(
        self, request_iterator: Iterator[pb.UploadChunksRequest], context: grpc.ServicerContext
    ) -> pb.UploadChunksResponse:
        accepted = duplicates = 0
        try:
            who = self.auth.require(context, "client")
            run = None
            for message in request_iterator:
                chunk = message.chunk
                if run is None:
                    row = self.server.db.upload(chunk.upload_id)
                    if row is None:
                        raise NotFoundError("unknown upload")
                    run = self.server.run_for(row.job_id)
                if run.put_chunk(chunk, who.id):
                    duplicates += 1
                else:
                    accepted += 1
        except grpc.RpcError:
            logger.info("upload stream ended early after %d chunks", accepted)
            raise
        except Exception as exc:
            self.server.metrics.chunk_rejected(exc)
            abort(context, exc)
        return pb.UploadChunksResponse(accepted=accepted, duplicates=duplicates)

    @translate_errors
    def GetUploadStatus(
        self, request: pb.GetUploadStatusRequest, context: grpc.ServicerContext
    ) -> pb.GetUploadStatusResponse:
        self.auth.require(context, "client")
        row = self.server.db.upload(request.upload_id)
        if row is None:
            raise NotFoundError("unknown upload")
        return self.server.run_for(row.job_id).upload_status(request.upload_id)

    @translate_errors
    def CommitUpload(
        self, request: pb.CommitUploadRequest, context: grpc.ServicerContext
    ) -> pb.CommitUploadResponse:
        who = self.auth.require(context, "client")
        row = self.server.db.upload(request.upload_id)
        if row is None:
            raise NotFoundError("unknown upload")
        receipt = self.server.run_for(row.job_id).commit(request.upload_id, who.id)
        return pb.CommitUploadResponse(upload_id=request.upload_id, receipt_sha256=receipt)

    @translate_errors
    def SendHeartbeat(
        self, request: pb.SendHeartbeatRequest, context: grpc.ServicerContext
    ) -> pb.SendHeartbeatResponse:
        who = self._client(context, request.client_id)
        run = self.server.run_for(request.job_id)
        if not self.server.db.touch_client(request.job_id, who.id, time.time()):
            raise NotFoundError(f"client {who.id!r} is not registered for job {request.job_id!r}")
        return pb.SendHeartbeatResponse(
            heartbeat_interval_s=run.config.participants.heartbeat_interval_s
        )

    @translate_errors
    def SubmitMask(
        self, request: pb.SubmitMaskRequest, context: grpc.ServicerContext
    ) -> pb.SubmitMaskResponse:
        self._client(context, request.client_id)
        recorded = self.server.run_for(request.job_id).submit_mask(request.mask_id, request.mask)
        return pb.SubmitMaskResponse(mask_id=request.mask_id, recorded=recorded)

    @translate_errors
    def ReportMetrics(
        self, request: pb.ReportMetricsRequest, context: grpc.ServicerContext
    ) -> pb.ReportMetricsResponse:
        who = self.auth.require(context, "client")
        self.server.run_for(request.job_id)
        with self.server.db.transaction() as tx:
            for name, value in request.metrics.items():
                tx.execute(
                    "INSERT OR REPLACE INTO metrics VALUES (?,?,?,?,?)",
                    (request.job_id, request.round, who.id, name, float(value)),
                )
        return pb.ReportMetricsResponse()


def register(servicer: AggregationServicer):  # type: ignore[no-untyped-def]
    """Registration callback for :func:`create_server`."""

    def _register(server: grpc.Server) -> list[str]:
        pb_grpc.add_AggregationServiceServicer_to_server(servicer, server)
        return ["fedhe.aggregation.v1.AggregationService"]

    return _register
