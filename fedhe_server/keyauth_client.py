"""The server's calls to the key authority: create a job's keys, fetch public material."""

from __future__ import annotations

from typing import Any

from fedhe_common._proto.fedhe.keyauth.v1 import keyauth_pb2 as pb
from fedhe_common._proto.fedhe.keyauth.v1 import keyauth_pb2_grpc as pb_grpc
from fedhe_common.config.models import PeerSection
from fedhe_common.crypto.context import PublicParams
from fedhe_common.errors import KeyMaterialError
from fedhe_common.rpc.connection import PeerConnection
from fedhe_common.rpc.errors import rpc_errors

TIMEOUT_S = 30.0
SUBMIT_TIMEOUT_S = 10.0


class KeyAuthClient:
    """Public-only access: this client never asks for or receives a secret key."""

    def __init__(self, peer: PeerSection) -> None:
        self._conn = PeerConnection(peer, pb_grpc.KeyAuthorityServiceStub, 4 * 1024 * 1024)  # type: ignore[attr-defined]

    def close(self) -> None:
        """Close the channel."""
        self._conn.close()

    def _once(self, name: str, request: object) -> Any:
        """One attempt with a deadline (job submission: the caller decides on retries)."""
        with rpc_errors():
            return getattr(self._conn.stub, name)(
                request, timeout=SUBMIT_TIMEOUT_S, metadata=self._conn.metadata
            )

    def public_params(
        self, job_id: str, preset: str, clip_bound: float | None, clients: list[str] | None = None
    ) -> tuple[PublicParams, bytes]:
        """Create the job's keys if needed; return (public params, fingerprint)."""
        self._once(
            "CreateJobKeys",
            pb.CreateJobKeysRequest(
                job_id=job_id, preset=preset, clip_bound=clip_bound or 0, clients=clients or []
            ),
        )
        reply = self._once("GetPublicContext", pb.GetPublicContextRequest(job_id=job_id))
        params = PublicParams.from_json(reply.public_params_json)
        if params.preset.name != preset:
            raise KeyMaterialError("key authority returned keys for another preset")
        return params, bytes(reply.context_fingerprint)

    def create_threshold(
        self,
        job_id: str,
        preset: str,
        clip_bound: float | None,
        parties: int,
        threshold: int,
        clients: list[str] | None = None,
    ) -> None:
        """Open the job's distributed key generation (the parties run it)."""
        self._once(
            "CreateJobKeys",
            pb.CreateJobKeysRequest(
                job_id=job_id,
                preset=preset,
                clip_bound=clip_bound or 0,
                mode="threshold",
                parties=parties,
                threshold=threshold,
                clients=clients or [],
            ),
        )

    def threshold_keys(
        self, job_id: str
    ) -> tuple[PublicParams, bytes, dict[str, int], dict[str, str]] | None:
        """(params, fingerprint, client_id -> alpha, client_id -> identity key hex) once key
        generation completed.

        Polled by the round keeper, so a single attempt (no retry loop)."""
        with rpc_errors():
            reply = self._conn.stub.GetKeyGeneration(
                pb.GetKeyGenerationRequest(job_id=job_id),
                timeout=TIMEOUT_S,
                metadata=self._conn.metadata,
            )
        if not reply.complete:
            return None
        params = PublicParams.from_json(reply.public_params_json)
        return (
            params,
            bytes(reply.context_fingerprint),
            {p.client_id: p.alpha for p in reply.parties},
            {p.client_id: bytes(p.identity_public_key).hex() for p in reply.parties},
        )

    def create_transfer(self, job_id: str, clients: list[str], max_eval_key_bytes: int) -> None:
        """Open a transfer job: its data owner registers evaluation keys (no secret key here)."""
        self._once(
            "CreateTransferJob",
            pb.CreateTransferJobRequest(
                job_id=job_id, clients=clients, max_eval_key_bytes=max_eval_key_bytes
            ),
        )

    def eval_keys(self, job_id: str, max_bytes: int) -> bytes | None:
        """A transfer job's evaluation keys, or None until the owner registered them."""
        import hashlib

        from fedhe_common.errors import NotFoundError

        parts: list[bytes] = []
        size, digest = 0, b""
        try:
            with rpc_errors():
                stream = self._conn.stub.GetEvalKeys(
                    pb.GetEvalKeysRequest(job_id=job_id),
                    timeout=TIMEOUT_S * 10,
                    metadata=self._conn.metadata,
                )
                for part in stream:
                    if part.offset != size or part.total_bytes > max_bytes:
                        raise KeyMaterialError("evaluation keys: bad part from the key authority")
                    parts.append(bytes(part.data))
                    size += len(part.data)
                    digest = bytes(part.sha256)
        except NotFoundError:
            return None
        blob = b"".join(parts)
        if not blob or hashlib.sha256(blob).digest() != digest:
            raise KeyMaterialError("evaluation keys: sha256 mismatch")
        return blob
