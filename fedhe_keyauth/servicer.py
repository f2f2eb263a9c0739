"""KeyAuthorityService on grpc.aio: thin adapter over the key store and the token authority.

Handlers are coroutines; key-store work runs on the server's thread pool
(:func:`blocking`), so a stalled or slow call holds no thread.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc

from fedhe_common._proto.fedhe.keyauth.v1 import keyauth_pb2 as pb
from fedhe_common.errors import InvalidArgumentError, PermissionDeniedError
from fedhe_common.rpc.auth import TokenAuthority
from fedhe_common.rpc.serving import Register, add_service, blocking
from fedhe_keyauth.evalkeys import EvalKeyStore, EvalKeyUpload
from fedhe_keyauth.store import KeyStore

logger = logging.getLogger(__name__)


Context = grpc.aio.ServicerContext


class KeyAuthorityServicer:
    """Secret keys to client identities only; the server gets public material."""

    def __init__(self, store: KeyStore, auth: TokenAuthority) -> None:
        self.store = store
        self.auth = auth
        self.eval_keys = EvalKeyStore(store.root.parent)

    async def CreateJobKeys(
        self, request: pb.CreateJobKeysRequest, context: Context
    ) -> pb.CreateJobKeysResponse:
        return await blocking(self._create_job_keys, request, context)

    async def GetPublicContext(
        self, request: pb.GetPublicContextRequest, context: Context
    ) -> pb.GetPublicContextResponse:
        return await blocking(self._get_public_context, request, context)

    async def FetchClientKey(
        self, request: pb.FetchClientKeyRequest, context: Context
    ) -> pb.FetchClientKeyResponse:
        return await blocking(self._fetch_client_key, request, context)

    async def JoinKeyGeneration(
        self, request: pb.JoinKeyGenerationRequest, context: Context
    ) -> pb.JoinKeyGenerationResponse:
        return await blocking(self._join_key_generation, request, context)

    async def CommitKeyShare(
        self, request: pb.CommitKeyShareRequest, context: Context
    ) -> pb.CommitKeyShareResponse:
        return await blocking(self._commit_key_share, request, context)

    async def SubmitKeyShares(
        self, request: pb.SubmitKeySharesRequest, context: Context
    ) -> pb.SubmitKeySharesResponse:
        return await blocking(self._submit_key_shares, request, context)

    async def GetKeyGeneration(
        self, request: pb.GetKeyGenerationRequest, context: Context
    ) -> pb.GetKeyGenerationResponse:
        return await blocking(self._get_key_generation, request, context)

    # ------------------------------------------------------- transfer jobs (HETAL)
    async def CreateTransferJob(
        self, request: pb.CreateTransferJobRequest, context: Context
    ) -> pb.CreateTransferJobResponse:
        self.auth.require(context, "server")
        created = await blocking(
            self.eval_keys.create,
            request.job_id,
            list(request.clients),
            request.max_eval_key_bytes,
        )
        return pb.CreateTransferJobResponse(created=created)

    async def RegisterEvalKeys(
        self, request_iterator: AsyncIterator[pb.EvalKeysPart], context: Context
    ) -> pb.RegisterEvalKeysResponse:
        who = self.auth.require(context, "client")
        upload: EvalKeyUpload | None = None
        first: pb.EvalKeysPart | None = None
        try:
            async for part in request_iterator:
                if first is None:
                    first = part
                    upload = await blocking(
                        self.eval_keys.begin,
                        part.job_id,
                        who.id,
                        part.total_bytes,
                        bytes(part.sha256),
                    )
                elif (part.job_id, part.total_bytes, part.sha256) != (
                    first.job_id, first.total_bytes, first.sha256,
                ):  # fmt: skip
                    raise InvalidArgumentError("every key part must name the same blob")
                if upload is not None:
                    await blocking(upload.add, part.offset, bytes(part.data))
            if first is None:
                raise InvalidArgumentError("no key parts")
            if upload is not None:
                await blocking(upload.finish)
                logger.info("job %s: evaluation keys of %s registered", first.job_id, who.id)
        finally:
            if upload is not None:
                upload.abort()
        return pb.RegisterEvalKeysResponse(sha256=first.sha256, created=upload is not None)

    async def GetEvalKeys(
        self, request: pb.GetEvalKeysRequest, context: Context
    ) -> AsyncIterator[pb.EvalKeysPart]:
        self.auth.require(context, "server")
        total, digest = await blocking(self.eval_keys.info, request.job_id)
        parts = self.eval_keys.read(request.job_id)
        while (item := await blocking(next, parts, None)) is not None:
            offset, data = item
            yield pb.EvalKeysPart(
                job_id=request.job_id, total_bytes=total, sha256=digest, offset=offset, data=data
            )

    # Blocking bodies, run on the thread pool.
    def _create_job_keys(
        self, request: pb.CreateJobKeysRequest, context: Context
    ) -> pb.CreateJobKeysResponse:
        who = self.auth.require(context, "server")
        fingerprint, created = self.store.create(
            request.job_id,
            request.preset,
            request.clip_bound or None,
            request.mode or "single",
            request.parties,
            request.threshold,
            list(request.clients),
        )
        if created:
            logger.info(
                "created keys for job %s (preset %s) for %s", request.job_id, request.preset, who.id
            )
        return pb.CreateJobKeysResponse(context_fingerprint=fingerprint, created=created)

    def _get_public_context(
        self, request: pb.GetPublicContextRequest, context: Context
    ) -> pb.GetPublicContextResponse:
        self.auth.require(context, "server", "client", "admin")
        keys = self.store.load(request.job_id)
        return pb.GetPublicContextResponse(
            public_params_json=keys.params.to_json(),
            public_key=keys.public_key,
            context_fingerprint=self.store.fingerprint(request.job_id),
        )

    def _fetch_client_key(
        self, request: pb.FetchClientKeyRequest, context: Context
    ) -> pb.FetchClientKeyResponse:
        who = self.auth.require(context, "client")
        self.store.check_enrolled(request.job_id, who.id)
        keys = self.store.load(request.job_id)
        secret = self.store.secret_key(request.job_id)
        logger.info("handed job %s secret key to client %s", request.job_id, who.id)
        return pb.FetchClientKeyResponse(
            public_params_json=keys.params.to_json(),
            public_key=keys.public_key,
            secret_key=secret,
            context_fingerprint=self.store.fingerprint(request.job_id),
        )

    # ------------------------------------------------------- threshold key generation
    def _join_key_generation(
        self, request: pb.JoinKeyGenerationRequest, context: Context
    ) -> pb.JoinKeyGenerationResponse:
        who = self.auth.require(context, "client")
        self.store.check_enrolled(request.job_id, who.id)
        session = self.store.dkg(request.job_id)
        alpha = session.join(
            who.id,
            bytes(request.e2e_public_key),
            bytes(request.identity_public_key),
            bytes(request.e2e_key_signature),
        )
        meta = session.meta()
        return pb.JoinKeyGenerationResponse(
            alpha=alpha,
            parties=int(meta["parties"]),
            threshold=int(meta["threshold"]),
            preset=str(meta["preset"]),
            crs_seed=bytes.fromhex(str(meta["crs_seed"])),
        )

    def _commit_key_share(
        self, request: pb.CommitKeyShareRequest, context: Context
    ) -> pb.CommitKeyShareResponse:
        who = self.auth.require(context, "client")
        session = self.store.dkg(request.job_id)
        if request.alpha != session.alpha_of(who.id):
            raise PermissionDeniedError("a party may only commit to its own share")
        committed = session.commit(
            request.alpha, bytes(request.pk_share_commitment), bytes(request.commitment_signature)
        )
        return pb.CommitKeyShareResponse(committed=committed)

    def _submit_key_shares(
        self, request: pb.SubmitKeySharesRequest, context: Context
    ) -> pb.SubmitKeySharesResponse:
        who = self.auth.require(context, "client")
        session = self.store.dkg(request.job_id)
        alpha = session.alpha_of(who.id)
        if request.alpha != alpha:
            raise PermissionDeniedError("a party may only submit its own shares")
        for s in [*request.secret_shares, *request.group_keys]:
            if s.from_alpha != alpha:
                raise PermissionDeniedError("sealed shares must come from the caller")
        session.submit(
            alpha,
            bytes(request.public_key_share),
            {s.to_alpha: (bytes(s.blob), bytes(s.signature)) for s in request.secret_shares},
            {s.to_alpha: (bytes(s.blob), bytes(s.signature)) for s in request.group_keys},
        )
        if self.store.finalize(request.job_id):
            logger.info("job %s: collective public key published", request.job_id)
        return pb.SubmitKeySharesResponse()

    def _get_key_generation(
        self, request: pb.GetKeyGenerationRequest, context: Context
    ) -> pb.GetKeyGenerationResponse:
        who = self.auth.require(context, "client", "server")
        session = self.store.dkg(request.job_id)
        meta = session.meta()
        reply = pb.GetKeyGenerationResponse(
            parties=[
                pb.Party(
                    alpha=m.alpha,
                    client_id=m.client_id,
                    e2e_public_key=m.e2e_public_key,
                    identity_public_key=m.identity_public_key,
                    e2e_key_signature=m.e2e_key_signature,
                    pk_share_commitment=m.commitment,
                    commitment_signature=m.commitment_signature,
                    public_key_share=session.public_key_share(m.alpha),
                )
                for m in session.members()
            ],
            expected_parties=int(meta["parties"]),
            submitted=len(session.submitted()),
        )
        if who.role == "client":
            alpha = session.alpha_of(who.id)
            shares, group_key = session.sealed_for(alpha)
            reply.secret_shares.extend(
                pb.SealedShare(from_alpha=f, to_alpha=alpha, blob=b, signature=sig)
                for f, (b, sig) in sorted(shares.items())
            )
            if group_key is not None:
                reply.group_key.CopyFrom(
                    pb.SealedShare(
                        from_alpha=1, to_alpha=alpha, blob=group_key[0], signature=group_key[1]
                    )
                )
        if self.store.finalize(request.job_id):
            keys = self.store.load(request.job_id)
            reply.complete = True
            reply.public_params_json = keys.params.to_json()
            reply.public_key = keys.public_key
            reply.context_fingerprint = self.store.fingerprint(request.job_id)
        return reply


def register(servicer: KeyAuthorityServicer) -> Register:
    """Registration callback for :func:`fedhe_common.rpc.serving.create_server`."""

    def _register(server: grpc.aio.Server) -> list[str]:
        service = pb.DESCRIPTOR.services_by_name["KeyAuthorityService"]
        return [add_service(server, service, servicer)]

    return _register
