"""The durable store-and-forward outbox: enrollment packets wait here until the centre acks.

SQLite (through sqlite-utils) in WAL mode; every write is one ``BEGIN IMMEDIATE``
transaction committed with ``synchronous=FULL``, so a returned :class:`Receipt` survives
kill -9 and power loss. Layout: :mod:`agent.outbox_schema`; quarantine and salvage of a
damaged file: :mod:`agent.outbox_recovery`; the rationale: docs/store.md.

States and the only transitions the store performs::

    commit -> pending --mark_sent--> sent --mark_delivered--> delivered (body freed)
                 ^  |                  |
                 |  +--requeue---------+  (sent -> pending, attempts + 1)
                 |  +--mark_delivered--> delivered  (an ack may overtake the PUBACK)
                 +---- on open, every sent packet is resumed as pending
    pending | sent --mark_rejected--> rejected (kept with its reason, never freed)
    rejected --resubmit--> pending (an operator's decision: attempts kept, reason cleared)
    damaged: only made by a salvage, for a body that fails the kiosk's own signature
             check (kept for export, never sent, never left)

Anything else (an unknown id, delivering a rejected packet, rejecting a delivered one,
sending twice, resubmitting a packet that is not rejected) changes nothing: the batch
methods return how many rows they changed and log a warning for ids they could not
apply. ``delivered`` is final; ``rejected`` is left only through ``resubmit``.

Errors::

    OutboxError                                 root of everything raised here
     +-- StoreFull                              undelivered bytes reached store.max_bytes
     |    +-- DiskFull (also OSError ENOSPC)    the disk (or max_page_count) is full
     +-- StoreCorrupt                           a read-only open or a read met a damaged file
     +-- StoreNotFound (also FileNotFoundError) read-only open of a missing file
     +-- StoreReadOnly (also PermissionError)   a write on a store opened read-only
     +-- StoreClosed (also ValueError)          any call after close()
     +-- InvalidPacket (also ValueError)        build() returned an unusable packet

Threads: one Outbox object owns the one writer connection of its file (one per process,
one process per file). Its methods may be called from any thread (asyncio.to_thread
workers included): an internal lock serialises them. ``build`` runs under that lock
inside the transaction and must not call back into the Outbox.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.files import fsync_dir as _fsync_dir
from agent.outbox_recovery import quarantine, salvage, signature_check
from agent.outbox_schema import (
    DAMAGED,
    DELIVERED,
    PENDING,
    REJECTED,
    SCHEMA_VERSION,
    SENT,
    STATES,
    connect,
    create_schema,
    diagnose,
    resume_and_recount,
    set_writer_pragmas,
    write_transaction,
)

__all__ = [
    "DiskFull",
    "InvalidPacket",
    "Outbox",
    "OutboxError",
    "OutboxStats",
    "QueuedPacket",
    "Receipt",
    "Sealable",
    "StoreClosed",
    "StoreCorrupt",
    "StoreFull",
    "StoreNotFound",
    "StoreReadOnly",
    "StoredPacket",
]

log = logging.getLogger("ektp.outbox")

DEFAULT_MAX_BYTES = 8_000_000_000  # CONTRACT.md, [store] max_bytes
NEAR_FULL_RATIO = 0.8
# Near full also when the room left takes fewer than this many packets of the held ones' average
# size: with a small store.max_bytes, "full" must never come without "near full" first.
NEAR_FULL_ROOM_PACKETS = 2
DRAIN_WINDOW = 16  # packets read per batch by iter_pending
VACUUM_STEP_PAGES = 4096  # pages handed back to the filesystem after a free (16 MB at 4 KiB)
ID_CHUNK = 500  # ids per IN (...) statement
FILE_MODE = 0o600  # the bodies are biometric ciphertext
SQLITE_FULL = 13

_T = TypeVar("_T")

# The drain's reads: an index range scan in seq order, bodies joined only for the batch.
_BATCH_SQL = (
    "SELECT p.seq, p.packet_id, p.created_at, p.state, p.attempts, b.data"
    " FROM packets AS p INDEXED BY packets_state_seq LEFT JOIN bodies AS b ON b.seq = p.seq"
    " WHERE p.state = 'pending' AND p.seq > ? ORDER BY p.seq LIMIT ?"
)
_BATCH_SQL_WITH_SENT = (
    "SELECT p.seq, p.packet_id, p.created_at, p.state, p.attempts, b.data"
    " FROM packets AS p INDEXED BY packets_awaiting LEFT JOIN bodies AS b ON b.seq = p.seq"
    " WHERE p.state IN ('pending', 'sent') AND p.seq > ? ORDER BY p.seq LIMIT ?"
)


# ---------------------------------------------------------------------------- errors


class OutboxError(Exception):
    """Root of the outbox's errors."""


