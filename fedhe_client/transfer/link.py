"""The data owner's calls: evaluation keys to the key authority, data set and replies
to the server. Ciphertexts travel in pieces (``fedhe_common.rpc.pieces``)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common._proto.fedhe.keyauth.v1 import keyauth_pb2, keyauth_pb2_grpc
from fedhe_common.config.models import PeerSection
from fedhe_common.errors import IncompleteUploadError, InvalidArgumentError
from fedhe_common.hetal.protocol import OwnerReply, OwnerRequest, RequestKind
from fedhe_common.rpc.connection import PeerConnection
from fedhe_common.rpc.errors import rpc_errors
from fedhe_common.rpc.pieces import PIECE_BYTES, Assembler, BlobInfo, split
from fedhe_common.rpc.retry import call_with_retry

logger = logging.getLogger(__name__)
KEY_PART_BYTES = 1 << 20
STREAM_TIMEOUT_S = 900.0
UPLOAD_ATTEMPTS = 6
MAX_REQUEST_ITEMS = 4096
MAX_REQUEST_BYTES = 1 << 30
PHASE_NAMES = {
    pb.TRANSFER_PHASE_KEYS: "keys",
    pb.TRANSFER_PHASE_UPLOAD: "upload",
    pb.TRANSFER_PHASE_TRAINING: "training",
    pb.TRANSFER_PHASE_FINISHED: "finished",
    pb.TRANSFER_PHASE_FAILED: "failed",
}


def register_eval_keys(peer: PeerSection, job_id: str, blob: bytes) -> bool:
    """Stream the owner's evaluation keys to the key authority; True when newly stored."""
    digest = hashlib.sha256(blob).digest()

    def parts() -> Iterator[keyauth_pb2.EvalKeysPart]:
        for offset in range(0, len(blob), KEY_PART_BYTES):
            yield keyauth_pb2.EvalKeysPart(
                job_id=job_id, total_bytes=len(blob), sha256=digest, offset=offset,
                data=blob[offset : offset + KEY_PART_BYTES],
            )  # fmt: skip

    conn = PeerConnection(peer, keyauth_pb2_grpc.KeyAuthorityServiceStub, 4 << 20)
    try:
        reply = _stream_call(conn, "RegisterEvalKeys", parts, STREAM_TIMEOUT_S)
    finally:
        conn.close()
    return bool(reply.created)


def _stream_call(
    conn: PeerConnection, name: str, make: Callable[[], Iterator[Any]], timeout: float
) -> Any:
    """A client-streaming call, retried on transient errors with a fresh request stream."""
    method = getattr(conn.stub, name)
    with rpc_errors():
        return call_with_retry(
            lambda: method(make(), timeout=timeout, metadata=conn.metadata), what=name
        )


def upload_dataset(
    conn: PeerConnection, begin: pb.BeginTransferUploadRequest, items: Sequence[bytes]
) -> bytes:
    """Resumable: ask what is missing, send those ciphertexts' pieces, commit."""
    for _attempt in range(UPLOAD_ATTEMPTS):
        reply = conn.call("BeginTransferUpload", begin)
        if reply.committed:
            break
        missing = list(reply.missing_items)
        if not missing:
            break

        def pieces(
            missing: list[int] = missing, upload_id: str = reply.upload_id
        ) -> Iterator[pb.TransferPiece]:
            for item in missing:
                for k, data in split(items[item]):
                    yield pb.TransferPiece(upload_id=upload_id, item=item, piece=k, data=data)

        logger.info("uploading %d of %d ciphertexts", len(missing), len(items))
        _stream_call(conn, "UploadTransferPieces", pieces, STREAM_TIMEOUT_S)
    else:
        raise IncompleteUploadError("the encrypted data set did not get through")
    done = conn.call("CommitTransferUpload", pb.CommitTransferUploadRequest(upload_id=begin.job_id))
    return bytes(done.receipt_sha256)


def next_request(
    conn: PeerConnection, job_id: str, client_id: str, next_seq: int, wait_s: int = 20
) -> tuple[pb.OwnerRequestHeader, OwnerRequest | None]:
    """Long-poll the trainer's next request (its ciphertexts reassembled and verified)."""
    ask = pb.GetOwnerRequestRequest(
        job_id=job_id, client_id=client_id, next_seq=next_seq, wait_s=wait_s
    )

    def fetch() -> tuple[pb.OwnerRequestHeader, OwnerRequest | None]:
        stream = conn.stub.GetOwnerRequest(ask, timeout=wait_s + 300, metadata=conn.metadata)
        header: pb.OwnerRequestHeader | None = None
        assembler: Assembler | None = None
        for part in stream:
            if part.HasField("header"):
                header = part.header
                assembler = Assembler.described(
                    header.items, MAX_REQUEST_ITEMS, MAX_REQUEST_BYTES,
                    header.piece_bytes or PIECE_BYTES,
                )  # fmt: skip
            elif assembler is None:
                raise InvalidArgumentError("the server sent pieces before the header")
            else:
                assembler.add(part.piece.item, part.piece.piece, bytes(part.piece.data))
        if header is None or assembler is None:
            raise InvalidArgumentError("the server sent no request header")
        if not header.ready or not header.kind:
            return header, None
        request = OwnerRequest(
            seq=int(header.seq), kind=RequestKind(header.kind), step=int(header.step),
            epoch=int(header.epoch), ciphertexts=assembler.blobs(),
        )  # fmt: skip
        return header, request

    with rpc_errors():
        return call_with_retry(fetch, what="GetOwnerRequest")


def send_reply(conn: PeerConnection, job_id: str, client_id: str, reply: OwnerReply) -> bool:
    """Stream one answer; True when the server applied it (False: it had before)."""
    header = pb.OwnerReplyHeader(
        job_id=job_id, client_id=client_id, seq=reply.seq, kind=reply.kind.value, stop=reply.stop
    )
    for blob in reply.ciphertexts:
        info = BlobInfo.of(blob)
        header.items.append(pb.TransferItem(size=info.size, sha256=info.sha256))

    def parts() -> Iterator[pb.OwnerReplyPart]:
        yield pb.OwnerReplyPart(header=header)
        for item, blob in enumerate(reply.ciphertexts):
            for k, data in split(blob):
                yield pb.OwnerReplyPart(piece=pb.TransferPiece(item=item, piece=k, data=data))

    done = _stream_call(conn, "AnswerOwnerRequest", parts, STREAM_TIMEOUT_S)
    return bool(done.applied)
