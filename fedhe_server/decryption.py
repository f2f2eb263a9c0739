"""Threshold decryption of a round's aggregate: volunteers, the active set, relayed shares.

The server never holds a share it can read: each active party seals its shares to
the clients' group key. What the server enforces is bookkeeping: only parties of
the job, only the active set fixed from the first ``threshold`` volunteers, one
share per (party, chunk), and the round is published only when every active
party delivered every chunk. A round whose shares do not arrive by its deadline is
aborted (no model published) by :meth:`JobRun.tick`.
"""

from __future__ import annotations

import json
import logging

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.errors import (
    InvalidArgumentError,
    ManifestMismatchError,
    PermissionDeniedError,
    RoundClosedError,
)
from fedhe_common.storage.atomic import atomic_write
from fedhe_server.idempotency import is_repeat, verified_digest
from fedhe_server.jobrun import JobRun
from fedhe_server.keymodes import Threshold
from fedhe_server.store import RoundRow

logger = logging.getLogger(__name__)
SHARE = pb.STREAM_KIND_DECRYPTION_SHARE
SHARE_OVERHEAD_BYTES = 1024


class ThresholdDecryption:
    """Decryption bookkeeping for one threshold job."""

    def __init__(self, run: JobRun) -> None:
        self.run = run
        self.db = run.db

    def parties(self) -> dict[str, int]:
        """client_id -> alpha, as fixed by the key generation."""
        job = self.db.job(self.run.job_id)
        assert job is not None
        return json.loads(str(job.parties_json or "{}"))  # type: ignore[no-any-return]

    def alpha_of(self, client_id: str) -> int:
        """A client's party number, or PermissionDenied."""
        alpha = self.parties().get(client_id)
        if alpha is None:
            raise PermissionDeniedError(f"client {client_id!r} is not a key party of this job")
        return int(alpha)

    def _round(self, number: int) -> RoundRow:
        row = self.run.decrypting_round()
        if row is None or row.round != number:
            raise RoundClosedError(f"round {number} is not waiting for decryption shares")
        return row

    def active_set(self, number: int) -> list[int]:
        """The fixed active set of a round (empty until enough parties volunteered)."""
        return self.db.active_parties(self.run.job_id, number)

    def volunteer(self, client_id: str, number: int) -> pb.VolunteerDecryptionResponse:
        """Record an offer to decrypt; fix the active set at ``threshold`` offers."""
        alpha = self.alpha_of(client_id)
        with self.run.lock:
            row = self._round(number)
            threshold = self.run.config.keys.threshold
            assert threshold is not None
            fixed = self.db.volunteer(
                self.run.job_id, number, alpha, client_id, self.run.clock(), threshold
            )
            if fixed:
                logger.info("job %s round %d: active set %s", self.run.job_id, number, fixed)
        return pb.VolunteerDecryptionResponse(
            alpha=alpha, active_parties=self.active_set(number), contributors=row.contributors or 0
        )

    def contributions(self, client_id: str, number: int, chunk: int) -> list[pb.Contribution]:
        """Every committed upload's ciphertext chunk and signed statement (parties only):
        what a party recomputes the aggregate from before it releases a share."""
        self.alpha_of(client_id)
        with self.run.lock:
            self._round(number)
            header = self.run.files.read_aggregate_header(number)
            assert header is not None
            if not 0 <= chunk < int(header["ciphertext_chunks"]):  # type: ignore[call-overload]
                raise ManifestMismatchError(f"round {number} has no ciphertext chunk {chunk}")
            out = []
            for row in self.db.committed_uploads(self.run.job_id, number):
                statement, signature = self.run.files.signature_paths(number, row.upload_id)
                if not statement.exists():
                    continue  # unsigned (not a threshold upload): parties refuse the sum
                out.append(
                    pb.Contribution(
                        client_id=row.client_id,
                        statement=statement.read_bytes(),
                        signature=signature.read_bytes(),
                        payload=self.run.files.chunk_path(
                            number, row.upload_id, pb.STREAM_KIND_CIPHERTEXT, chunk
                        ).read_bytes(),
                    )
                )
            return out

    def put_share(self, client_id: str, number: int, chunk: pb.Chunk) -> bool:
        """Keep one sealed share; True if it was a duplicate. Publishes when complete."""
        alpha = self.alpha_of(client_id)
        with self.run.lock:
            self._round(number)
            if chunk.party != alpha or chunk.stream != SHARE:
                raise InvalidArgumentError("a share must be the caller's own decryption share")
            active = self.active_set(number)
            if alpha not in active:
                raise PermissionDeniedError(f"party {alpha} is not in the active set {active}")
            header = self.run.files.read_aggregate_header(number)
            assert header is not None
            count = int(header["ciphertext_chunks"])  # type: ignore[call-overload]
            if not 0 <= chunk.index < count:
                raise ManifestMismatchError(f"share index {chunk.index} beyond {count} chunks")
            if not isinstance(self.run.mode, Threshold):
                raise InvalidArgumentError("this job has no threshold keys")
            ctx = self.run.mode.ctx
            if len(chunk.payload) > 8 * ctx.k * ctx.n + SHARE_OVERHEAD_BYTES:
                raise InvalidArgumentError("decryption share too large")
            digest = verified_digest(chunk.payload, chunk.sha256, "share")
            have = self.db.share_hash(self.run.job_id, number, alpha, chunk.index)
            if is_repeat(have, digest, f"the share for chunk {chunk.index}"):
                return True
            atomic_write(self.run.files.share_path(number, alpha, chunk.index), chunk.payload)
            self.db.add_share(self.run.job_id, number, alpha, chunk.index, digest)
            received = self.db.share_count(self.run.job_id, number)
            if received == len(active) * count:
                header["active_parties"] = active
                self.run.files.write_header(number, header)
                self.run.mark_published(number)
                with self.run.changed:
                    self.run.changed.notify_all()
        return False

    def pending_for(self, client_id: str, number: int) -> bool:
        """True if this client should (still) act in the round's decryption."""
        alpha = self.parties().get(client_id)
        if alpha is None:
            return False
        if not self.db.has_volunteered(self.run.job_id, number, alpha):
            return True
        active = self.active_set(number)
        if not active or alpha not in active:
            return False
        header = self.run.files.read_aggregate_header(number)
        count = int(header["ciphertext_chunks"]) if header else 0  # type: ignore[call-overload]
        return self.db.share_count(self.run.job_id, number, alpha) < count
