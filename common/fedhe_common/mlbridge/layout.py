"""The layout manifest: how a flat float vector maps onto a model's named tensors."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from fedhe_common.errors import InvalidArgumentError


@dataclass(frozen=True)
class LayoutEntry:
    """One float tensor's place in the flat vector."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int
    length: int


@dataclass(frozen=True)
class ExcludedEntry:
    """A state entry that is not aggregated (kept from the client's own model)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    reason: str


@dataclass(frozen=True)
class LayoutManifest:
    """Ordered float entries plus explicitly excluded ones; ``layout_id`` names it."""

    entries: tuple[LayoutEntry, ...]
    excluded: tuple[ExcludedEntry, ...] = ()

    @property
    def total(self) -> int:
        """Number of values in the flat vector."""
        return sum(e.length for e in self.entries)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces)."""
        doc = {
            "entries": [asdict(e) for e in self.entries],
            "excluded": [asdict(e) for e in self.excluded],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @property
    def layout_id(self) -> str:
        """sha256 hex of the canonical JSON."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_json(cls, text: str | bytes) -> LayoutManifest:
        """Parse :meth:`to_json` output, checking offsets are contiguous."""
        try:
            doc = json.loads(text)
            entries = tuple(
                LayoutEntry(e["name"], tuple(e["shape"]), e["dtype"], e["offset"], e["length"])
                for e in doc["entries"]
            )
            excluded = tuple(
                ExcludedEntry(e["name"], tuple(e["shape"]), e["dtype"], e["reason"])
                for e in doc["excluded"]
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidArgumentError(f"malformed layout manifest: {exc}") from None
        offset = 0
        for e in entries:
            size = 1
            for d in e.shape:
                size *= d
            if e.offset != offset or e.length != size:
                raise InvalidArgumentError(f"layout entry {e.name!r} has a bad offset or length")
            offset += e.length
        return cls(entries, excluded)
