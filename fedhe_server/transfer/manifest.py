"""The data owner's upload manifest: every ciphertext of the encrypted data set, bounded."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.errors import InvalidArgumentError
from fedhe_common.hetal.protocol import EncryptedDataset
from fedhe_common.rpc.pieces import BlobInfo, check_infos

MAX_ITEMS = 100_000
MAX_ROWS = 4096  # samples in one block, at most
PARTS: dict[int, str] = {
    pb.TRANSFER_PART_TRAIN_X: "train_x",
    pb.TRANSFER_PART_TRAIN_Y: "train_y",
    pb.TRANSFER_PART_VAL_X: "val_x",
    pb.TRANSFER_PART_INITIAL: "initial",
}


@dataclass(frozen=True)
class DatasetManifest:
    """What the owner declared before sending its ciphertexts."""

    train_rows: tuple[int, ...]
    val_rows: tuple[int, ...]
    items: tuple[tuple[int, BlobInfo], ...]  # (TransferPart, size/sha256) in item order
    features: int
    classes: int

    @staticmethod
    def from_pb(req: pb.BeginTransferUploadRequest, max_bytes: int) -> DatasetManifest:
        """Parse and bound a manifest (clear errors for bad input)."""
        items = tuple((int(i.part), BlobInfo(int(i.size), bytes(i.sha256))) for i in req.items)
        check_infos([info for _, info in items], MAX_ITEMS, max_bytes)
        if any(part not in PARTS for part, _ in items):
            raise InvalidArgumentError("every item needs a known part")
        counts = {name: sum(1 for p, _ in items if p == part) for part, name in PARTS.items()}
        if counts["train_x"] != len(req.train_rows) or counts["val_x"] != len(req.val_rows):
            raise InvalidArgumentError("train_rows / val_rows must give one count per x block")
        if min(counts.values()) < 1:
            raise InvalidArgumentError("the data set needs train_x, train_y, val_x, initial")
        rows = [*req.train_rows, *req.val_rows]
        if any(not 1 <= r <= MAX_ROWS for r in rows):
            raise InvalidArgumentError(f"block row counts must be in 1..{MAX_ROWS}")
        if not 2 <= req.features <= 65536 or not 2 <= req.classes <= 1024:
            raise InvalidArgumentError("features must be in 2..65536, classes in 2..1024")
        return DatasetManifest(
            tuple(req.train_rows), tuple(req.val_rows), items, req.features, req.classes
        )

    def to_json(self) -> str:
        """Canonical JSON (stored; compared on a repeated begin)."""
        return json.dumps(
            {
                "train_rows": list(self.train_rows),
                "val_rows": list(self.val_rows),
                "items": [[p, i.size, i.sha256.hex()] for p, i in self.items],
                "features": self.features,
                "classes": self.classes,
            },
            sort_keys=True,
        )

    @staticmethod
    def from_json(text: str) -> DatasetManifest:
        """Inverse of :meth:`to_json`."""
        raw = json.loads(text)
        return DatasetManifest(
            tuple(raw["train_rows"]),
            tuple(raw["val_rows"]),
            tuple((int(p), BlobInfo(int(s), bytes.fromhex(h))) for p, s, h in raw["items"]),
            int(raw["features"]),
            int(raw["classes"]),
        )

    @property
    def receipt(self) -> bytes:
        """sha256 over the canonical manifest (every item's size and hash)."""
        return hashlib.sha256(self.to_json().encode()).digest()

    def dataset(self, read: Callable[[int], bytes]) -> EncryptedDataset:
        """The trainer's input, from the verified item files."""
        groups: dict[str, list[bytes]] = {name: [] for name in PARTS.values()}
        for k, (part, _) in enumerate(self.items):
            groups[PARTS[part]].append(read(k))
        return EncryptedDataset(
            train_x=tuple(groups["train_x"]),
            train_y=tuple(groups["train_y"]),
            val_x=tuple(groups["val_x"]),
            train_rows=self.train_rows,
            val_rows=self.val_rows,
            initial=tuple(groups["initial"]),
        )
