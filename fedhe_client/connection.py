"""The client's connection to the aggregation server: one channel, bounded retries."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import grpc

from fedhe_client.heartbeat import host_stats
from fedhe_client.update_codec import EncodedUpdate
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2_grpc as pb_grpc
from fedhe_common.config.models import PeerSection
from fedhe_common.errors import IncompleteUploadError, ManifestMismatchError
from fedhe_common.mlbridge.chunking import ChunkPlan
from fedhe_common.mlbridge.masks import EncryptionMask
from fedhe_common.rpc.connection import PeerConnection
from fedhe_common.rpc.errors import rpc_errors
from fedhe_common.rpc.retry import call_with_retry

logger = logging.getLogger(__name__)
UNARY_TIMEOUT_S = 30.0
STREAM_TIMEOUT_S = 600.0
DEFAULT_MAX_MESSAGE = 8 * 1024 * 1024
UPLOAD_ATTEMPTS = 6
TRANSIENT = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)


def commit_timeout(chunks: int) -> float:
    """CommitUpload's deadline: the server adds the upload's chunks before it answers,
    possibly after other clients' commits (measured ~1 ms per chunk; 20 ms allowed)."""
    return UNARY_TIMEOUT_S + 0.02 * chunks


class AggregateSink(Protocol):
    """Takes a downloaded aggregate as it streams (see ``update_codec.StreamingDecoder``)."""

    def header(self, header: pb.AggregateHeader) -> None: ...

    def chunk(self, chunk: pb.Chunk) -> None: ...


