"""SEAL objects this process made -> FedHE blobs (envelope + SEAL bytes)."""

from __future__ import annotations

from typing import Any

from fedhe_common.crypto import envelope, sealbytes
from fedhe_common.crypto.context import CKKSContext
from fedhe_common.crypto.envelope import BlobKind


def to_blob(ctx: CKKSContext, seal_object: Any, kind: BlobKind) -> bytes:
    """Save a SEAL object; uncompressed unless the preset's wire format is zstd."""
    data = sealbytes.save_bytes(seal_object)
    if ctx.preset.compression == "none":
        data = sealbytes.to_uncompressed(data)
    return envelope.wrap(kind, ctx.fingerprint, data)
