"""The one way the serving stores (keys, review queue, request log) open their sqlite files.

WAL, a busy timeout, explicit write transactions, one connection per process behind a lock:
several router replicas and the controller use the same files at once.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hybridft.registry.audit import exclusive_lock

BUSY_TIMEOUT_MS = 10_000


class SqliteDatabase:
    """One sqlite file used by many processes: WAL, ``busy_timeout``, explicit write transactions.

    The connection is opened lazily and reopened after a ``fork`` (a sqlite connection must not
    cross one); within a process one lock serialises threads on it.
    """

    def __init__(self, path: str | Path, schema: str) -> None:
        self.path = Path(path)
        self._schema = schema
        self._pid = -1
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        if self._pid != os.getpid():
            self._lock = threading.Lock()  # a lock copied by fork may be held by a dead thread
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False, isolation_level=None
        )
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # Switching to WAL and creating tables race between processes opening a new file at once;
        # a flock beside the file makes that first setup one at a time.
        with exclusive_lock(f"{self.path}.lock"):
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(f"BEGIN IMMEDIATE; {self._schema}; COMMIT;")
        self._conn, self._pid = conn, os.getpid()
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on any error."""
        conn = self._connection()
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        conn = self._connection()
        with self._lock:
            return conn.execute(sql, params).fetchall()

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None
