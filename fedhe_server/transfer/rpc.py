"""Thin transfer-job handlers of AggregationService (mixed into its servicer).

Each checks the caller, hands the work to the job's :class:`TransferRun` on the thread
pool and translates messages; ciphertexts travel as pieces (``fedhe_common.rpc.pieces``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.errors import InvalidArgumentError
from fedhe_common.hetal.protocol import OwnerReply, OwnerRequest, RequestKind
from fedhe_common.rpc.pieces import PIECE_BYTES, Assembler, BlobInfo, split
from fedhe_common.rpc.serving import blocking
from fedhe_server.store.transfer import TransferPhase, TransferRow
from fedhe_server.transfer.run import TransferRun

if TYPE_CHECKING:
    from fedhe_common.rpc.auth import Identity, TokenAuthority
    from fedhe_server.service import AggregationServer

Context = grpc.aio.ServicerContext
MAX_WAIT_S = 30
MAX_REPLY_ITEMS = 4096
MAX_REPLY_BYTES = 256 << 20  # one reply: the owner's fresh ciphertexts for one request
PHASES = {
    TransferPhase.KEYS: pb.TRANSFER_PHASE_KEYS,
    TransferPhase.UPLOAD: pb.TRANSFER_PHASE_UPLOAD,
    TransferPhase.TRAINING: pb.TRANSFER_PHASE_TRAINING,
    TransferPhase.FINISHED: pb.TRANSFER_PHASE_FINISHED,
    TransferPhase.FAILED: pb.TRANSFER_PHASE_FAILED,
}


def _header(row: TransferRow, request: OwnerRequest | None) -> pb.OwnerRequestHeader:
    header = pb.OwnerRequestHeader(
        ready=request is not None or row.phase == TransferPhase.FINISHED,
        phase=PHASES[row.phase],
        piece_bytes=PIECE_BYTES,
        error=row.error or "",
    )
    if row.phase == TransferPhase.FINISHED and request is None:
        header.kind = RequestKind.FINISHED.value
        header.seq = row.answered
    if request is not None:
        header.seq, header.kind = request.seq, request.kind.value
        header.step, header.epoch = request.step, request.epoch
        for blob in request.ciphertexts:
            info = BlobInfo.of(blob)
            header.items.append(pb.TransferItem(size=info.size, sha256=info.sha256))
    return header


class TransferServicer:
    """The transfer RPCs; AggregationServicer inherits them."""

    server: AggregationServer
    auth: TokenAuthority
    _held_polls: int

    def _client(self, context: Context, claimed_id: str) -> Identity:
        raise NotImplementedError  # AggregationServicer's

    def _transfer(self, job_id: str) -> TransferRun:
        return self.server.transfers.get(job_id)

    async def BeginTransferUpload(
        self, request: pb.BeginTransferUploadRequest, context: Context
    ) -> pb.BeginTransferUploadResponse:
        who = self._client(context, request.client_id)
        run = await blocking(self._transfer, request.job_id)
        return await blocking(run.begin_upload, who.id, request)

    async def UploadTransferPieces(
        self, request_iterator: AsyncIterator[pb.TransferPiece], context: Context
    ) -> pb.UploadTransferPiecesResponse:
        who = self.auth.require(context, "client")
        accepted = duplicates = 0
        async for piece in request_iterator:
            run = await blocking(self._transfer, piece.upload_id)  # upload id = job id
            if await blocking(run.put_piece, who.id, piece):
                duplicates += 1
            else:
                accepted += 1
        return pb.UploadTransferPiecesResponse(accepted=accepted, duplicates=duplicates)

    async def CommitTransferUpload(
        self, request: pb.CommitTransferUploadRequest, context: Context
    ) -> pb.CommitTransferUploadResponse:
        who = self.auth.require(context, "client")
        run = await blocking(self._transfer, request.upload_id)
        receipt = await blocking(run.commit_upload, who.id)
        return pb.CommitTransferUploadResponse(receipt_sha256=receipt)

    async def GetOwnerRequest(
        self, request: pb.GetOwnerRequestRequest, context: Context
    ) -> AsyncIterator[pb.OwnerRequestPart]:
        who = self._client(context, request.client_id)
        run = await blocking(self._transfer, request.job_id)
        row, pending = await blocking(run.request_for, who.id)
        deadline = time.monotonic() + min(request.wait_s or 0, MAX_WAIT_S)
        live = (TransferPhase.KEYS, TransferPhase.UPLOAD, TransferPhase.TRAINING)
        while pending is None and row.phase in live:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._held_polls += 1
            try:  # the worker notifies ``changed`` when it publishes a request
                await self.server.changed.wait_async(min(5.0, left))
            finally:
                self._held_polls -= 1
            row, pending = await blocking(run.request_for, who.id)
        yield pb.OwnerRequestPart(header=_header(row, pending))
        for item, blob in enumerate(pending.ciphertexts if pending else ()):
            for k, data in split(blob):
                yield pb.OwnerRequestPart(piece=pb.TransferPiece(item=item, piece=k, data=data))

    async def AnswerOwnerRequest(
        self, request_iterator: AsyncIterator[pb.OwnerReplyPart], context: Context
    ) -> pb.AnswerOwnerRequestResponse:
        who = self.auth.require(context, "client")
        header: pb.OwnerReplyHeader | None = None
        assembler: Assembler | None = None
        async for part in request_iterator:
            if part.HasField("header"):
                if header is not None:
                    raise InvalidArgumentError("one header per reply")
                header = part.header
                if header.client_id != who.id:
                    raise InvalidArgumentError("client_id does not match the caller")
                assembler = Assembler.described(header.items, MAX_REPLY_ITEMS, MAX_REPLY_BYTES)
            elif assembler is None:
                raise InvalidArgumentError("the header comes first")
            else:
                assembler.add(part.piece.item, part.piece.piece, bytes(part.piece.data))
        if header is None or assembler is None:
            raise InvalidArgumentError("empty reply")
        try:
            kind = RequestKind(header.kind)
        except ValueError:
            raise InvalidArgumentError(f"unknown request kind {header.kind!r}") from None
        reply = OwnerReply(header.seq, kind, assembler.blobs(), header.stop)
        run = await blocking(self._transfer, header.job_id)
        applied = await blocking(run.answer, who.id, reply)
        return pb.AnswerOwnerRequestResponse(applied=applied)
