"""Per-job key files on disk (mode 0600), written atomically, read back on restart."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

from fedhe_common.config.models import _check_id
from fedhe_common.crypto.context import PublicParams
from fedhe_common.crypto.presets import get_preset
from fedhe_common.crypto.secret import SecretKeyHolder
from fedhe_common.errors import ConflictError, InvalidArgumentError, NotFoundError
from fedhe_common.storage.atomic import atomic_write


@dataclass(frozen=True)
class JobKeys:
    """A job's key material as blobs (never logged)."""

    params: PublicParams
    public_key: bytes
    secret_key: bytes

    @property
    def fingerprint(self) -> bytes:
        """Context fingerprint (recomputed from the parameters)."""
        return SecretKeyHolder.from_blobs(self.params, self.secret_key, self.public_key).fingerprint


class KeyStore:
    """``<state_dir>/jobs/<job_id>/{params.json,public_key.bin,secret_key.bin}``."""

    def __init__(self, state_dir: str | Path) -> None:
        self.root = Path(state_dir) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._fingerprints: dict[str, bytes] = {}

    def _dir(self, job_id: str) -> Path:
        try:
            _check_id(job_id)
        except ValueError as exc:
            raise InvalidArgumentError(f"job_id: {exc}") from None
        return self.root / job_id

    def create(self, job_id: str, preset_name: str, clip_bound: float | None) -> tuple[bytes, bool]:
        """Generate keys for a job once; return (fingerprint, created)."""
        preset = get_preset(preset_name)
        if clip_bound:
            preset = preset.with_clip_bound(clip_bound)
        with self._lock:
            if (self._dir(job_id) / "params.json").exists():
                keys = self.load(job_id)
                if keys.params.preset != preset:
                    raise ConflictError(f"job {job_id!r} already has keys for other parameters")
                return self.fingerprint(job_id), False
            holder = SecretKeyHolder.generate(preset)
            folder = self._dir(job_id)
            folder.mkdir(mode=0o700, exist_ok=True)
            atomic_write(folder / "secret_key.bin", holder.export_secret_key(), 0o600)
            atomic_write(folder / "public_key.bin", holder.export_public_key(), 0o600)
            # params.json last: its presence means the job's keys are complete.
            atomic_write(folder / "params.json", holder.params.to_json().encode(), 0o600)
            self._fingerprints[job_id] = holder.fingerprint
            return holder.fingerprint, True

    def load(self, job_id: str) -> JobKeys:
        """Read a job's keys or raise :class:`NotFoundError`."""
        folder = self._dir(job_id)
        try:
            params = PublicParams.from_json((folder / "params.json").read_text())
            return JobKeys(
                params,
                (folder / "public_key.bin").read_bytes(),
                (folder / "secret_key.bin").read_bytes(),
            )
        except FileNotFoundError:
            raise NotFoundError(f"no keys for job {job_id!r}") from None

    def fingerprint(self, job_id: str) -> bytes:
        """The job's context fingerprint (cached)."""
        if job_id not in self._fingerprints:
            self._fingerprints[job_id] = self.load(job_id).fingerprint
        return self._fingerprints[job_id]

    def jobs(self) -> list[str]:
        """Job ids with complete keys."""
        return sorted(p.parent.name for p in self.root.glob("*/params.json"))


def describe(keys: JobKeys) -> str:
    """A log-safe one-line description (no key bytes)."""
    return json.dumps(
        {"preset": keys.params.preset.name, "clip_bound": keys.params.preset.clip_bound}
    )