class StoreFull(OutboxError):
    """The undelivered packets reached store.max_bytes: the enrollment is refused, nothing dropped."""

    def __init__(self, message: str, *, max_bytes: int, used_bytes: int, packet_bytes: int | None) -> None:
        super().__init__(message)
        self.max_bytes = max_bytes
        self.used_bytes = used_bytes
        self.packet_bytes = packet_bytes


class DiskFull(StoreFull, OSError):
    """The filesystem (or the page limit) holding the store is full (ENOSPC / SQLITE_FULL)."""

    def __init__(self, message: str, *, path: Path, max_bytes: int, used_bytes: int) -> None:
        OSError.__init__(self, errno.ENOSPC, message, str(path))
        self.max_bytes = max_bytes
        self.used_bytes = used_bytes
        self.packet_bytes = None
        self.path = path


class StoreCorrupt(OutboxError):
    """The store file is damaged or is not an outbox."""

    def __init__(self, message: str, *, path: Path) -> None:
        super().__init__(message)
        self.path = path


class StoreNotFound(OutboxError, FileNotFoundError):
    """A read-only open of a store file that does not exist."""


class StoreReadOnly(OutboxError, PermissionError):
    """A write was attempted on a store opened with open_readonly."""


class StoreClosed(OutboxError, ValueError):
    """The outbox was used after close()."""


class InvalidPacket(OutboxError, ValueError):
    """build() returned a packet the store cannot keep (bad id, empty data, duplicate id)."""


# ---------------------------------------------------------------------------- values


class Sealable(Protocol):
    """What build(seq) returns: the packet sealed with that seq (made by the packet module).

    Read-only members, so a frozen dataclass satisfies it as well as a plain object.
    """

    @property
    def packet_id(self) -> str:
        """Canonical (lower-case) UUID string."""

    @property
    def created_at(self) -> str:
        """RFC 3339 UTC."""

    @property
    def data(self) -> bytes:
        """The whole sealed packet."""


@dataclass(frozen=True, slots=True)
class Receipt:
    """Proof that a packet is committed durably; what the operator's receipt shows."""

    packet_id: str
    seq: int
    created_at: str
    bytes: int


@dataclass(frozen=True, slots=True)
class StoredPacket:
    """A packet read for the drain, body included."""

    packet_id: str
    seq: int
    created_at: str
    state: str
    attempts: int
    data: bytes


@dataclass(frozen=True, slots=True)
class QueuedPacket:
    """Metadata of a packet whose body is held (for `ektp-agent queue`); never the body."""

    packet_id: str
    seq: int
    created_at: str
    state: str
    bytes: int
    attempts: int
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """Counts and sizes for health; pending_bytes counts every held body (pending, sent, rejected)."""

    pending: int
    sent: int
    delivered: int
    rejected: int
    pending_bytes: int
    oldest_pending_age_s: float | None
    total_committed: int
    last_seq: int
    near_full: bool
    max_bytes: int
    damaged: int = 0  # salvaged bodies that fail the kiosk's own signature check
    full: bool = False  # a packet of the held ones' average size would not fit any more


# ---------------------------------------------------------------------------- the outbox


