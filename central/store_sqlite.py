"""The central store on SQLite: one file, WAL journal, synchronous=FULL (a commit survives power loss)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from central.store import CentralStore, Cursor, Sql, StoreError, StoreUnavailable

BUSY_TIMEOUT_S = 30.0  # another process (an import beside the consumer) may hold the write lock


class SqliteStore(CentralStore):
    BLOB = "BLOB"
    SERIAL_PK = "INTEGER PRIMARY KEY AUTOINCREMENT"

    def __init__(self, path: str | Path) -> None:
        super().__init__(str(path))
        self.path = Path(path)
        try:
            if str(path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are ours (BEGIN IMMEDIATE ... COMMIT), never implicit;
            # check_same_thread=False: callers may use the store from worker threads, one at a time (the lock)
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open the central store {self.path}: {exc}") from exc
        try:
            self._retry_busy(self._set_up)
        except sqlite3.Error as exc:
            self.close()
            raise StoreUnavailable(f"cannot open the central store {self.path}: {exc}") from exc
        except BaseException:
            self.close()
            raise

    def _set_up(self) -> None:
        """WAL, full sync, and the schema."""
        conn = self._conn
        assert conn is not None
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if mode != "wal":  # persistent in the file: only the first opener of a new file switches it
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(self.path) != ":memory:" and mode != "wal":
            raise StoreUnavailable(f"central store {self.path}: cannot switch to WAL (journal mode {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._create_schema(conn.execute)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _retry_busy(self, step: Callable[[], None]) -> None:
        """Run ``step`` again while SQLite says busy: two processes opening a new file at once can
        get "database is locked" straight away (switching to WAL), without the busy handler's wait."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        delay = 0.01
        while True:
            try:
                step()
                return
            except sqlite3.OperationalError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Sql]:
        conn = self._conn
        if conn is None:
            raise StoreError(f"central store {self.path} is closed")

        def sql(text: str, params: Sequence[Any] = ()) -> Cursor:
            return conn.execute(text, params)

        try:
            # IMMEDIATE takes the write lock up front, so a busy database waits here (busy timeout)
            # rather than failing at the first write of a read-then-write transaction
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"central store {self.path}: cannot begin a transaction: {exc}") from exc
        try:
            yield sql
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"central store {self.path}: {exc}") from exc
            raise
