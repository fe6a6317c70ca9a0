"""The central store: registered kiosks, packets stored exactly once by packet id, the
quarantine, and each kiosk's last status and health. One interface, two backends:
SQLite (a path; WAL, synchronous=FULL) and PostgreSQL (a postgresql:// URL).

    StoreError
     ├── StoreUnavailable        (also ConnectionError)  cannot open or reach the database
     ├── StoreSchemaError                                 a schema this program does not know
     ├── KioskAlreadyRegistered  (also FileExistsError)   another key is registered for the id
     └── StoreInputError         (also ValueError)        a bad kiosk id, key, source or document

Every write is one transaction that is durable when the method returns. Times are
RFC 3339 UTC strings. The SQL is shared; a backend only supplies the connection, the
placeholder style and the column types of its DDL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from central.fleet import FleetRow, build_fleet
from wire.names import KIOSK_ID_RE

if TYPE_CHECKING:
    from wire.packet import PacketHeader

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SOURCES = ("mqtt", "import")
STATUS_RANK = {"online": 0, "offline": 1}  # within one connection, online comes before offline
PG_URL_PREFIXES = ("postgresql://", "postgres://")


class StoreError(Exception):
    """The central store failed; the message names the store and what to do."""


class StoreUnavailable(StoreError, ConnectionError):
    pass


class StoreSchemaError(StoreError):
    pass


class KioskAlreadyRegistered(StoreError, FileExistsError):
    def __init__(self, kiosk_id: str) -> None:
        super().__init__(
            f"kiosk {kiosk_id} is already registered with another public key; "
            "pass --replace to replace it (its packets signed with the old key stay stored)"
        )
        self.kiosk_id = kiosk_id


class StoreInputError(StoreError, ValueError):
    pass


class StoreOutcome(Enum):
    """What storing one packet did."""

    STORED = "stored"  # newly stored
    DUPLICATE = "duplicate"  # the same bytes were already stored under this packet id
    CONFLICT = "conflict"  # other bytes are stored under this packet id: the first kept, this one quarantined


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def open_store(url: str) -> CentralStore:
    """Open (and create if needed) the store at ``url``: a PostgreSQL URL or a SQLite path.

    :raises StoreUnavailable: the database cannot be opened or reached
    :raises StoreSchemaError: the schema is newer than this program
    """
    if url.startswith(PG_URL_PREFIXES):
        try:
            from central.store_postgres import PostgresStore
        except ImportError as exc:
            raise StoreUnavailable(
                f"{redact_url(url)} needs the PostgreSQL driver: pip install 'ektp-agent[pg]' ({exc})"
            ) from exc

        return PostgresStore(url)
    from central.store_sqlite import SqliteStore

    return SqliteStore(url.removeprefix("sqlite://"))


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    if not url.startswith(PG_URL_PREFIXES):
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


class Cursor(Protocol):
    """The part of a DB-API cursor the shared SQL needs (sqlite3 and psycopg both fit)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Sql(Protocol):
    def __call__(self, text: str, params: Sequence[Any] = (), /) -> Cursor: ...


