"""Pipelined encryption: a producer thread encrypts chunk by chunk into a spool file.

:class:`SpooledChunks` is a sequence of ciphertext blobs filled by a producer thread
(at most ``depth`` chunks ahead of the highest one asked for, a bounded queue) and
kept in an unlinked temporary file, so the uploader sends chunk k while chunk k+1 is
being encrypted and memory holds a few chunks, not the model's ciphertexts. A resumed
upload re-reads the same bytes from the spool: retries are byte-identical.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import overload

from fedhe_common.errors import FedHEError

DEFAULT_DEPTH = 32


class LazyChunks(Sequence[bytes]):
    """A fixed number of chunks, each made (or read) only when asked for by index."""

    def __init__(self, count: int) -> None:
        self._count = count

    def _chunk(self, k: int) -> bytes:
        raise NotImplementedError

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, k: int) -> bytes: ...

    @overload
    def __getitem__(self, k: slice) -> list[bytes]: ...

    def __getitem__(self, k: int | slice) -> bytes | list[bytes]:
        if isinstance(k, slice):
            return [self._chunk(i) for i in range(*k.indices(self._count))]
        if not 0 <= k < self._count:
            raise IndexError(k)
        return self._chunk(k)


class SpooledChunks(LazyChunks):
    """``count`` blobs from ``blobs`` (run on a producer thread), read back by index."""

    def __init__(
        self,
        blobs: Iterator[bytes],
        count: int,
        spool_dir: Path | None = None,
        depth: int = DEFAULT_DEPTH,
    ) -> None:
        super().__init__(count)
        self.busy_s = 0.0  # producer time spent making blobs (the encryption cost)
        self._depth = max(1, depth)
        self._file = tempfile.TemporaryFile(dir=spool_dir, prefix="fedhe-spool-")  # noqa: SIM115
        self._fd = self._file.fileno()
        self._spans: list[tuple[int, int]] = []
        self._end = 0
        self._wanted = 0
        self._done = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(
            target=self._produce, args=(blobs,), name="fedhe-encrypt", daemon=True
        )
        self._thread.start()

    def _produce(self, blobs: Iterator[bytes]) -> None:
        try:
            while True:
                # Room first, then make the blob: no chunk is made beyond `depth` ahead.
                with self._cond:
                    while len(self._spans) - self._wanted >= self._depth and not self._done:
                        self._cond.wait()
                    if self._done:  # closed early
                        return
                t0 = time.perf_counter()
                blob = next(blobs, None)
                self.busy_s += time.perf_counter() - t0
                if blob is None:
                    break
                os.pwrite(self._fd, blob, self._end)
                with self._cond:
                    self._spans.append((self._end, len(blob)))
                    self._end += len(blob)
                    self._cond.notify_all()
        except BaseException as exc:  # surfaced to the reader
            with self._cond:
                self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _wait_for(self, k: int) -> tuple[int, int]:
        with self._cond:
            self._wanted = max(self._wanted, k + 1)
            self._cond.notify_all()
            while k >= len(self._spans):
                if self._error is not None:
                    if isinstance(self._error, FedHEError):
                        raise self._error
                    raise FedHEError(f"encryption failed: {self._error}") from self._error
                if self._done:
                    raise FedHEError(f"encryption produced {len(self._spans)} of {self._count}")
                self._cond.wait()
            return self._spans[k]

    def _chunk(self, k: int) -> bytes:
        offset, size = self._wait_for(k)
        return os.pread(self._fd, size, offset)

    def wait(self) -> None:
        """Block until every blob is made."""
        if self._count:
            self._wait_for(self._count - 1)

    @property
    def nbytes(self) -> int:
        """Bytes of every blob (waits for the producer to finish)."""
        if self._count:
            self._wait_for(self._count - 1)
        return self._end

    def close(self) -> None:
        """Stop the producer and delete the spool."""
        with self._cond:
            self._done = True
            self._cond.notify_all()
        self._thread.join()
        self._file.close()
