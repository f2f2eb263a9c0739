"""The server's state store: every SQL statement of the server lives in this package.

:class:`StateDB` is one SQLite database (WAL, synchronous=FULL), the source of truth
after a crash; its methods are grouped by table in the modules of this package.
Job, round and upload states are :class:`~enum.StrEnum` values, stored as text.
"""

from __future__ import annotations

from fedhe_server.store.clients import ClientsStore
from fedhe_server.store.decryptions import DecryptionsStore
from fedhe_server.store.devices import DevicesStore
from fedhe_server.store.history import HistoryStore
from fedhe_server.store.jobs import JobsStore
from fedhe_server.store.model import (
    JobRow,
    JobState,
    RoundRow,
    RoundState,
    UploadRow,
    UploadState,
    now,
)
from fedhe_server.store.rounds import RoundsStore
from fedhe_server.store.telemetry import TelemetryStore
from fedhe_server.store.uploads import UploadsStore


class StateDB(
    JobsStore,
    RoundsStore,
    UploadsStore,
    ClientsStore,
    DecryptionsStore,
    TelemetryStore,
    HistoryStore,
    DevicesStore,
):
    """The whole state store."""


__all__ = [
    "JobRow",
    "JobState",
    "RoundRow",
    "RoundState",
    "StateDB",
    "UploadRow",
    "UploadState",
    "now",
]
