"""A transfer job's files: evaluation keys, the encrypted data set, the trainer state.

``<state_dir>/transfer/<job_id>/``: ``eval_keys.bin``; ``dataset/item-<k>.bin`` (one
verified ciphertext each) with ``dataset/pieces/<k>.<p>`` while an item arrives; and
``trainer.state`` = 8-byte little-endian count of applied replies + the trainer's
``to_state()``. Every complete file is written atomically (temp + fsync + rename).
"""

from __future__ import annotations

import hashlib
import shutil
import struct
from pathlib import Path

from fedhe_common.errors import InvalidArgumentError
from fedhe_common.rpc.pieces import PIECE_BYTES, BlobInfo, check_piece, piece_count
from fedhe_common.storage.atomic import atomic_write

_COUNT = struct.Struct("<Q")


class TransferFiles:
    """Paths and atomic writes of one transfer job."""

    def __init__(self, state_dir: str | Path, job_id: str) -> None:
        self.root = Path(state_dir) / "transfer" / job_id
        self.dataset = self.root / "dataset"
        self.pieces = self.dataset / "pieces"
        self.pieces.mkdir(parents=True, exist_ok=True, mode=0o700)

    # -------------------------------------------------------------- keys
    @property
    def eval_keys_path(self) -> Path:
        """Where the job's evaluation keys are kept."""
        return self.root / "eval_keys.bin"

    def write_eval_keys(self, blob: bytes) -> None:
        """Keep the keys fetched from the key authority."""
        atomic_write(self.eval_keys_path, blob, 0o600)

    def eval_keys(self) -> bytes | None:
        """The keys, or None before they were fetched."""
        path = self.eval_keys_path
        return path.read_bytes() if path.exists() else None

    # ----------------------------------------------------------- data set
    def item_path(self, item: int) -> Path:
        """A verified ciphertext of the data set."""
        return self.dataset / f"item-{item}.bin"

    def has_item(self, item: int) -> bool:
        """True when ``item`` is complete and verified."""
        return self.item_path(item).exists()

    def put_piece(self, item: int, info: BlobInfo, piece: int, data: bytes) -> bool:
        """Keep one piece; complete the item when its last piece is in. True: duplicate."""
        if self.has_item(item):
            return True
        check_piece(info, piece, data)
        path = self.pieces / f"{item}.{piece}"
        if path.exists():
            return True
        atomic_write(path, data, 0o600)
        count = piece_count(info.size)
        parts = [self.pieces / f"{item}.{p}" for p in range(count)]
        if all(p.exists() for p in parts):
            blob = b"".join(p.read_bytes() for p in parts)
            for p in parts:
                p.unlink(missing_ok=True)
            if hashlib.sha256(blob).digest() != info.sha256:
                raise InvalidArgumentError(f"ciphertext {item}: sha256 mismatch (send it again)")
            atomic_write(self.item_path(item), blob, 0o600)
        return False

    def read_item(self, item: int) -> bytes:
        """A verified ciphertext."""
        return self.item_path(item).read_bytes()

    # -------------------------------------------------------- trainer state
    @property
    def state_path(self) -> Path:
        """The trainer's last persisted state."""
        return self.root / "trainer.state"

    def write_state(self, answered: int, state: bytes) -> None:
        """Persist the trainer after ``answered`` applied replies (atomically)."""
        atomic_write(self.state_path, _COUNT.pack(answered) + state, 0o600)

    def read_state(self) -> tuple[int, bytes] | None:
        """(applied replies, trainer state), or None before the first reply."""
        path = self.state_path
        if not path.exists():
            return None
        raw = path.read_bytes()
        if len(raw) < _COUNT.size:
            raise InvalidArgumentError(f"{path}: truncated trainer state")
        return _COUNT.unpack_from(raw)[0], raw[_COUNT.size :]

    def repair(self) -> int:
        """Drop temp files a crash left behind; return how many."""
        stray = [p for p in self.root.rglob(".*.tmp.*") if p.is_file()]
        for path in stray:
            path.unlink(missing_ok=True)
        return len(stray)

    def drop_dataset(self) -> None:
        """Remove the data set (job cancelled)."""
        shutil.rmtree(self.dataset, ignore_errors=True)


__all__ = ["PIECE_BYTES", "TransferFiles"]
