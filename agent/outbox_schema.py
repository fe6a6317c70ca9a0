"""The outbox's SQLite layout, connection settings and the checks run when it opens.

Tables (all STRICT)::

    counters  one row (id = 1): schema_version, last_seq (never decreased), running
              totals per state and held_bytes (bytes of every body still held)
    packets   one row per packet ever committed, kept forever as the audit row:
              seq (INTEGER PRIMARY KEY), packet_id (unique), created_at, committed_at,
              state, bytes, attempts, sent_at, delivered_at, rejected_at, reason
              (the centre's reason for a rejected packet, what is wrong with a damaged one)
    bodies    seq -> data BLOB, only while the packet is not delivered

Bodies live in their own table so that scanning metadata never reads a blob page.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from sqlite_utils import Database

log = logging.getLogger("ektp.outbox")

SCHEMA_VERSION = 1
PAGE_SIZE = 4096
BUSY_TIMEOUT_S = 5.0
JOURNAL_SIZE_LIMIT = 16 * 1024 * 1024  # WAL file truncated to this after a checkpoint
SYNCHRONOUS_FULL = 2  # what `PRAGMA synchronous` reads back for FULL

PENDING = "pending"
SENT = "sent"
DELIVERED = "delivered"
REJECTED = "rejected"
# Salvaged from a damaged file but failing the kiosk's own signature check: kept for export,
# never sent. Counted from the rows (the state index), not in counters: it only ever comes
# out of a salvage.
DAMAGED = "damaged"
STATES = (PENDING, SENT, DELIVERED, REJECTED, DAMAGED)
HELD_STATES = (PENDING, SENT, REJECTED, DAMAGED)  # body kept; counted against max_bytes
AWAITING_STATES = (PENDING, SENT)  # still to be delivered

TABLES = ("counters", "packets", "bodies")
STATE_COUNTER_COLUMNS = {PENDING: "pending", SENT: "sent", DELIVERED: "delivered", REJECTED: "rejected"}


def connect(path: Path, *, readonly: bool = False, immutable: bool = False) -> sqlite3.Connection:
    """Open a connection in autocommit mode (transactions are explicit); read-only via a URI."""
    if readonly:
        query = "immutable=1" if immutable else "mode=ro"
        target, uri = f"{path.absolute().as_uri()}?{query}", True
    else:
        target, uri = str(path), False
    return sqlite3.connect(
        target, uri=uri, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S
    )


class PragmaNotApplied(sqlite3.OperationalError):
    """SQLite did not take a durability setting the outbox's promises rest on."""


