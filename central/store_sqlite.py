"""The central store on SQLite: one file, WAL journal, synchronous=FULL (a commit survives power loss).

The file holds the packets, the quarantine and the kiosks' keys, so only its owner may read it:
it is created 0600 before SQLite opens it (SQLite would create it 0644 under the usual umask),
and SQLite gives its -wal and -shm files the database's mode. In a setgid directory (the
administrator's way to share files with a group, e.g. a backup agent) the files of that
directory's group are 0640. An existing file with more access than that is tightened, with a
warning, when this process may (it owns the file, or is root).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from central.store import CentralStore, Cursor, Sql, StoreError, StoreUnavailable

BUSY_TIMEOUT_S = 30.0  # another process (an import beside the consumer) may hold the write lock
PRIVATE_MODE = 0o600
GROUP_MODE = 0o640  # in a setgid directory, for the files of its group
SIDE_FILES = ("-wal", "-shm", "-journal")

log = logging.getLogger(__name__)


class SqliteStore(CentralStore):
    BLOB = "BLOB"
    SERIAL_PK = "INTEGER PRIMARY KEY AUTOINCREMENT"

    def __init__(self, path: str | Path) -> None:
        super().__init__(str(path))
        self.path = Path(path)
        try:
            if str(path) not in ("", ":memory:"):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                create_private(self.path)
                for suffix in ("", *SIDE_FILES):  # an older release, or a umask, left them open to others
                    tighten(Path(f"{self.path}{suffix}"))
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


def allowed_mode(path: Path, st: os.stat_result | None = None) -> int:
    """0640 for a file of a setgid directory's group (``st``: the file's stat), else 0600."""
    try:
        parent = os.stat(path.parent)
    except OSError:
        return PRIVATE_MODE
    shared = parent.st_mode & stat.S_ISGID and (st is None or st.st_gid == parent.st_gid)
    return GROUP_MODE if shared else PRIVATE_MODE


def create_private(path: Path) -> None:
    """Create the database file with its mode before SQLite does, whatever the umask; an existing
    file is left to ``tighten``."""
    mode = allowed_mode(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, mode)  # the umask may have taken away the owner's bits, too
    finally:
        os.close(fd)


def tighten(path: Path) -> None:
    """Take away from a store file what its allowed mode does not give; warn what was done, or
    what to do when this process may not."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    mode = stat.S_IMODE(st.st_mode)
    allowed = allowed_mode(path, st)
    if not stat.S_ISREG(st.st_mode) or not mode & ~allowed:  # not a file: SQLite will say so
        return
    if st.st_uid != os.geteuid() and os.geteuid() != 0:
        log.warning(
            "central store file %s is mode %04o, owned by uid %d: its owner should run chmod %04o %s",
            path,
            mode,
            st.st_uid,
            mode & allowed,
            path,
        )
        return
    try:
        os.chmod(path, mode & allowed)
    except OSError as exc:
        log.warning(
            "central store file %s is mode %04o and cannot be tightened: %s", path, mode, exc.strerror
        )
        return
    log.warning(
        "central store file %s was mode %04o; now %04o (for its owner only, or its group in a setgid"
        " directory: it holds the packets, the quarantine and the kiosks' keys)",
        path,
        mode,
        mode & allowed,
    )
