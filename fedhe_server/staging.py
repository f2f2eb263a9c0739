"""On-disk layout of a job: staged upload chunks and published aggregates."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from fedhe_common.storage.atomic import atomic_write


class JobFiles:
    """``<state>/jobs/<job>/rounds/<r>/{uploads/<upload_id>/<stream>-<k>.bin, aggregate/...}``."""

    def __init__(self, state_dir: Path, job_id: str) -> None:
        self.root = state_dir / "jobs" / job_id

    def round_dir(self, number: int) -> Path:
        """Folder of one round."""
        return self.root / "rounds" / str(number)

    def chunk_path(self, number: int, upload_id: str, stream: int, index: int) -> Path:
        """Where a staged chunk lives."""
        return self.round_dir(number) / "uploads" / upload_id / f"{stream}-{index}.bin"

    def write_chunk(self, path: Path, payload: bytes) -> None:
        """Write a chunk file (temp + rename); call :meth:`sync` before acknowledging."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def sync_dir(self, path: Path) -> None:
        """fsync a folder so renames inside it are durable."""
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def accumulator_path(self, number: int, stream: int) -> Path:
        """The open round's running sum of one stream (derived state, rebuilt at start-up)."""
        return self.round_dir(number) / "accumulator" / f"{stream}.sum"

    def aggregate_chunk_path(self, number: int, stream: int, index: int) -> Path:
        """Where a published aggregate chunk lives."""
        return self.round_dir(number) / "aggregate" / f"{stream}-{index}.bin"

    def write_aggregate(
        self,
        number: int,
        chunks: Iterable[tuple[tuple[int, int], bytes]],
        header: dict[str, object],
    ) -> None:
        """Write every aggregate chunk as it comes (one in memory at a time), then the
        header last (its presence = complete)."""
        for (stream, index), payload in chunks:
            atomic_write(self.aggregate_chunk_path(number, stream, index), payload)
        atomic_write(
            self.round_dir(number) / "aggregate" / "header.json",
            json.dumps(header, sort_keys=True).encode(),
        )

    def share_path(self, number: int, alpha: int, index: int) -> Path:
        """Where a relayed (sealed) decryption share lives."""
        return self.round_dir(number) / "aggregate" / f"share-{alpha}-{index}.bin"

    def write_header(self, number: int, header: dict[str, object]) -> None:
        """Rewrite an aggregate's header (e.g. to add the active parties)."""
        atomic_write(
            self.round_dir(number) / "aggregate" / "header.json",
            json.dumps(header, sort_keys=True).encode(),
        )

    def read_aggregate_header(self, number: int) -> dict[str, object] | None:
        """The header of a published aggregate, or None."""
        path = self.round_dir(number) / "aggregate" / "header.json"
        if not path.exists():
            return None
        return json.loads(path.read_text())  # type: ignore[no-any-return]

    def write_identity_keys(self, keys: dict[str, str]) -> None:
        """Threshold jobs: the parties' Ed25519 identity keys (client_id -> hex)."""
        atomic_write(self.root / "identity_keys.json", json.dumps(keys, sort_keys=True).encode())

    def identity_keys(self) -> dict[str, bytes]:
        """The parties' identity keys (empty before key generation completed)."""
        path = self.root / "identity_keys.json"
        if not path.exists():
            return {}
        return {c: bytes.fromhex(k) for c, k in json.loads(path.read_text()).items()}

    def signature_paths(self, number: int, upload_id: str) -> tuple[Path, Path]:
        """Where an upload's signed statement and its signature are kept."""
        folder = self.round_dir(number) / "uploads" / upload_id
        return folder / "statement.json", folder / "signature.bin"

    def drop_uploads(self, number: int) -> None:
        """Delete the staged uploads and the running sums of a published or aborted round."""
        shutil.rmtree(self.round_dir(number) / "uploads", ignore_errors=True)
        shutil.rmtree(self.round_dir(number) / "accumulator", ignore_errors=True)

    def drop_round(self, number: int) -> None:
        """Delete everything of an old round."""
        shutil.rmtree(self.round_dir(number), ignore_errors=True)

    def staged_rounds(self) -> list[int]:
        """Rounds that still have a staged-uploads folder."""
        rounds = self.root / "rounds"
        if not rounds.is_dir():
            return []
        return sorted(
            int(d.name) for d in rounds.iterdir() if d.name.isdigit() and (d / "uploads").is_dir()
        )

    def summed_rounds(self) -> list[int]:
        """Rounds that still have a running-sums (accumulator) folder."""
        rounds = self.root / "rounds"
        if not rounds.is_dir():
            return []
        return sorted(
            int(d.name)
            for d in rounds.iterdir()
            if d.name.isdigit() and (d / "accumulator").is_dir()
        )

    def drop_temporaries(self) -> None:
        """Delete half-written files (``*.tmp``, ``.*.tmp.<pid>``) a crash left behind."""
        if self.root.is_dir():
            for pattern in ("*.tmp", ".*.tmp.*"):
                for tmp in self.root.rglob(pattern):
                    tmp.unlink(missing_ok=True)
