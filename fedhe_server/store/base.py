"""The SQLite connection: WAL, one lock, immediate transactions, schema upgrades."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedhe_server.store.model import SCHEMA


class StoreBase:
    """Thread-safe access to the server's SQLite database."""

    def __init__(self, path: str | Path) -> None:
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(SCHEMA)
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(clients)")}
        if "last_seen" not in columns:  # state made before heartbeats existed
            self._conn.execute("ALTER TABLE clients ADD COLUMN last_seen REAL")
        self._lock = threading.RLock()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An immediate transaction, committed on success and rolled back on error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a read query (SQLite values are dynamically typed; rows are built from them)."""
        with self._lock:
            return self._conn.execute(sql, args).fetchall()
