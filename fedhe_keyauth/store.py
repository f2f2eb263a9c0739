"""Per-job key files on disk (mode 0600), written atomically, read back on restart.

Single-key jobs: ``params.json``, ``public_key.bin``, ``secret_key.bin``. Threshold
jobs: a ``dkg/`` session; ``params.json`` and ``public_key.bin`` appear once the
parties' public-key shares are combined, and no secret key ever exists here.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

from fedhe_common.config.models import _check_id
from fedhe_common.crypto.context import CKKSContext, PublicParams
from fedhe_common.crypto.presets import get_preset
from fedhe_common.crypto.secret import SecretKeyHolder
from fedhe_common.errors import (
    ConflictError,
    IncompleteUploadError,
    InvalidArgumentError,
    KeyMaterialError,
    NotFoundError,
    PermissionDeniedError,
)
from fedhe_common.storage.atomic import atomic_write
from fedhe_keyauth.dkg import DKGSession

MAX_PARTIES = 64  # as the job configuration's keys.parties


@dataclass(frozen=True)
class JobKeys:
    """A job's key material as blobs (never logged)."""

    params: PublicParams
    public_key: bytes
    secret_key: bytes | None  # None for threshold jobs


class KeyStore:
    """``<state_dir>/jobs/<job_id>/...``"""

    def __init__(self, state_dir: str | Path) -> None:
        self.root = Path(state_dir) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.RLock()
        self._fingerprints: dict[str, bytes] = {}
        self._sessions: dict[str, DKGSession] = {}  # one object (and lock) per job

    @staticmethod
    def _check(value: str, what: str) -> None:
        try:
            _check_id(value)
        except ValueError as exc:
            raise InvalidArgumentError(f"{what}: {exc}") from None

    def _dir(self, job_id: str) -> Path:
        self._check(job_id, "job_id")
        return self.root / job_id

    def _record_clients(self, folder: Path, clients: list[str]) -> None:
        """Keep the job's enrolment list (first creation wins; a repeat must agree)."""
        path = folder / "clients.json"
        if path.exists():
            if json.loads(path.read_text()) != clients:
                raise ConflictError("the job exists with another client list")
            return
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(path, json.dumps(clients).encode(), 0o600)

    def check_enrolled(self, job_id: str, client_id: str) -> None:
        """A client may get a job's keys only if the job enrols it (or enrols anyone)."""
        path = self._dir(job_id) / "clients.json"
        if not path.exists():
            if (self._dir(job_id) / "params.json").exists() or (
                self._dir(job_id) / "dkg"
            ).exists():
                return  # keys made before enrolment lists existed: any client
            raise NotFoundError(f"no keys for job {job_id!r}")
        clients = json.loads(path.read_text())
        if clients and client_id not in clients:
            raise PermissionDeniedError(f"client {client_id!r} is not enrolled in job {job_id!r}")

    def create(
        self,
        job_id: str,
        preset_name: str,
        clip_bound: float | None,
        mode: str = "single",
        parties: int = 0,
        threshold: int = 0,
        clients: list[str] | None = None,
    ) -> tuple[bytes, bool]:
        """Generate keys (or open a key generation) for a job once; (fingerprint, created).

        ``clients``: the job's enrolled clients (empty: any client identity)."""
        preset = get_preset(preset_name)
        if preset.baseline_only:
            raise InvalidArgumentError(f"preset {preset_name!r} is a benchmark baseline only")
        if mode not in ("", "single", "threshold"):
            raise InvalidArgumentError(f"unknown key mode {mode!r}")
        if mode == "threshold" and not 2 <= parties <= MAX_PARTIES:
            raise InvalidArgumentError(f"parties must be between 2 and {MAX_PARTIES}")
        for client in clients or ():
            self._check(client, "client id")
        if clip_bound:
            preset = preset.with_clip_bound(clip_bound)
        folder = self._dir(job_id)
        with self._lock:
            self._record_clients(folder, sorted(clients or ()))
            if mode == "threshold":
                existed = (folder / "dkg" / "session.json").exists()
                folder.mkdir(mode=0o700, exist_ok=True)
                self._sessions[job_id] = DKGSession.create(
                    folder / "dkg", preset_name, parties, threshold
                )
                return self._fingerprint_or_empty(job_id), not existed
            if (folder / "params.json").exists():
                keys = self.load(job_id)
                if keys.params.preset != preset or keys.secret_key is None:
                    raise ConflictError(f"job {job_id!r} already has keys for other parameters")
                return self.fingerprint(job_id), False
            holder = SecretKeyHolder.generate(preset)
            folder.mkdir(mode=0o700, exist_ok=True)
            atomic_write(folder / "secret_key.bin", holder.export_secret_key(), 0o600)
            atomic_write(folder / "public_key.bin", holder.export_public_key(), 0o600)
            # params.json last: its presence means the job's keys are complete.
            atomic_write(folder / "params.json", holder.params.to_json().encode(), 0o600)
            self._fingerprints[job_id] = holder.fingerprint
            return holder.fingerprint, True

    def dkg(self, job_id: str) -> DKGSession:
        """The job's key generation session (shared, so its lock serialises joins)."""
        with self._lock:
            session = self._sessions.get(job_id)
            if session is None:
                session = DKGSession(self._dir(job_id) / "dkg")
                if not session.exists():
                    raise NotFoundError(f"job {job_id!r} has no threshold key generation")
                self._sessions[job_id] = session
            return session

    def finalize(self, job_id: str) -> bool:
        """Write the collective public key once every party's share is in."""
        folder = self._dir(job_id)
        if (folder / "params.json").exists():
            return True
        combined = self.dkg(job_id).collective_key()
        if combined is None:
            return False
        params_json, pk_blob, fingerprint = combined
        with self._lock:
            atomic_write(folder / "public_key.bin", pk_blob, 0o600)
            atomic_write(folder / "params.json", params_json.encode(), 0o600)
            self._fingerprints[job_id] = fingerprint
        return True

    def load(self, job_id: str) -> JobKeys:
        """Read a job's keys or raise :class:`NotFoundError`."""
        folder = self._dir(job_id)
        if (folder / "dkg" / "session.json").exists() and not self.finalize(job_id):
            raise IncompleteUploadError(f"job {job_id!r}: threshold key generation not complete")
        try:
            params = PublicParams.from_json((folder / "params.json").read_text())
            public = (folder / "public_key.bin").read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"no keys for job {job_id!r}") from None
        sk_path = folder / "secret_key.bin"
        return JobKeys(params, public, sk_path.read_bytes() if sk_path.exists() else None)

    def secret_key(self, job_id: str) -> bytes:
        """The single-key secret, or a clear error for threshold jobs."""
        keys = self.load(job_id)
        if keys.secret_key is None:
            raise KeyMaterialError(f"job {job_id!r} uses threshold keys: no secret key exists")
        return keys.secret_key

    def fingerprint(self, job_id: str) -> bytes:
        """The job's context fingerprint (cached)."""
        if job_id not in self._fingerprints:
            self._fingerprints[job_id] = CKKSContext(self.load(job_id).params).fingerprint
        return self._fingerprints[job_id]

    def _fingerprint_or_empty(self, job_id: str) -> bytes:
        try:
            return self.fingerprint(job_id)
        except (NotFoundError, IncompleteUploadError):
            return b""

    def jobs(self) -> list[str]:
        """Job ids with complete keys."""
        return sorted(p.parent.name for p in self.root.glob("*/params.json"))