class CentralStore(ABC):
    """The store's interface and its shared SQL; a backend supplies ``_transaction`` and DDL types."""

    # column types of the backend's DDL
    BLOB = "BLOB"
    SERIAL_PK = "INTEGER PRIMARY KEY AUTOINCREMENT"

    def __init__(self, display: str) -> None:
        self.display = display  # the store named in messages, without a password
        self._lock = threading.RLock()  # one connection, shared by the caller's threads one at a time
        self._keys: dict[bytes, Ed25519PublicKey] = {}

    # ------------------------------------------------------------------ backend

    @abstractmethod
    def _transaction(self, *, write: bool) -> AbstractContextManager[Sql]:
        """One transaction, committed on normal exit and rolled back on an exception; yields ``sql(text, params)``.

        Wraps the driver's errors in StoreError (StoreUnavailable when the database cannot be reached).
        """

    @abstractmethod
    def close(self) -> None:
        """Close the connection; idempotent."""

    @contextmanager
    def _tx(self, *, write: bool = True) -> Iterator[Sql]:
        with self._lock, self._transaction(write=write) as sql:
            yield sql

    def __enter__(self) -> CentralStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.display}>"

    # ------------------------------------------------------------------ schema

    def _schema(self) -> list[str]:
        blob, serial = self.BLOB, self.SERIAL_PK
        return [
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS kiosks ("
            " id TEXT PRIMARY KEY, public_key TEXT NOT NULL, added_at TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS packets ("
            " packet_id TEXT PRIMARY KEY, kiosk TEXT NOT NULL, seq BIGINT NOT NULL,"
            " created_at TEXT NOT NULL, received_at TEXT NOT NULL, bytes BIGINT NOT NULL,"
            f" sha256 TEXT NOT NULL, data {blob} NOT NULL,"
            " source TEXT NOT NULL CHECK (source IN ('mqtt', 'import')))",
            "CREATE INDEX IF NOT EXISTS packets_kiosk_seq ON packets (kiosk, seq)",
            # the same bytes quarantined again (a re-import, a re-send) update one row and count it
            "CREATE TABLE IF NOT EXISTS quarantine ("
            f" id {serial}, received_at TEXT NOT NULL, last_received_at TEXT NOT NULL,"
            " times BIGINT NOT NULL, kiosk_hint TEXT, reason TEXT NOT NULL, source TEXT,"
            f" bytes BIGINT NOT NULL, sha256 TEXT NOT NULL UNIQUE, data {blob} NOT NULL)",
            "CREATE TABLE IF NOT EXISTS kiosk_status ("
            " kiosk TEXT PRIMARY KEY, state TEXT NOT NULL, connection BIGINT,"
            " state_rank INTEGER NOT NULL, ts TEXT NOT NULL, doc TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS kiosk_health ("
            " kiosk TEXT PRIMARY KEY, ts TEXT NOT NULL, received_at TEXT NOT NULL, doc TEXT NOT NULL)",
        ]

    def _create_schema(self, sql: Sql) -> None:
        for statement in self._schema():
            sql(statement)
        sql(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?) ON CONFLICT DO NOTHING",
            [str(SCHEMA_VERSION)],
        )
        (found,) = sql("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if int(found) > SCHEMA_VERSION:
            raise StoreSchemaError(
                f"central store {self.display} has schema version {found}, newer than this "
                f"ektp-central knows ({SCHEMA_VERSION}); upgrade ektp-central"
            )

    def schema_version(self) -> int:
        with self._tx(write=False) as sql:
            (found,) = sql("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(found)

    # ------------------------------------------------------------------ kiosks

    def add_kiosk(self, kiosk_id: str, public_pem: bytes, *, replace: bool = False) -> bool:
        """Register a kiosk's Ed25519 public key; False when exactly that key was already registered.

        :raises StoreInputError: a bad kiosk id or not an Ed25519 public key in PEM
        :raises KioskAlreadyRegistered: another key is registered and ``replace`` is false
        """
        check_kiosk_id(kiosk_id)
        key = _parse_public_pem(public_pem)
        pem = key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        with self._tx() as sql:
            row = sql("SELECT public_key FROM kiosks WHERE id = ?", [kiosk_id]).fetchone()
            if row is not None and row[0] == pem:
                return False
            if row is not None and not replace:
                raise KioskAlreadyRegistered(kiosk_id)
            sql(
                "INSERT INTO kiosks (id, public_key, added_at) VALUES (?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET public_key = excluded.public_key, added_at = excluded.added_at",
                [kiosk_id, pem, utc_now()],
            )
        return True

    def kiosk_public_key(self, kiosk_id: str) -> Ed25519PublicKey | None:
        """The registered key of ``kiosk_id``, or None (read each time, so a new registration counts at once)."""
        with self._tx(write=False) as sql:
            row = sql("SELECT public_key FROM kiosks WHERE id = ?", [kiosk_id]).fetchone()
        if row is None:
            return None
        pem = row[0].encode()
        key = self._keys.get(pem)
        if key is None:
            key = self._keys[pem] = _parse_public_pem(pem)
        return key

    def kiosks(self) -> list[dict[str, Any]]:
        """Registered kiosks: ``kiosk``, ``fingerprint``, ``added_at``."""
        from wire.keys import key_fingerprint, raw_public

        with self._tx(write=False) as sql:
            rows = sql("SELECT id, public_key, added_at FROM kiosks ORDER BY id").fetchall()
        return [
            {
                "kiosk": kiosk,
                "fingerprint": key_fingerprint(raw_public(_parse_public_pem(pem.encode()))),
                "added_at": added_at,
            }
            for kiosk, pem, added_at in rows
        ]

    # ------------------------------------------------------------------ packets

    def store_packets(self, items: Sequence[tuple[PacketHeader, bytes, str]]) -> list[bool]:
        """Store verified packets ``(header, data, source)`` in one durable transaction (group commit).

        True for each newly stored packet, False for a packet id already stored (a
        duplicate; one with other bytes is also quarantined, see ``commit_packets``).
        :raises StoreInputError: an unknown source
        :raises StoreError: nothing of the batch is stored
        """
        return [outcome is StoreOutcome.STORED for outcome in self.commit_packets(items)]

    def commit_packets(self, items: Sequence[tuple[PacketHeader, bytes, str]]) -> list[StoreOutcome]:
        """As ``store_packets``, telling a duplicate (same bytes) from a conflict (other bytes, quarantined)."""
        for _, data, source in items:
            check_source(source)
            if not isinstance(data, bytes | bytearray | memoryview):
                raise StoreInputError(f"packet data must be bytes, not {type(data).__name__}")
        if not items:
            return []
        now = utc_now()
        outcomes: list[StoreOutcome | None] = [None] * len(items)
        # Rows are locked in packet id order (a stable sort keeps the first of a repeated id first), so
        # two consumers storing overlapping batches at once wait for each other instead of deadlocking.
        order = sorted(range(len(items)), key=lambda i: items[i][0].packet_id)
        with self._tx() as sql:
            for index in order:
                header, data, source = items[index]
                outcomes[index] = self._insert_packet(sql, header, bytes(data), source, now)
        return [o for o in outcomes if o is not None]

    def _insert_packet(
        self, sql: Sql, header: PacketHeader, raw: bytes, source: str, now: str
    ) -> StoreOutcome:
        digest = hashlib.sha256(raw).hexdigest()
        inserted = sql(
            "INSERT INTO packets (packet_id, kiosk, seq, created_at, received_at, bytes, sha256, data, source)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (packet_id) DO NOTHING",
            [
                header.packet_id,
                header.kiosk_id,
                header.seq,
                header.created_at,
                now,
                len(raw),
                digest,
                raw,
                source,
            ],
        ).rowcount
        if inserted == 1:
            return StoreOutcome.STORED
        (stored_digest,) = sql(
            "SELECT sha256 FROM packets WHERE packet_id = ?", [header.packet_id]
        ).fetchone()
        if stored_digest == digest:
            return StoreOutcome.DUPLICATE
        reason = (
            f"conflict: packet id {header.packet_id} (kiosk {header.kiosk_id}, seq {header.seq}) is already "
            "stored with other bytes; the first copy is kept, this one is quarantined"
        )
        log.warning("%s", reason)
        self._insert_quarantine(sql, raw, kiosk_hint=header.kiosk_id, reason=reason, source=source, now=now)
        return StoreOutcome.CONFLICT

    def packets(self, kiosk: str | None = None) -> list[dict[str, Any]]:
        """Stored packets (no data), by kiosk and seq: ``packet_id, kiosk, seq, created_at, received_at, bytes, source``."""
        query = "SELECT packet_id, kiosk, seq, created_at, received_at, bytes, source FROM packets"
        params: list[Any] = []
        if kiosk is not None:
            query += " WHERE kiosk = ?"
            params.append(kiosk)
        with self._tx(write=False) as sql:
            rows = sql(query + " ORDER BY kiosk, seq, packet_id", params).fetchall()
        names = ("packet_id", "kiosk", "seq", "created_at", "received_at", "bytes", "source")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def packet_data(self, packet_id: str) -> bytes | None:
        """The stored bytes of one packet, or None."""
        with self._tx(write=False) as sql:
            row = sql("SELECT data FROM packets WHERE packet_id = ?", [packet_id]).fetchone()
        return None if row is None else bytes(row[0])

    # ------------------------------------------------------------------ quarantine

    def quarantine(
        self, data: bytes, *, kiosk_hint: str | None, reason: str, source: str | None = None
    ) -> int:
        """Keep bytes that could not be stored as a packet, with the reason; returns the quarantine id.

        Idempotent by content: the same bytes again update their row (``times``, latest reason).
        """
        with self._tx() as sql:
            return self._insert_quarantine(
                sql, bytes(data), kiosk_hint=kiosk_hint, reason=reason, source=source, now=utc_now()
            )

    def _insert_quarantine(
        self, sql: Sql, data: bytes, *, kiosk_hint: str | None, reason: str, source: str | None, now: str
    ) -> int:
        row = sql(
            "INSERT INTO quarantine"
            " (received_at, last_received_at, times, kiosk_hint, reason, source, bytes, sha256, data)"
            " VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (sha256) DO UPDATE SET last_received_at = excluded.last_received_at,"
            " times = quarantine.times + 1, kiosk_hint = excluded.kiosk_hint, reason = excluded.reason,"
            " source = excluded.source"
            " RETURNING id",
            [now, now, kiosk_hint, reason, source, len(data), hashlib.sha256(data).hexdigest(), data],
        ).fetchall()
        return int(row[0][0])

    def quarantined(self, kiosk: str | None = None) -> list[dict[str, Any]]:
        """Quarantine rows (no data): ``id, received_at, last_received_at, times, kiosk_hint, reason, source, bytes``.

        The same bytes quarantined again count in ``times`` and carry the latest reason.
        """
        query = "SELECT id, received_at, last_received_at, times, kiosk_hint, reason, source, bytes FROM quarantine"
        params: list[Any] = []
        if kiosk is not None:
            query += " WHERE kiosk_hint = ?"
            params.append(kiosk)
        with self._tx(write=False) as sql:
            rows = sql(query + " ORDER BY id", params).fetchall()
        names = ("id", "received_at", "last_received_at", "times", "kiosk_hint", "reason", "source", "bytes")
        return [dict(zip(names, row, strict=True)) for row in rows]

    # ------------------------------------------------------------------ status and health

    def record_status(self, kiosk: str, doc: dict[str, Any]) -> bool:
        """Apply a kiosk's status document unless it is stale; returns whether it was applied.

        ``doc["state"]`` is "online" or "offline"; ``doc["connection"]``, the kiosk's
        per-connect counter, orders them: a document of a lower counter than the
        applied one is stale (a late Last Will), and within one connection offline
        follows online. A document without a counter is always applied.
        :raises StoreInputError: not a status document
        """
        check_kiosk_id(kiosk)
        state = doc.get("state") if isinstance(doc, dict) else None
        if state not in STATUS_RANK:
            raise StoreInputError(f"status of kiosk {kiosk}: state {state!r} is not 'online' or 'offline'")
        connection = doc.get("connection")
        if connection is not None and (not isinstance(connection, int) or isinstance(connection, bool)):
            raise StoreInputError(f"status of kiosk {kiosk}: connection {connection!r} is not a whole number")
        with self._tx() as sql:
            applied = sql(
                "INSERT INTO kiosk_status (kiosk, state, connection, state_rank, ts, doc) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (kiosk) DO UPDATE SET state = excluded.state, connection = excluded.connection,"
                " state_rank = excluded.state_rank, ts = excluded.ts, doc = excluded.doc"
                " WHERE excluded.connection IS NULL OR kiosk_status.connection IS NULL"
                " OR excluded.connection > kiosk_status.connection"
                " OR (excluded.connection = kiosk_status.connection AND excluded.state_rank >= kiosk_status.state_rank)",
                [kiosk, state, connection, STATUS_RANK[state], utc_now(), json.dumps(doc, sort_keys=True)],
            ).rowcount
        if not applied:
            log.info("stale status of kiosk %s ignored: %s (connection %s)", kiosk, state, connection)
        return bool(applied)

    def status(self, kiosk: str) -> dict[str, Any] | None:
        """The applied status of ``kiosk``: ``state, connection, ts`` (centre's time), or None."""
        with self._tx(write=False) as sql:
            row = sql("SELECT state, connection, ts FROM kiosk_status WHERE kiosk = ?", [kiosk]).fetchone()
        return None if row is None else {"state": row[0], "connection": row[1], "ts": row[2]}

    def record_health(self, kiosk: str, doc: dict[str, Any]) -> None:
        """Keep ``doc`` as the kiosk's latest health snapshot. :raises StoreInputError: not a JSON object"""
        check_kiosk_id(kiosk)
        if not isinstance(doc, dict):
            raise StoreInputError(f"health of kiosk {kiosk} is a {type(doc).__name__}, not a JSON object")
        now = utc_now()
        ts = doc.get("ts") if isinstance(doc.get("ts"), str) else now
        with self._tx() as sql:
            sql(
                "INSERT INTO kiosk_health (kiosk, ts, received_at, doc) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (kiosk) DO UPDATE SET ts = excluded.ts, received_at = excluded.received_at,"
                " doc = excluded.doc",
                [kiosk, ts, now, json.dumps(doc, sort_keys=True)],
            )

    def health(self, kiosk: str) -> dict[str, Any] | None:
        with self._tx(write=False) as sql:
            row = sql("SELECT doc FROM kiosk_health WHERE kiosk = ?", [kiosk]).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    # ------------------------------------------------------------------ fleet

    def fleet(self) -> list[FleetRow]:
        """One row per kiosk known from its key, status, health or packets (see central.fleet)."""
        with self._tx(write=False) as sql:
            registered = [r[0] for r in sql("SELECT id FROM kiosks").fetchall()]
            status = sql("SELECT kiosk, state, ts FROM kiosk_status").fetchall()
            health = sql("SELECT kiosk, ts, doc FROM kiosk_health").fetchall()
            counts = sql("SELECT kiosk, COUNT(*), MIN(seq), MAX(seq) FROM packets GROUP BY kiosk").fetchall()
            # gaps in each kiosk's seq, by a window over the (kiosk, seq) index: never all seqs in memory
            gaps = sql(
                "SELECT kiosk, prev + 1, seq - 1 FROM ("
                " SELECT kiosk, seq, LAG(seq) OVER (PARTITION BY kiosk ORDER BY seq) AS prev FROM packets"
                ") AS s WHERE seq - prev > 1 ORDER BY kiosk, seq"
            ).fetchall()
        return build_fleet(registered=registered, status=status, health=health, counts=counts, gaps=gaps)


def check_kiosk_id(kiosk_id: str) -> None:
    """:raises StoreInputError: not 1-64 characters of A-Z a-z 0-9 _ -"""
    if not isinstance(kiosk_id, str) or KIOSK_ID_RE.fullmatch(kiosk_id) is None:
        raise StoreInputError(
            f'kiosk id {kiosk_id!r} is invalid: expected 1-64 characters from A-Z a-z 0-9 _ - (e.g. "320715-01")'
        )


def check_source(source: str) -> None:
    if source not in SOURCES:
        raise StoreInputError(f"packet source {source!r} is not one of {', '.join(SOURCES)}")


def _parse_public_pem(pem: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise StoreInputError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise StoreInputError(f"a {type(key).__name__} is not a kiosk's Ed25519 public key")
    return key