class ServerConnection(PeerConnection):
    """Typed calls to AggregationService with deadlines and retries on transient errors."""

    def __init__(self, peer: PeerSection, max_message_bytes: int = DEFAULT_MAX_MESSAGE) -> None:
        super().__init__(peer, pb_grpc.AggregationServiceStub, max_message_bytes)
        self.chunks_sent = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        # Threshold jobs: signs each upload (manifest, ciphertext chunks) at commit.
        self.signer: Callable[[pb.UploadManifest, list[bytes]], tuple[bytes, bytes]] | None = None

    def register(self, client_id: str, job_id: str | None) -> pb.RegisterClientResponse:
        """Register for a job (or the server's only running job)."""
        return self.call(
            "RegisterClient",  # type: ignore[return-value]
            pb.RegisterClientRequest(client_id=client_id, job_id=job_id or ""),
        )

    def round_plan(
        self, job_id: str, client_id: str, after_round: int, wait_s: int = 20
    ) -> pb.GetRoundPlanResponse:
        """Long-poll for the next round."""
        request = pb.GetRoundPlanRequest(
            job_id=job_id, client_id=client_id, after_round=after_round, wait_s=wait_s
        )
        return self.call("GetRoundPlan", request, timeout=wait_s + 15)  # type: ignore[return-value]

    def job_status(self, job_id: str) -> pb.GetJobStatusResponse:
        """The job's state and round history."""
        return self.call(
            "GetJobStatus",  # type: ignore[return-value]
            pb.GetJobStatusRequest(job_id=job_id),
        )

    def submit_mask(self, job_id: str, client_id: str, mask: EncryptionMask) -> bool:
        """Record the agreed mask on the server (idempotent); True if this call recorded it."""
        reply = self.call(
            "SubmitMask",
            pb.SubmitMaskRequest(
                job_id=job_id, client_id=client_id, mask_id=mask.mask_id, mask=mask.to_bytes()
            ),
        )
        return bool(reply.recorded)  # type: ignore[attr-defined]

    def volunteer(self, job_id: str, client_id: str, number: int) -> pb.VolunteerDecryptionResponse:
        """Offer to decrypt a round's aggregate (threshold keys)."""
        return self.call(
            "VolunteerDecryption",
            pb.VolunteerDecryptionRequest(  # type: ignore[return-value]
                job_id=job_id, client_id=client_id, round=number
            ),
        )

    def submit_shares(self, job_id: str, number: int, chunks: list[pb.Chunk]) -> None:
        """Send sealed decryption shares (idempotent on retry)."""

        def send() -> object:
            requests = (
                pb.SubmitDecryptionSharesRequest(
                    job_id=job_id,
                    round=number,
                    chunk=pb.Chunk(
                        stream=c.stream,
                        index=c.index,
                        party=c.party,
                        payload=c.payload,
                        sha256=hashlib.sha256(c.payload).digest(),
                    ),
                )
                for c in chunks
            )
            return self.stub.SubmitDecryptionShares(
                requests, timeout=STREAM_TIMEOUT_S, metadata=self.metadata
            )

        with rpc_errors():
            call_with_retry(send, what="SubmitDecryptionShares")

    def heartbeat(self, job_id: str, client_id: str, timeout: float) -> None:
        """Tell the server this client is alive."""
        self.call(
            "SendHeartbeat",
            pb.SendHeartbeatRequest(job_id=job_id, client_id=client_id, host=host_stats()),
            timeout=timeout,
        )

    def report(self, job_id: str, client_id: str, number: int, metrics: dict[str, float]) -> None:
        """Send evaluation metrics for a round."""
        self.call(
            "ReportMetrics",
            pb.ReportMetricsRequest(
                job_id=job_id, client_id=client_id, round=number, metrics=metrics
            ),
        )

    def download(
        self, job_id: str, number: int, sink: AggregateSink | None = None
    ) -> tuple[pb.AggregateHeader, list[pb.Chunk]]:
        """Stream a published aggregate; every chunk's sha256 is checked.

        With a ``sink`` each chunk goes to it as it arrives and none is kept (the list
        returned is empty); otherwise they are returned."""

        def fetch() -> tuple[pb.AggregateHeader, list[pb.Chunk]]:
            stream = self.stub.GetAggregate(
                pb.GetAggregateRequest(job_id=job_id, round=number),
                timeout=STREAM_TIMEOUT_S,
                metadata=self.metadata,
            )
            header, chunks = None, []
            for item in stream:
                self.bytes_received += item.ByteSize()
                if item.HasField("header"):
                    header = item.header
                    if sink is not None:
                        sink.header(header)  # a retry starts the sink over
                else:
                    if hashlib.sha256(item.chunk.payload).digest() != item.chunk.sha256:
                        raise ManifestMismatchError("aggregate chunk failed its sha256 check")
                    if sink is not None:
                        sink.chunk(item.chunk)  # decoded now: no chunk is kept
                    else:
                        chunks.append(item.chunk)
            if header is None:
                raise ManifestMismatchError("aggregate stream had no header")
            return header, chunks

        with rpc_errors():
            return call_with_retry(fetch, what="GetAggregate")

    def upload(
        self,
        manifest: pb.UploadManifest,
        update: EncodedUpdate,
        on_chunk: Callable[[int], None] = lambda n: None,
    ) -> bytes:
        """Resumable upload then commit (signed in threshold jobs); returns the receipt."""
        upload_id = self.send(manifest, update, on_chunk)
        # The server adds every chunk inside the commit call: its deadline grows with them.
        timeout = commit_timeout(update.ct_plan.count + update.pt_plan.count)
        if self.signer is None:
            return self.commit(upload_id, timeout=timeout)
        statement, signature = self.signer(manifest, list(update.ciphertext))
        return self.commit(upload_id, statement, signature, timeout=timeout)

    def send(
        self,
        manifest: pb.UploadManifest,
        update: EncodedUpdate,
        on_chunk: Callable[[int], None] = lambda n: None,
    ) -> str:
        """Announce an upload and stream the chunks the server is missing; return its id.

        After an interruption the server is asked what it has, and only the missing
        chunks are sent again (a fresh request iterator each attempt).
        """
        # A busy server (RESOURCE_EXHAUSTED: its upload slots are taken) is asked again,
        # with backoff, for as long as one stream may take.
        request = pb.BeginUploadRequest(manifest=manifest)
        with rpc_errors():
            begin = call_with_retry(
                lambda: self.stub.BeginUpload(
                    request, timeout=UNARY_TIMEOUT_S, metadata=self.metadata
                ),
                what="BeginUpload",
                max_elapsed_s=STREAM_TIMEOUT_S,
            )
        self.bytes_sent += manifest.ByteSize()
        upload_id = str(begin.upload_id)  # type: ignore[attr-defined]
        if begin.committed:  # type: ignore[attr-defined]
            return upload_id
        streams = {
            pb.STREAM_KIND_CIPHERTEXT: (update.ciphertext, update.ct_plan),
            pb.STREAM_KIND_PLAINTEXT: (update.plaintext, update.pt_plan),
        }
        for _attempt in range(UPLOAD_ATTEMPTS):
            status = self.call("GetUploadStatus", pb.GetUploadStatusRequest(upload_id=upload_id))
            missing = [(pb.STREAM_KIND_CIPHERTEXT, k) for k in status.missing_ciphertext]  # type: ignore[attr-defined]
            missing += [(pb.STREAM_KIND_PLAINTEXT, k) for k in status.missing_plaintext]  # type: ignore[attr-defined]
            if not missing or status.state == pb.UPLOAD_STATE_COMMITTED:  # type: ignore[attr-defined]
                return upload_id
            requests = self._chunk_requests(upload_id, missing, streams, on_chunk)
            try:
                with rpc_errors():
                    self.stub.UploadChunks(
                        requests, timeout=STREAM_TIMEOUT_S, metadata=self.metadata
                    )
            except Exception as exc:
                if getattr(exc, "status", None) not in TRANSIENT:
                    raise
                logger.info("upload interrupted (%s); resuming", exc)
        raise IncompleteUploadError(f"upload incomplete after {UPLOAD_ATTEMPTS} attempts")

    def _chunk_requests(
        self,
        upload_id: str,
        missing: list[tuple[pb.StreamKind.ValueType, int]],
        streams: dict[pb.StreamKind.ValueType, tuple[Sequence[bytes], ChunkPlan]],
        on_chunk: Callable[[int], None],
    ) -> Iterator[pb.UploadChunksRequest]:
        for stream, k in missing:
            payloads, plan = streams[stream]
            payload = payloads[k]
            request = pb.UploadChunksRequest(
                chunk=pb.Chunk(
                    upload_id=upload_id,
                    stream=stream,
                    index=k,
                    num_values=plan.length(k),
                    payload=payload,
                    sha256=hashlib.sha256(payload).digest(),
                )
            )
            self.bytes_sent += request.ByteSize()
            yield request
            self.chunks_sent += 1
            on_chunk(self.chunks_sent)

    def commit(
        self,
        upload_id: str,
        statement: bytes = b"",
        signature: bytes = b"",
        timeout: float = UNARY_TIMEOUT_S,
    ) -> bytes:
        """Commit a complete upload (idempotent); returns the receipt."""
        reply = self.call(
            "CommitUpload",
            pb.CommitUploadRequest(upload_id=upload_id, statement=statement, signature=signature),
            timeout=timeout,
        )
        return bytes(reply.receipt_sha256)  # type: ignore[attr-defined]

