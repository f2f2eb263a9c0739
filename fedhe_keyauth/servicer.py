"""KeyAuthorityService: thin gRPC adapter over the key store and the token authority."""

from __future__ import annotations

import logging

import grpc

from fedhe_common._proto.fedhe.keyauth.v1 import keyauth_pb2 as pb
from fedhe_common._proto.fedhe.keyauth.v1 import keyauth_pb2_grpc as pb_grpc
from fedhe_common.rpc.auth import TokenAuthority
from fedhe_common.rpc.errors import translate_errors
from fedhe_keyauth.store import KeyStore

logger = logging.getLogger(__name__)


class KeyAuthorityServicer(pb_grpc.KeyAuthorityServiceServicer):
    """Secret keys to client identities only; the server gets public material."""

    def __init__(self, store: KeyStore, auth: TokenAuthority) -> None:
        self.store = store
        self.auth = auth

    @translate_errors
    def CreateJobKeys(
        self, request: pb.CreateJobKeysRequest, context: grpc.ServicerContext
    ) -> pb.CreateJobKeysResponse:
        who = self.auth.require(context, "server")
        fingerprint, created = self.store.create(
            request.job_id, request.preset, request.clip_bound or None
        )
        if created:
            logger.info(
                "created keys for job %s (preset %s) for %s", request.job_id, request.preset, who.id
            )
        return pb.CreateJobKeysResponse(context_fingerprint=fingerprint, created=created)

    @translate_errors
    def GetPublicContext(
        self, request: pb.GetPublicContextRequest, context: grpc.ServicerContext
    ) -> pb.GetPublicContextResponse:
        self.auth.require(context, "server", "client", "admin")
        keys = self.store.load(request.job_id)
        return pb.GetPublicContextResponse(
            public_params_json=keys.params.to_json(),
            public_key=keys.public_key,
            context_fingerprint=self.store.fingerprint(request.job_id),
        )

    @translate_errors
    def FetchClientKey(
        self, request: pb.FetchClientKeyRequest, context: grpc.ServicerContext
    ) -> pb.FetchClientKeyResponse:
        who = self.auth.require(context, "client")
        keys = self.store.load(request.job_id)
        logger.info("handed job %s secret key to client %s", request.job_id, who.id)
        return pb.FetchClientKeyResponse(
            public_params_json=keys.params.to_json(),
            public_key=keys.public_key,
            secret_key=keys.secret_key,
            context_fingerprint=self.store.fingerprint(request.job_id),
        )
