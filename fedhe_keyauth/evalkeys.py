"""Transfer jobs' evaluation keys: registered by the data owner, served to the server.

``<state_dir>/jobs/<job_id>/transfer.json`` (enrolled clients, size bound, owner) and
``eval_keys.bin`` (the blob, mode 0600, written atomically once complete and verified).
The key authority never asks for, makes or holds a secret key of a transfer job: the
blob is opaque public material (public, relinearisation and Galois keys).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from fedhe_common.config.models import _check_id
from fedhe_common.errors import (
    ConflictError,
    IncompleteUploadError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from fedhe_common.storage.atomic import atomic_write

PART_BYTES = 1 << 20
MAX_EVAL_KEY_BYTES = 8 << 30  # as the job configuration's transfer.max_eval_key_bytes


class EvalKeyStore:
    """Per transfer job: who may register keys, and the registered blob."""

    def __init__(self, state_dir: str | Path) -> None:
        self.root = Path(state_dir) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()

    def _dir(self, job_id: str) -> Path:
        try:
            _check_id(job_id)
        except ValueError as exc:
            raise InvalidArgumentError(f"job_id: {exc}") from None
        return self.root / job_id

    def _meta(self, job_id: str) -> dict[str, object]:
        path = self._dir(job_id) / "transfer.json"
        if not path.exists():
            raise NotFoundError(f"job {job_id!r} is not a transfer job here")
        meta: dict[str, object] = json.loads(path.read_text())
        return meta

    def create(self, job_id: str, clients: list[str], max_bytes: int) -> bool:
        """Open a transfer job once (a repeat must agree); True when created."""
        for client in clients:
            try:
                _check_id(client)
            except ValueError as exc:
                raise InvalidArgumentError(f"client id: {exc}") from None
        if len(clients) > 1:
            raise InvalidArgumentError("a transfer job has one data owner")
        if not 1 <= max_bytes <= MAX_EVAL_KEY_BYTES:
            raise InvalidArgumentError(f"max_eval_key_bytes must be 1..{MAX_EVAL_KEY_BYTES}")
        folder = self._dir(job_id)
        meta = {"clients": sorted(clients), "max_bytes": max_bytes}
        with self._lock:
            path = folder / "transfer.json"
            if path.exists():
                old = json.loads(path.read_text())
                if {k: old[k] for k in meta} != meta:
                    raise ConflictError(f"transfer job {job_id!r} exists with other settings")
                return False
            if (folder / "params.json").exists() or (folder / "dkg").exists():
                raise ConflictError(f"job {job_id!r} already has key-authority keys")
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write(path, json.dumps(meta).encode(), 0o600)
            return True

    def begin(self, job_id: str, client_id: str, total: int, digest: bytes) -> EvalKeyUpload | None:
        """Start receiving the owner's blob; None when the same blob is already stored."""
        meta = self._meta(job_id)
        clients = list(meta["clients"])  # type: ignore[call-overload]
        if clients and client_id not in clients:
            raise PermissionDeniedError(f"client {client_id!r} is not job {job_id!r}'s owner")
        owner = meta.get("owner")
        if owner is not None and owner != client_id:
            raise PermissionDeniedError(f"job {job_id!r} has another data owner")
        if not 0 < total <= int(meta["max_bytes"]):  # type: ignore[call-overload]
            raise InvalidArgumentError(f"{total} key bytes exceed the job's bound")
        if len(digest) != 32:
            raise InvalidArgumentError("sha256 must be 32 bytes")
        done = self._dir(job_id) / "eval_keys.json"
        if done.exists():
            if bytes.fromhex(json.loads(done.read_text())["sha256"]) != digest:
                raise ConflictError(f"job {job_id!r} has other evaluation keys")
            return None
        return EvalKeyUpload(self, job_id, client_id, total, digest)

    def _store(self, upload: EvalKeyUpload, tmp: Path) -> None:
        folder = self._dir(upload.job_id)
        with self._lock:
            meta = self._meta(upload.job_id)
            os.replace(tmp, folder / "eval_keys.bin")
            record = {"sha256": upload.digest.hex(), "size": upload.total,
                      "owner": upload.client_id}  # fmt: skip
            atomic_write(folder / "eval_keys.json", json.dumps(record).encode(), 0o600)
            meta["owner"] = upload.client_id
            atomic_write(folder / "transfer.json", json.dumps(meta).encode(), 0o600)

    def info(self, job_id: str) -> tuple[int, bytes]:
        """(size, sha256) of the registered keys, or :class:`NotFoundError`."""
        self._meta(job_id)
        done = self._dir(job_id) / "eval_keys.json"
        if not done.exists():
            raise NotFoundError(f"job {job_id!r}: the data owner has not registered keys yet")
        record = json.loads(done.read_text())
        return int(record["size"]), bytes.fromhex(record["sha256"])

    def read(self, job_id: str) -> Iterator[tuple[int, bytes]]:
        """(offset, part) of the registered keys."""
        self.info(job_id)
        with open(self._dir(job_id) / "eval_keys.bin", "rb") as f:
            offset = 0
            while data := f.read(PART_BYTES):
                yield offset, data
                offset += len(data)


class EvalKeyUpload:
    """One registration in progress: parts in order into a temp file, then verified."""

    def __init__(
        self, store: EvalKeyStore, job_id: str, client_id: str, total: int, digest: bytes
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.client_id = client_id
        self.total = total
        self.digest = digest
        self.size = 0
        self._hash = hashlib.sha256()
        folder = store.root / job_id
        self._tmp = folder / f".eval_keys.part.{os.getpid()}.{threading.get_ident()}.{id(self)}"
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._file = os.fdopen(fd, "wb")

    def add(self, offset: int, data: bytes) -> None:
        """Append the next part (``offset`` must be where the previous part ended)."""
        if offset != self.size:
            raise InvalidArgumentError(f"key part at offset {offset}, expected {self.size}")
        if self.size + len(data) > self.total:
            raise InvalidArgumentError("more key bytes than declared")
        self._hash.update(data)
        self._file.write(data)
        self.size += len(data)

    def finish(self) -> None:
        """Verify size and digest, then store atomically."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            if self.size != self.total:
                raise IncompleteUploadError(f"{self.size} of {self.total} key bytes received")
            if self._hash.digest() != self.digest:
                raise InvalidArgumentError("evaluation keys: sha256 mismatch")
            self.store._store(self, self._tmp)
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop a registration that did not complete."""
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)
