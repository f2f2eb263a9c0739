"""Process-CPU-time accounting per named phase (the machines are shared and noisy)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager


class PhaseTimer:
    """Adds up ``time.process_time()`` spent inside each named phase."""

    def __init__(self) -> None:
        self.cpu_s: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Count the CPU time of the ``with`` body under ``name``."""
        start = time.process_time()
        try:
            yield
        finally:
            self.cpu_s[name] += time.process_time() - start
