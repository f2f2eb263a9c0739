"""The key authority's evaluation-key registry for transfer jobs: only the job's owner
registers, sizes are bounded, the blob is verified and stored 0600, a repeat is idempotent,
and no secret key is ever made or held for the job."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fedhe_common.errors import (
    ConflictError,
    IncompleteUploadError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from fedhe_keyauth.evalkeys import PART_BYTES, EvalKeyStore

BLOB = bytes(range(256)) * 9000  # ~2.3 MB: three parts


def _register(store: EvalKeyStore, client: str, blob: bytes, digest: bytes | None = None) -> bool:
    upload = store.begin("tl", client, len(blob), digest or hashlib.sha256(blob).digest())
    if upload is None:
        return False
    try:
        for offset in range(0, len(blob), PART_BYTES):
            upload.add(offset, blob[offset : offset + PART_BYTES])
        upload.finish()
    finally:
        upload.abort()
    return True


def test_owner_registers_keys_once_and_the_server_reads_them(tmp_path: Path) -> None:
    store = EvalKeyStore(tmp_path)
    assert store.create("tl", ["owner"], 4 << 20) is True
    assert store.create("tl", ["owner"], 4 << 20) is False  # idempotent
    with pytest.raises(ConflictError):
        store.create("tl", ["other"], 4 << 20)
    with pytest.raises(NotFoundError):
        store.info("tl")  # not registered yet
    with pytest.raises(PermissionDeniedError):
        store.begin("tl", "intruder", len(BLOB), hashlib.sha256(BLOB).digest())
    assert _register(store, "owner", BLOB) is True
    assert _register(store, "owner", BLOB) is False  # the same blob again
    with pytest.raises(ConflictError):
        _register(store, "owner", BLOB[:-1])  # other keys for the same job
    size, digest = store.info("tl")
    assert (size, digest) == (len(BLOB), hashlib.sha256(BLOB).digest())
    assert b"".join(part for _, part in store.read("tl")) == BLOB
    files = sorted(p.name for p in (tmp_path / "jobs/tl").iterdir())
    assert files == ["eval_keys.bin", "eval_keys.json", "transfer.json"]  # no secret key
    assert (tmp_path / "jobs/tl/eval_keys.bin").stat().st_mode & 0o077 == 0


def test_bad_registrations_are_refused_and_leave_nothing(tmp_path: Path) -> None:
    store = EvalKeyStore(tmp_path)
    store.create("tl", [], 1 << 20)  # no enrolment list: the first owner wins
    with pytest.raises(InvalidArgumentError, match="bound"):
        store.begin("tl", "a", (1 << 20) + 1, b"\0" * 32)
    with pytest.raises(InvalidArgumentError, match="sha256"):
        _register(store, "a", b"k" * 1000, hashlib.sha256(b"other").digest())
    upload = store.begin("tl", "a", 1000, hashlib.sha256(b"k" * 1000).digest())
    assert upload is not None
    with pytest.raises(InvalidArgumentError, match="offset"):
        upload.add(10, b"k" * 10)  # parts must be contiguous
    with pytest.raises(InvalidArgumentError, match="more key bytes"):
        upload.add(0, b"k" * 1001)
    upload.add(0, b"k" * 500)
    with pytest.raises(IncompleteUploadError):
        upload.finish()
    assert not list((tmp_path / "jobs/tl").glob(".eval_keys*"))  # temp files removed
    with pytest.raises(NotFoundError):
        store.info("tl")
    assert _register(store, "a", b"k" * 1000) is True
    with pytest.raises(PermissionDeniedError):  # the owner is now fixed
        store.begin("tl", "b", 1000, hashlib.sha256(b"k" * 1000).digest())
    with pytest.raises(InvalidArgumentError):
        store.create("../x", [], 1000)