class Outbox:
    """The store-and-forward buffer of one kiosk (see the module docstring for the rules)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_page_count: int | None = None,
        repair: bool = True,
        kiosk_keys: Sequence[Ed25519PublicKey] = (),
    ) -> None:
        """Open (creating, checking, resuming or salvaging) the store at path for writing.

        max_page_count caps the file in SQLite pages (tests use it to simulate a full disk).
        repair=False (a command writing while the service is down) neither creates, salvages
        nor adopts a salvage: recovery is the service's, under its own user.
        kiosk_keys (the kiosk's current and retired public keys): a salvage checks each
        body's signature with them and keeps one that fails as ``damaged``; without them a
        salvage copies bodies unchecked.
        :raises OutboxError: the file was written by a newer schema.
        :raises StoreNotFound: repair=False and there is no file at path.
        :raises StoreCorrupt: repair=False and the file is damaged.
        :raises OSError: the directory or file cannot be created.
        """
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self._path = Path(path)
        self._max_bytes = max_bytes
        self._readonly = False
        self._lock = threading.Lock()
        self._kiosk_keys = tuple(kiosk_keys)
        self._conn: sqlite3.Connection | None = None
        try:
            self._conn = self._open_writer(max_page_count, repair)
        except sqlite3.Error as exc:
            raise self._translate(exc, "open") from exc

    @classmethod
    def open_readonly(cls, path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES) -> Outbox:
        """Open for reading only (the CLI while the service is down or running); no recovery.

        :raises StoreNotFound: no file at path.
        :raises StoreCorrupt: the file is damaged or not an outbox (the service will salvage it).
        """
        self = cls.__new__(cls)
        self._path = Path(path)
        self._max_bytes = max_bytes
        self._readonly = True
        self._lock = threading.Lock()
        self._kiosk_keys = ()
        self._conn = None
        if not self._path.exists():
            raise StoreNotFound(errno.ENOENT, f"no outbox at {self._path}", str(self._path))
        try:
            conn = connect(self._path, readonly=True)
        except sqlite3.Error as exc:
            raise StoreCorrupt(f"cannot open {self._path} read-only: {exc}", path=self._path) from exc
        try:
            try:
                conn.execute("SELECT last_seq FROM counters WHERE id = 1").fetchone()
            except sqlite3.OperationalError as exc:
                if "unable to open" not in str(exc) or Path(f"{self._path}-wal").exists():
                    raise
                # No write access to create the -shm, and no -wal: the file alone is the truth.
                conn.close()
                conn = connect(self._path, readonly=True, immutable=True)
                conn.execute("SELECT last_seq FROM counters WHERE id = 1").fetchone()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreCorrupt(
                f"the outbox {self._path} cannot be read ({exc}); start the service to quarantine and "
                "salvage it",
                path=self._path,
            ) from exc
        self._conn = conn
        return self

    # ------------------------------------------------------------------ writes

    def commit(self, build: Callable[[int], Sealable]) -> Receipt:
        """Allocate the next seq, seal the packet with build(seq) and commit it durably.

        If build raises, nothing is committed and the seq is not consumed.
        :raises StoreFull: the undelivered bytes would exceed max_bytes.
        :raises DiskFull: the disk holding the store is full.
        :raises InvalidPacket: build returned a non-canonical id, empty data or a known id.
        """
        with self._lock:
            conn = self._writer()
            try:
                with write_transaction(conn):
                    last_seq, held = conn.execute(
                        "SELECT last_seq, held_bytes FROM counters WHERE id = 1"
                    ).fetchone()
                    if held >= self._max_bytes:
                        raise self._store_full(held, None)
                    seq = last_seq + 1
                    packet = build(seq)
                    data = _packet_bytes(packet)
                    size = len(data)
                    if held + size > self._max_bytes:
                        raise self._store_full(held, size)
                    conn.execute(
                        "INSERT INTO packets (seq, packet_id, created_at, committed_at, state, bytes)"
                        " VALUES (?, ?, ?, ?, 'pending', ?)",
                        (seq, packet.packet_id, packet.created_at, _now_rfc3339(), size),
                    )
                    conn.execute("INSERT INTO bodies (seq, data) VALUES (?, ?)", (seq, data))
                    conn.execute(
                        "UPDATE counters SET last_seq = ?, pending = pending + 1,"
                        " held_bytes = held_bytes + ? WHERE id = 1",
                        (seq, size),
                    )
            except sqlite3.IntegrityError as exc:
                raise InvalidPacket(f"packet id already in the outbox: {exc}") from exc
            except sqlite3.Error as exc:
                raise self._translate(exc, "commit") from exc
        log.debug("committed seq=%d packet_id=%s bytes=%d", seq, packet.packet_id, size)
        return Receipt(packet.packet_id, seq, packet.created_at, size)

    def mark_sent(self, packet_ids: Iterable[str]) -> int:
        """pending -> sent (published and PUBACKed with success); returns how many changed."""
        return len(
            self._transition(
                packet_ids,
                "mark_sent",
                {PENDING},
                SENT,
                "UPDATE packets SET state = 'sent', sent_at = ? WHERE seq = ?",
                fsync=False,
            )
        )

    def requeue(self, packet_ids: Iterable[str]) -> int:
        """sent (or pending) -> pending, attempts + 1: a refused publish or an ack timeout."""
        return len(
            self._transition(
                packet_ids,
                "requeue",
                {PENDING, SENT},
                PENDING,
                "UPDATE packets SET state = 'pending', attempts = attempts + 1 WHERE seq = ?",
                stamp=False,
            )
        )

    def mark_delivered(self, packet_ids: Iterable[str]) -> int:
        """pending|sent -> delivered for ids from a verified ack: frees the bodies; returns how many."""
        changed = len(
            self._transition(
                packet_ids,
                "mark_delivered",
                {PENDING, SENT},
                DELIVERED,
                "UPDATE packets SET state = 'delivered', delivered_at = ? WHERE seq = ?",
                free=True,
            )
        )
        if changed:
            self._reclaim_when_drained()
        return changed

    def resubmit(self, packet_ids: Iterable[str] | None) -> int:
        """rejected -> pending for these ids (None: every rejected packet); returns how many changed.

        For a technician once the cause is fixed (`ektp-agent resubmit`). Attempts are kept;
        the reason is cleared from the row and logged (``rejected_at`` stays, the time of the
        last rejection). One durable transaction.
        """
        changed = self._transition(
            packet_ids,
            "resubmit",
            {REJECTED},
            PENDING,
            "UPDATE packets SET state = 'pending', reason = NULL WHERE seq = ?",
            stamp=False,
        )
        for packet_id, seq, old_reason in changed:
            log.info(
                "resubmit: packet %s (seq %d) is pending again; the centre had rejected it: %s",
                packet_id,
                seq,
                old_reason,
            )
        return len(changed)

    def mark_rejected(self, packet_id: str, reason: str) -> bool:
        """pending|sent -> rejected with the centre's reason (kept, never freed); True if changed."""
        if not reason:
            raise ValueError("a rejection needs a reason")
        changed = len(
            self._transition(
                [packet_id],
                "mark_rejected",
                {PENDING, SENT},
                REJECTED,
                "UPDATE packets SET state = 'rejected', rejected_at = ?, reason = ? WHERE seq = ?",
                reason=reason,
            )
        )
        return changed == 1

    # ------------------------------------------------------------------ reads

    def next_batch(self, after_seq: int, limit: int, *, include_sent: bool = False) -> list[StoredPacket]:
        """Up to limit pending (or, with include_sent, pending and sent) packets with seq > after_seq."""
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        sql = _BATCH_SQL_WITH_SENT if include_sent else _BATCH_SQL
        rows = self._read(lambda c: c.execute(sql, (after_seq, limit)).fetchall())
        batch, bodiless = [], []
        for seq, packet_id, created_at, state, attempts, data in rows:
            if data is None:
                bodiless.append((seq, packet_id))
                continue
            batch.append(StoredPacket(packet_id, seq, created_at, state, attempts, data))
        for seq, packet_id in bodiless:
            # Damage, not a state: the packet cannot be sent. Say so loudly and park it where
            # the technician sees it, rather than stop the drain of every later packet.
            log.error(
                "outbox %s: the body of packet seq=%d (%s) is missing; marked rejected",
                self._path,
                seq,
                packet_id,
            )
            if not self._readonly:
                self.mark_rejected(packet_id, "body missing from the kiosk's outbox (storage damage)")
        if bodiless and not batch and len(rows) == limit:
            return self.next_batch(rows[-1][0], limit, include_sent=include_sent)
        return batch

    def iter_pending(
        self, window: int = DRAIN_WINDOW, *, include_sent: bool = False
    ) -> Iterator[StoredPacket]:
        """Stream pending packets in seq order, reading window packets at a time.

        A packet requeued behind the cursor is seen by the next iteration, not this one.
        """
        after = 0
        while True:
            batch = self.next_batch(after, window, include_sent=include_sent)
            if not batch:
                return
            yield from batch
            after = batch[-1].seq

    def get(self, packet_id: str) -> bytes | None:
        """The packet's bytes while held (pending, sent, rejected); None if unknown or delivered."""
        row = self._read(
            lambda c: c.execute(
                "SELECT b.data FROM packets AS p JOIN bodies AS b ON b.seq = p.seq WHERE p.packet_id = ?",
                (packet_id,),
            ).fetchone()
        )
        return None if row is None else bytes(row[0])

    def info(self, packet_id: str) -> QueuedPacket | None:
        """One packet's metadata, whatever its state; None if unknown."""
        row = self._read(
            lambda c: c.execute(
                "SELECT packet_id, seq, created_at, state, bytes, attempts, reason FROM packets"
                " WHERE packet_id = ?",
                (packet_id,),
            ).fetchone()
        )
        return None if row is None else QueuedPacket(*row)

    def undelivered(self) -> list[QueuedPacket]:
        """Metadata of every held packet (pending, sent, rejected, damaged) in seq order; never a body."""
        rows = self._read(
            lambda c: c.execute(
                "SELECT packet_id, seq, created_at, state, bytes, attempts, reason FROM packets"
                " WHERE state IN ('pending', 'sent', 'rejected', 'damaged') ORDER BY seq"
            ).fetchall()
        )
        return [QueuedPacket(*row) for row in rows]

    def rejected(self, limit: int | None = None) -> list[QueuedPacket]:
        """Metadata of the rejected packets in seq order (the first ``limit``), each with its reason."""
        rows = self._read(
            lambda c: c.execute(
                "SELECT packet_id, seq, created_at, state, bytes, attempts, reason FROM packets"
                " INDEXED BY packets_state_seq WHERE state = 'rejected' ORDER BY seq LIMIT ?",
                (-1 if limit is None else limit,),
            ).fetchall()
        )
        return [QueuedPacket(*row) for row in rows]

    def stats(self) -> OutboxStats:
        """Counts, bytes and the oldest undelivered age, from the running totals (O(1))."""

        def query(c: sqlite3.Connection) -> tuple[tuple[int, ...], str | None]:
            c.execute("BEGIN")  # one snapshot for both statements
            try:
                totals = c.execute(
                    "SELECT last_seq, pending, sent, delivered, rejected, held_bytes FROM counters WHERE id = 1"
                ).fetchone()
                oldest = c.execute(
                    "SELECT committed_at FROM packets INDEXED BY packets_awaiting"
                    " WHERE state IN ('pending', 'sent') ORDER BY seq LIMIT 1"
                ).fetchone()
                (damaged,) = c.execute(
                    "SELECT count(*) FROM packets INDEXED BY packets_state_seq WHERE state = ?", (DAMAGED,)
                ).fetchone()
            finally:
                c.execute("COMMIT")
            return (*totals, damaged), None if oldest is None else str(oldest[0])

        (last_seq, pending, sent, delivered, rejected, held, damaged), oldest_at = self._read(query)
        packets = pending + sent + rejected + damaged
        average = held / packets if packets else 0.0
        room = self._max_bytes - held
        return OutboxStats(
            pending=pending,
            sent=sent,
            delivered=delivered,
            rejected=rejected,
            pending_bytes=held,
            oldest_pending_age_s=_age_s(oldest_at),
            total_committed=last_seq,
            last_seq=last_seq,
            near_full=held > self._max_bytes * NEAR_FULL_RATIO
            or (packets > 0 and room < average * NEAR_FULL_ROOM_PACKETS),
            max_bytes=self._max_bytes,
            damaged=damaged,
            full=packets > 0 and room < average,
        )

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def close(self) -> None:
        """Close the connection (idempotent); SQLite checkpoints the WAL on the last close."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self._readonly else "writer"
        return f"<Outbox {self._path} {mode}{' closed' if self._conn is None else ''}>"

    # ------------------------------------------------------------------ internals

    def _open_writer(self, max_page_count: int | None, repair: bool) -> sqlite3.Connection:
        if not repair:
            if not self._path.exists():
                raise StoreNotFound(errno.ENOENT, f"no outbox at {self._path}", str(self._path))
        else:
            self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._adopt_finished_salvage()
        _ensure_private_file(self._path)
        # Diagnose read-only: a writer's close would checkpoint into, or delete, a damaged -wal.
        probe = connect(self._path, readonly=True)
        try:
            kind, problem = diagnose(probe)
        finally:
            probe.close()
        if kind == "damaged" and not repair:
            raise StoreCorrupt(
                f"the outbox {self._path} is damaged ({problem}); start the service to quarantine and"
                " salvage it",
                path=self._path,
            )
        if kind == "damaged":
            conn = self._quarantine_and_salvage(problem or "unknown damage")
        else:
            conn = connect(self._path)
        try:
            if kind == "new":
                create_schema(conn)
            else:
                (version,) = conn.execute("SELECT schema_version FROM counters WHERE id = 1").fetchone()
                if version > SCHEMA_VERSION:
                    raise OutboxError(
                        f"{self._path} has outbox schema {version}, newer than this agent's {SCHEMA_VERSION};"
                        " upgrade the agent"
                    )
            set_writer_pragmas(conn, max_page_count)
            resumed, drifted = resume_and_recount(conn)
        except BaseException:
            conn.close()
            raise
        if resumed:
            log.info(
                "outbox %s: %d sent packets were not acknowledged; resumed as pending", self._path, resumed
            )
        if drifted:
            log.warning("outbox %s: running totals disagreed with the rows; recounted", self._path)
        return conn

    def _quarantine_and_salvage(self, problem: str) -> sqlite3.Connection:
        """Salvage into a staging file, then move the damaged file aside and the copy in.

        A crash before the damaged file moves leaves it in place: the next open salvages
        again. A crash after leaves a complete staging file and no store: adopted at open.
        """
        staging = self._staging_path()
        for suffix in ("", "-wal", "-shm"):  # our own partial copy from an interrupted salvage
            Path(f"{staging}{suffix}").unlink(missing_ok=True)
        _ensure_private_file(staging)
        conn = connect(staging)
        try:
            create_schema(conn)
            check = signature_check(self._kiosk_keys) if self._kiosk_keys else None
            report = salvage(self._path, problem, conn, check)
        finally:
            conn.close()  # checkpoints: the staging copy is one self-contained file
        moved = quarantine(self._path)
        os.rename(staging, self._path)
        _fsync_dir(self._path.parent)
        conn = connect(self._path)
        lost = f"{report.lost} unreadable" + (f" (seqs {report.lost_seqs})" if report.lost else "")
        damaged = (
            f"; {report.damaged} failed the kiosk's own signature check (seqs {report.damaged_seqs}) and"
            " are kept as damaged, never sent (`ektp-agent export --include-damaged`)"
            if report.damaged
            else ""
        )
        log.critical(
            "outbox %s failed its integrity check (%s): moved aside to %s (with its -wal/-shm) and "
            "salvaged %d packets into a fresh store (%d still to deliver, %d delivered audit rows); %s%s; "
            "seq continues after %d. Keep the damaged file for the technician.",
            self._path,
            problem,
            moved,
            report.salvaged,
            report.salvaged_held - report.damaged,
            report.salvaged - report.salvaged_held,
            lost,
            damaged,
            report.highest_seq,
        )
        return conn

    def _staging_path(self) -> Path:
        return self._path.with_name(f"{self._path.name}.salvage")

    def _adopt_finished_salvage(self) -> None:
        """A salvage killed after moving the damaged file aside: its complete copy becomes the store."""
        staging = self._staging_path()
        if staging.exists() and not self._path.exists():
            os.rename(staging, self._path)
            _fsync_dir(self._path.parent)
            log.warning("outbox %s: finished an interrupted salvage (adopted %s)", self._path, staging)

    def _transition(
        self,
        packet_ids: Iterable[str] | None,
        action: str,
        allowed_from: set[str],
        new_state: str,
        update_sql: str,
        *,
        stamp: bool = True,
        free: bool = False,
        reason: str | None = None,
        fsync: bool = True,
    ) -> list[tuple[str, int, str | None]]:
        """Apply update_sql to every id whose state is in allowed_from; keep the totals in step.

        ``packet_ids=None`` means every packet in allowed_from, chosen inside the transaction.
        Returns (packet_id, seq, reason before the change) of each row changed.
        ``fsync=False`` commits without waiting for the disk (synchronous=NORMAL for this one
        transaction): for marks whose loss in a power cut costs nothing. A lost "sent" reads
        as pending, which is what every open turns "sent" into anyway; the next synchronous
        commit makes it durable with everything before it.
        """
        ids = None if packet_ids is None else list(dict.fromkeys(packet_ids))
        if ids is not None and not ids:
            return []
        with self._lock:
            conn = self._writer()
            if not fsync:
                conn.execute("PRAGMA synchronous=NORMAL")
            now = _now_rfc3339()
            changed: list[tuple[str, int, str | None]] = []
            skipped: list[tuple[str, str]] = []
            try:
                with write_transaction(conn):
                    if ids is None:
                        states = sorted(allowed_from)
                        ids = [
                            str(r[0])
                            for r in conn.execute(
                                "SELECT packet_id FROM packets INDEXED BY packets_state_seq"
                                f" WHERE state IN ({','.join('?' * len(states))}) ORDER BY state, seq",
                                states,
                            )
                        ]
                    delta = dict.fromkeys(STATES, 0)
                    freed = 0
                    for chunk in _chunks(ids, ID_CHUNK):
                        marks = ",".join("?" * len(chunk))
                        rows = conn.execute(
                            "SELECT packet_id, seq, state, bytes, reason FROM packets"
                            f" WHERE packet_id IN ({marks})",
                            chunk,
                        ).fetchall()
                        found = {r[0]: r for r in rows}
                        for packet_id in chunk:
                            row = found.get(packet_id)
                            if row is None:
                                skipped.append((packet_id, "unknown"))
                                continue
                            _, seq, state, size, old_reason = row
                            if state not in allowed_from:
                                skipped.append((packet_id, state))
                                continue
                            params: tuple[object, ...] = (seq,)
                            if reason is not None:
                                params = (now, reason, seq)
                            elif stamp:
                                params = (now, seq)
                            conn.execute(update_sql, params)
                            if free:
                                conn.execute("DELETE FROM bodies WHERE seq = ?", (seq,))
                                freed += size
                            delta[state] -= 1
                            delta[new_state] += 1
                            changed.append((packet_id, seq, old_reason))
                    if changed:
                        conn.execute(
                            "UPDATE counters SET pending = pending + ?, sent = sent + ?, delivered = delivered"
                            " + ?, rejected = rejected + ?, held_bytes = held_bytes - ? WHERE id = 1",
                            (delta[PENDING], delta[SENT], delta[DELIVERED], delta[REJECTED], freed),
                        )
            except sqlite3.Error as exc:
                raise self._translate(exc, action) from exc
            finally:
                if not fsync:
                    conn.execute("PRAGMA synchronous=FULL")
        self._log_skipped(action, skipped, new_state)
        return changed

    def _log_skipped(self, action: str, skipped: list[tuple[str, str]], new_state: str) -> None:
        """Repeats (an ack for a delivered packet) are normal; anything else is worth a warning."""
        for packet_id, state in skipped:
            if state == new_state:
                log.debug("%s: %s is already %s", action, packet_id, state)
            else:
                log.warning("%s: ignored %s (state %s)", action, packet_id, state)

    def _reclaim_when_drained(self) -> None:
        """Hand freed pages back only once nothing awaits delivery: mid-drain, a vacuum moves
        the bodies still to send into the freed space (copying the backlog on the SD card),
        and new commits reuse free pages anyway, so the file does not grow meanwhile."""
        before = None
        while True:
            with self._lock:
                conn = self._writer()
                (awaiting,) = conn.execute("SELECT pending + sent FROM counters WHERE id = 1").fetchone()
                (free,) = conn.execute("PRAGMA freelist_count").fetchone()
            if awaiting or not free or free == before:
                return
            before = free
            self._reclaim()

    def _reclaim(self) -> None:
        """Hand freed pages back to the filesystem a step at a time (never a full VACUUM)."""
        with self._lock:
            conn = self._writer()
            try:
                # The pragma frees one page per sqlite3_step and execute() steps once;
                # executescript steps it to the end (one transaction).
                conn.executescript(f"PRAGMA incremental_vacuum({VACUUM_STEP_PAGES});")
            except sqlite3.Error as exc:  # the frees are committed; reclaiming can wait
                log.warning("outbox %s: incremental vacuum failed: %s", self._path, exc)

    def _read(self, query: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreClosed(f"the outbox {self._path} is closed")
            try:
                return query(conn)
            except sqlite3.Error as exc:
                raise self._translate(exc, "read") from exc

    def _writer(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreClosed(f"the outbox {self._path} is closed")
        if self._readonly:
            raise StoreReadOnly(f"the outbox {self._path} was opened read-only")
        return self._conn

    def _store_full(self, held: int, size: int | None) -> StoreFull:
        need = f"; this {size}-byte packet would exceed it" if size is not None else ""
        return StoreFull(
            f"store full: undelivered packets use {held} of store.max_bytes = {self._max_bytes} bytes{need}."
            " Nothing was dropped. Sync or export the backlog (`ektp-agent sync` / "
            "`ektp-agent export --to DIR`), or raise store.max_bytes",
            max_bytes=self._max_bytes,
            used_bytes=held,
            packet_bytes=size,
        )

    def _translate(self, exc: sqlite3.Error, action: str) -> OutboxError:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code == SQLITE_FULL:
            held = self._held_bytes_or_zero()
            return DiskFull(
                f"disk full: the outbox {self._path} cannot grow ({exc}) during {action}; nothing was"
                " dropped. Free disk space, or sync or export the backlog (`ektp-agent sync` / "
                "`ektp-agent export --to DIR`)",
                path=self._path,
                max_bytes=self._max_bytes,
                used_bytes=held,
            )
        if isinstance(exc, sqlite3.DatabaseError) and code in (11, 26):  # SQLITE_CORRUPT, SQLITE_NOTADB
            return StoreCorrupt(
                f"the outbox {self._path} is damaged ({exc}) during {action}; restart the service to"
                " quarantine and salvage it",
                path=self._path,
            )
        return OutboxError(f"outbox {self._path}: {action} failed: {exc}")

    def _held_bytes_or_zero(self) -> int:
        if self._conn is None:
            return 0
        try:
            row = self._conn.execute("SELECT held_bytes FROM counters WHERE id = 1").fetchone()
            return int(row[0])
        except sqlite3.Error:
            return 0


# ---------------------------------------------------------------------------- helpers


def _packet_bytes(packet: Sealable) -> bytes:
    """Validate what build() returned and give its bytes."""
    try:
        canonical = str(uuid.UUID(packet.packet_id)) == packet.packet_id
    except (ValueError, TypeError, AttributeError):
        canonical = False
    if not canonical:
        raise InvalidPacket(
            f"packet_id {getattr(packet, 'packet_id', None)!r} is not a canonical UUID string"
        )
    if not isinstance(packet.created_at, str) or not packet.created_at:
        raise InvalidPacket(f"packet {packet.packet_id} has no created_at")
    data = packet.data
    if not isinstance(data, bytes):
        if not isinstance(data, bytearray | memoryview):
            raise InvalidPacket(f"packet {packet.packet_id} data is {type(data).__name__}, not bytes")
        data = bytes(data)
    if not data:
        raise InvalidPacket(f"packet {packet.packet_id} is empty")
    return data


def _ensure_private_file(path: Path) -> None:
    """Create the database file 0600 before SQLite does (its -wal/-shm copy the mode)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        mode = os.fstat(fd).st_mode & 0o777
        if mode != FILE_MODE:
            log.warning("outbox %s had mode %o; setting %o", path, mode, FILE_MODE)
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        side = Path(f"{path}{suffix}")
        if side.exists() and side.stat().st_mode & 0o777 != FILE_MODE:
            os.chmod(side, FILE_MODE)


def _now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _age_s(stamp: str | None) -> float | None:
    if stamp is None:
        return None
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
    return max(0.0, time.time() - then)


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