def set_writer_pragmas(conn: sqlite3.Connection, max_page_count: int | None) -> None:
    """Durability and housekeeping settings of the one writer connection, read back.

    A receipt promises that its packet survives a power cut: that needs WAL with
    synchronous=FULL. SQLite answers a pragma it cannot apply by keeping the old value
    (WAL is refused on a file system without shared memory, an in-memory database,
    a -wal file that cannot be created), so both are read back.
    :raises PragmaNotApplied: journal_mode is not wal or synchronous is not FULL
    """
    mode = str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
    conn.execute("PRAGMA synchronous=FULL")
    sync = int(conn.execute("PRAGMA synchronous").fetchone()[0])
    if mode != "wal" or sync != SYNCHRONOUS_FULL:
        raise PragmaNotApplied(
            f"SQLite did not take the outbox's durability settings (journal_mode={mode}, expected wal;"
            f" synchronous={sync}, expected {SYNCHRONOUS_FULL} = FULL): receipts could not survive a"
            " power cut, so the outbox is not opened for writing. Keep the data dir on a local file"
            " system (ext4 on the SD card), writable by the service user"
        )
    # Debian's SQLite is built with SECURE_DELETE: freeing a delivered body would overwrite all
    # its pages with zeros, a second full write of every packet. The bodies are ciphertext for
    # the centre's key; FAST still zeroes what costs no extra I/O.
    conn.execute("PRAGMA secure_delete=FAST")
    conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
    if max_page_count is not None:
        conn.execute(f"PRAGMA max_page_count={int(max_page_count)}")


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT; rolled back on any exception (including KeyboardInterrupt)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def table_names(conn: sqlite3.Connection) -> list[str]:
    """The user tables present (raises sqlite3.DatabaseError on a damaged or foreign file)."""
    return Database(conn, execute_plugins=False, recursive_triggers=False).table_names()


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the tables of an empty database: incremental auto-vacuum first, then WAL."""
    # auto_vacuum and page_size only take effect before the first table exists.
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise sqlite3.OperationalError(f"cannot switch the outbox to WAL mode (journal_mode={mode})")
    db = Database(conn, execute_plugins=False, recursive_triggers=False)
    with write_transaction(conn):
        db.table("counters").create(
            {
                "id": int,
                "schema_version": int,
                "last_seq": int,
                "pending": int,
                "sent": int,
                "delivered": int,
                "rejected": int,
                "held_bytes": int,
            },
            pk="id",
            not_null={"schema_version", "last_seq", "pending", "sent", "delivered", "rejected", "held_bytes"},
            strict=True,
        )
        db.table("packets").create(
            {
                "seq": int,
                "packet_id": str,
                "created_at": str,
                "committed_at": str,
                "state": str,
                "bytes": int,
                "attempts": int,
                "sent_at": str,
                "delivered_at": str,
                "rejected_at": str,
                "reason": str,
            },
            pk="seq",
            not_null={"packet_id", "created_at", "committed_at", "state", "bytes", "attempts"},
            defaults={"attempts": 0},
            strict=True,
        )
        db.table("bodies").create({"seq": int, "data": bytes}, pk="seq", not_null={"data"}, strict=True)
        db.table("packets").create_index(["packet_id"], index_name="packets_packet_id", unique=True)
        db.table("packets").create_index(["state", "seq"], index_name="packets_state_seq")
        # The drain's "all undelivered in seq order" walks this without sorting.
        conn.execute("CREATE INDEX packets_awaiting ON packets(seq) WHERE state IN ('pending', 'sent')")
        conn.execute(
            "INSERT INTO counters (id, schema_version, last_seq, pending, sent, delivered, rejected,"
            " held_bytes) VALUES (1, ?, 0, 0, 0, 0, 0, 0)",
            (SCHEMA_VERSION,),
        )


def quick_check(conn: sqlite3.Connection) -> str | None:
    """None when `PRAGMA quick_check` passes, else what it (or SQLite opening the file) said."""
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        return f"{type(exc).__name__}: {exc}"
    if [tuple(r) for r in rows] == [("ok",)]:
        return None
    lines = [str(r[0]) for r in rows]
    return "; ".join(lines[:5]) + (f" (+{len(lines) - 5} more)" if len(lines) > 5 else "")


def diagnose(conn: sqlite3.Connection) -> tuple[str, str | None]:
    """("new" | "ours" | "damaged", problem): whether the file is empty, a sound outbox, or not."""
    problem = quick_check(conn)
    if problem is not None:
        return "damaged", problem
    try:
        tables = set(table_names(conn))
        if not tables:
            return "new", None
        if not set(TABLES) <= tables:
            return "damaged", f"not an outbox database (tables: {sorted(tables)})"
        row = conn.execute("SELECT schema_version FROM counters WHERE id = 1").fetchone()
    except sqlite3.DatabaseError as exc:
        return "damaged", f"{type(exc).__name__}: {exc}"
    if row is None:
        return "damaged", "the counters row is missing"
    return "ours", None


def resume_and_recount(conn: sqlite3.Connection) -> tuple[int, bool]:
    """Return sent packets to pending and recompute the running totals from the rows.

    Returns (packets resumed, whether the stored totals had drifted). One transaction.
    """
    with write_transaction(conn):
        resumed = conn.execute("UPDATE packets SET state = 'pending' WHERE state = 'sent'").rowcount
        counts = dict.fromkeys(STATES, 0)
        held = 0
        for state, n, nbytes in conn.execute(
            "SELECT state, count(*), total(bytes) FROM packets GROUP BY state"
        ):
            counts[str(state)] = int(n)
            if state in HELD_STATES:
                held += int(nbytes)
        (max_seq,) = conn.execute("SELECT coalesce(max(seq), 0) FROM packets").fetchone()
        old = conn.execute(
            "SELECT last_seq, pending, sent, delivered, rejected, held_bytes FROM counters WHERE id = 1"
        ).fetchone()
        last_seq = max(int(old[0]), int(max_seq))
        new = (last_seq, counts[PENDING], counts[SENT], counts[DELIVERED], counts[REJECTED], held)
        # Resuming sent -> pending is expected to change the totals; anything else is drift.
        expected_old = (old[0], old[1] + resumed, old[2] - resumed, old[3], old[4], old[5])
        drifted = tuple(expected_old) != new
        if tuple(old) != new:
            conn.execute(
                "UPDATE counters SET last_seq = ?, pending = ?, sent = ?, delivered = ?, rejected = ?,"
                " held_bytes = ? WHERE id = 1",
                new,
            )
    return resumed, drifted
