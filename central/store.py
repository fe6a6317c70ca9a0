"""The central store: registered kiosks, packets stored exactly once by (kiosk, packet id),
the chunks of packets still in transfer, the quarantine, and each kiosk's last status and
health with its bounded history (central.store_fleet). One interface, two backends: SQLite (a path; WAL, synchronous=FULL) and
PostgreSQL (a postgresql:// URL).

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
import itertools
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from central.kiosk_keys import (
    BEGINNING,
    KEYS_DDL,
    SELECT_KEYS,
    KioskKey,
    fingerprint_of,
    migrate_registered,
    pem_of,
    rows_to_keys,
)
from central.store_commands import CommandTables
from central.store_fleet import FleetTables
from wire.chunk import MAX_PACKET_BYTES as MAX_CHUNKED_PACKET
from wire.chunk import Chunk, covered_prefix
from wire.names import KIOSK_ID_RE

if TYPE_CHECKING:
    from wire.packet import PacketHeader

log = logging.getLogger(__name__)

# 2: packets keyed by (kiosk, packet_id); partial_chunks. 3: kiosk_keys, kiosk_counters, packets.synthetic.
# 4: health_steps, health_hours (the bounded health history).
# 5: commands, command_results (remote commands; a version 4 store gains the tables on open)
SCHEMA_VERSION = 5
SOURCES = ("mqtt", "import")
PG_URL_PREFIXES = ("postgresql://", "postgres://")
SHA256_HEX_LEN = 64
# per kiosk named (and for inputs naming none); [store] quarantine_cap_bytes sets it
QUARANTINE_CAP_BYTES = 256 * 1024 * 1024  # the same default as central.config
DROP_LOG_INTERVAL_S = 60.0  # a quarantine at its cap logs its drops at most this often per kiosk


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
    DUPLICATE = "duplicate"  # the same bytes were already stored under this kiosk and packet id
    CONFLICT = (
        "conflict"  # other bytes are stored under this kiosk and packet id: the first kept, these quarantined
    )


def utc_now() -> str:
    return utc_text(datetime.now(UTC))


def utc_text(when: datetime) -> str:
    """RFC 3339 UTC with milliseconds: the store's time format (ordered as text)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


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

    @property
    def description(self) -> Any: ...


class Sql(Protocol):
    def __call__(self, text: str, params: Sequence[Any] = (), /) -> Cursor: ...


class CentralStore(FleetTables, CommandTables, ABC):
    """The store's interface and its shared SQL; a backend supplies ``_transaction`` and DDL types."""

    # column types of the backend's DDL
    BLOB = "BLOB"
    SERIAL_PK = "INTEGER PRIMARY KEY AUTOINCREMENT"

    def __init__(self, display: str) -> None:
        self.display = display  # the store named in messages, without a password
        self._lock = threading.RLock()  # one connection, shared by the caller's threads one at a time
        self._keys: dict[bytes, Ed25519PublicKey] = {}
        self.quarantine_cap_bytes = QUARANTINE_CAP_BYTES
        self._drops_logged: dict[str, tuple[float, int]] = {}  # kiosk -> (last logged, drops since)

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

    def _packets_ddl(self, table: str) -> str:
        # the key is named, so a table rebuilt by a migration ends up exactly as a new one
        return (
            f"CREATE TABLE IF NOT EXISTS {table} ("
            " kiosk TEXT NOT NULL, packet_id TEXT NOT NULL, seq BIGINT NOT NULL,"
            " created_at TEXT NOT NULL, received_at TEXT NOT NULL, bytes BIGINT NOT NULL,"
            f" sha256 TEXT NOT NULL, data {self.BLOB} NOT NULL,"
            " source TEXT NOT NULL CHECK (source IN ('mqtt', 'import')),"
            " synthetic SMALLINT NOT NULL DEFAULT 0,"
            " CONSTRAINT packets_kiosk_packet_id PRIMARY KEY (kiosk, packet_id))"
        )

    def _schema(self) -> list[str]:
        blob, serial = self.BLOB, self.SERIAL_PK
        return [
            "CREATE TABLE IF NOT EXISTS kiosks ("
            " id TEXT PRIMARY KEY, public_key TEXT NOT NULL, added_at TEXT NOT NULL)",
            # every signing key a kiosk has had, with the times it holds for (central.kiosk_keys)
            KEYS_DDL,
            # what the centre counts per kiosk beside its tables: wasted work and what it refused to keep
            "CREATE TABLE IF NOT EXISTS kiosk_counters ("
            " kiosk TEXT PRIMARY KEY, duplicate_deliveries BIGINT NOT NULL DEFAULT 0,"
            " quarantine_dropped BIGINT NOT NULL DEFAULT 0, quarantine_dropped_bytes BIGINT NOT NULL DEFAULT 0)",
            self._packets_ddl("packets"),
            "CREATE INDEX IF NOT EXISTS packets_kiosk_seq ON packets (kiosk, seq)",
            # the chunks of a packet still in transfer, until it is whole (then ingested and dropped)
            "CREATE TABLE IF NOT EXISTS partial_chunks ("
            " kiosk TEXT NOT NULL, packet_id TEXT NOT NULL, sha256 TEXT NOT NULL,"
            " byte_offset BIGINT NOT NULL, bytes BIGINT NOT NULL, total BIGINT NOT NULL,"
            f" data {blob} NOT NULL, received_at TEXT NOT NULL,"
            " PRIMARY KEY (kiosk, packet_id, sha256, byte_offset))",
            # the same bytes quarantined again (a re-import, a re-send) update one row and count it
            "CREATE TABLE IF NOT EXISTS quarantine ("
            f" id {serial}, received_at TEXT NOT NULL, last_received_at TEXT NOT NULL,"
            " times BIGINT NOT NULL, kiosk_hint TEXT, reason TEXT NOT NULL, source TEXT,"
            f" bytes BIGINT NOT NULL, sha256 TEXT NOT NULL UNIQUE, data {blob} NOT NULL)",
            "CREATE INDEX IF NOT EXISTS quarantine_kiosk ON quarantine (kiosk_hint)",
            # kiosk_status, kiosk_health and the health history (central.store_fleet)
            *self._fleet_schema(),
            # remote commands sent to kiosks and their signed results (central.store_commands)
            *self._command_schema(),
        ]

    def _create_schema(self, sql: Sql) -> None:
        """Create the tables, or bring an older schema up to this version (in the caller's transaction)."""
        sql("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = sql("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        try:
            found = None if row is None else int(row[0])
        except ValueError:
            raise StoreSchemaError(
                f"central store {self.display} has schema version {row[0]!r}, not a number: "
                "not an ektp-central store, or a damaged one"
            ) from None
        if found is not None and found > SCHEMA_VERSION:
            raise StoreSchemaError(
                f"central store {self.display} has schema version {found}, newer than this "
                f"ektp-central knows ({SCHEMA_VERSION}); upgrade ektp-central"
            )
        if found is not None and found < SCHEMA_VERSION:
            log.info("central store %s: schema %d -> %d", self.display, found, SCHEMA_VERSION)
            if found < 2:
                self._migrate_packets_v1(sql)
            if found < 3:  # (SQLite's rebuild of schema 1 has the column already)
                columns = {d[0] for d in sql("SELECT * FROM packets LIMIT 0").description}
                if "synthetic" not in columns:
                    sql("ALTER TABLE packets ADD COLUMN synthetic SMALLINT NOT NULL DEFAULT 0")
        for statement in self._schema():
            sql(statement)
        if found is not None and found < 3:
            migrate_registered(sql, _parse_public_pem)
        sql(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [str(SCHEMA_VERSION)],
        )

    def _migrate_packets_v1(self, sql: Sql) -> None:
        """Schema 1 -> 2: ``packets`` keyed by (kiosk, packet_id) instead of packet_id alone.

        SQLite cannot change a primary key in place: the table is rebuilt (a copy, the old
        table dropped, the copy renamed), inside the opening transaction. The index on
        (kiosk, seq) goes with the old table and ``_schema`` creates it again.
        """
        columns = "kiosk, packet_id, seq, created_at, received_at, bytes, sha256, data, source"
        sql(self._packets_ddl("packets_v2"))  # synthetic takes its default: schema 1 had no mark
        sql(f"INSERT INTO packets_v2 ({columns}) SELECT {columns} FROM packets")
        sql("DROP TABLE packets")
        sql("ALTER TABLE packets_v2 RENAME TO packets")

    def schema_version(self) -> int:
        with self._tx(write=False) as sql:
            (found,) = sql("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(found)

    # ------------------------------------------------------------------ kiosks

    def add_kiosk(self, kiosk_id: str, public_pem: bytes, *, replace: bool = False) -> bool:
        """Register a kiosk's Ed25519 public key; False when exactly that key was already registered.

        ``replace``: a kiosk registered with another key gets this one as a new key from now
        on (``add_kiosk_key``); its packets signed before still verify with the old one.
        :raises StoreInputError: a bad kiosk id or not an Ed25519 public key in PEM
        :raises KioskAlreadyRegistered: another key is registered and ``replace`` is false
        """
        check_kiosk_id(kiosk_id)
        key = _parse_public_pem(public_pem)
        pem = pem_of(key)
        with self._tx() as sql:
            row = sql("SELECT public_key FROM kiosks WHERE id = ?", [kiosk_id]).fetchone()
            if row is None:
                now = utc_now()
                sql("INSERT INTO kiosks (id, public_key, added_at) VALUES (?, ?, ?)", [kiosk_id, pem, now])
                self._insert_key(sql, kiosk_id, key, BEGINNING, now)
                return True
            if row[0] == pem:
                return False
            if not replace:
                raise KioskAlreadyRegistered(kiosk_id)
        return self.add_kiosk_key(kiosk_id, public_pem)

    def add_kiosk_key(self, kiosk_id: str, public_pem: bytes, *, valid_from: str | None = None) -> bool:
        """A registered kiosk's new signing key, valid from ``valid_from`` (default now); False if known.

        The keys before it stay, valid until that moment. ``valid_from`` is RFC 3339 UTC
        and must be later than the start of the kiosk's current key.
        :raises StoreInputError: a bad id, key or time, an unregistered kiosk, a time not after the current key's
        """
        check_kiosk_id(kiosk_id)
        key = _parse_public_pem(public_pem)
        start = utc_now() if valid_from is None else check_time(valid_from, "valid_from")
        fingerprint = fingerprint_of(key)
        with self._tx() as sql:
            if sql("SELECT 1 FROM kiosks WHERE id = ?", [kiosk_id]).fetchone() is None:
                raise StoreInputError(
                    f"kiosk {kiosk_id} is not registered: register its first key with "
                    f"`ektp-central kiosk add {kiosk_id} --public-key FILE`"
                )
            known = sql(
                "SELECT 1 FROM kiosk_keys WHERE kiosk = ? AND fingerprint = ?", [kiosk_id, fingerprint]
            ).fetchone()
            if known is not None:
                return False
            (latest,) = sql("SELECT MAX(valid_from) FROM kiosk_keys WHERE kiosk = ?", [kiosk_id]).fetchone()
            if latest is not None and start <= latest:
                raise StoreInputError(
                    f"kiosk {kiosk_id}: a new key must start after its current key's start ({latest}); "
                    f"{start} is not later"
                )
            sql(
                "UPDATE kiosk_keys SET valid_until = ? WHERE kiosk = ? AND valid_until IS NULL",
                [start, kiosk_id],
            )
            self._insert_key(sql, kiosk_id, key, start, utc_now())
            sql("UPDATE kiosks SET public_key = ? WHERE id = ?", [pem_of(key), kiosk_id])
        log.info("kiosk %s: new signing key %s from %s", kiosk_id, fingerprint, start)
        return True

    def revoke_kiosk_key(self, kiosk_id: str, fingerprint: str, *, since: str | None = None) -> KioskKey:
        """Refuse packets signed by this key that claim to be made at or after ``since`` (default now).

        Revoking again keeps the earlier moment. Stored packets stay stored.
        :raises StoreInputError: no such key of this kiosk, or a bad time
        """
        check_kiosk_id(kiosk_id)
        moment = utc_now() if since is None else check_time(since, "since")
        with self._tx() as sql:
            updated = sql(
                "UPDATE kiosk_keys SET revoked_since = ? WHERE kiosk = ? AND fingerprint = ?"
                " AND (revoked_since IS NULL OR revoked_since > ?)",
                [moment, kiosk_id, fingerprint, moment],
            ).rowcount
            rows = sql(SELECT_KEYS, [kiosk_id]).fetchall()
        found = [k for k in rows_to_keys(rows, self._parse_cached) if k.fingerprint == fingerprint]
        if not found:
            known = ", ".join(k.fingerprint for k in rows_to_keys(rows, self._parse_cached)) or "none"
            raise StoreInputError(
                f"kiosk {kiosk_id} has no key {fingerprint} (its keys: {known}); "
                f"`ektp-central kiosk keys {kiosk_id}` lists them"
            )
        if updated:
            log.warning("kiosk %s: key %s revoked since %s", kiosk_id, fingerprint, found[0].revoked_since)
        return found[0]

    def kiosk_keys(self, kiosk_id: str) -> list[KioskKey]:
        """Every signing key of ``kiosk_id``, oldest first (empty if it is not registered)."""
        with self._tx(write=False) as sql:
            rows = sql(SELECT_KEYS, [kiosk_id]).fetchall()
        return rows_to_keys(rows, self._parse_cached)

    def _insert_key(self, sql: Sql, kiosk_id: str, key: Ed25519PublicKey, valid_from: str, now: str) -> None:
        sql(
            "INSERT INTO kiosk_keys (kiosk, fingerprint, public_key, valid_from, valid_until, revoked_since,"
            " added_at) VALUES (?, ?, ?, ?, NULL, NULL, ?)",
            [kiosk_id, fingerprint_of(key), pem_of(key), valid_from, now],
        )

    def _parse_cached(self, pem: bytes) -> Ed25519PublicKey:
        key = self._keys.get(pem)
        if key is None:
            key = self._keys[pem] = _parse_public_pem(pem)
        return key

    def kiosk_public_key(self, kiosk_id: str) -> Ed25519PublicKey | None:
        """The current key of ``kiosk_id``, or None (read each time, so a new registration counts at once)."""
        with self._tx(write=False) as sql:
            row = sql("SELECT public_key FROM kiosks WHERE id = ?", [kiosk_id]).fetchone()
        return None if row is None else self._parse_cached(row[0].encode())

    def kiosks(self) -> list[dict[str, Any]]:
        """Registered kiosks: ``kiosk``, ``fingerprint`` (of the current key), ``added_at``, ``keys`` (how many)."""
        with self._tx(write=False) as sql:
            rows = sql("SELECT id, public_key, added_at FROM kiosks ORDER BY id").fetchall()
            counts = dict(sql("SELECT kiosk, COUNT(*) FROM kiosk_keys GROUP BY kiosk").fetchall())
        return [
            {
                "kiosk": kiosk,
                "fingerprint": fingerprint_of(self._parse_cached(pem.encode())),
                "added_at": added_at,
                "keys": int(counts.get(kiosk, 1)),
            }
            for kiosk, pem, added_at in rows
        ]

    # ------------------------------------------------------------------ packets

    def store_packets(self, items: Sequence[tuple[PacketHeader, bytes, str]]) -> list[bool]:
        """Store verified packets ``(header, data, source)`` in one durable transaction (group commit).

        True for each newly stored packet, False for one whose kiosk and packet id are
        already stored (a duplicate; one with other bytes is also quarantined, see
        ``commit_packets``).
        :raises StoreInputError: an unknown source
        :raises StoreError: nothing of the batch is stored
        """
        return [outcome is StoreOutcome.STORED for outcome in self.commit_packets(items)]

    def commit_packets(
        self,
        items: Sequence[tuple[PacketHeader, bytes, str]],
        *,
        quarantine_conflicts: bool = True,
        digests: Sequence[str] | None = None,
    ) -> list[StoreOutcome]:
        """As ``store_packets``, telling a duplicate (same bytes) from a conflict (other bytes).

        A packet is identified by its kiosk and packet id: another kiosk's packet with the
        same packet id is another packet. A conflict keeps the first copy and puts the new
        bytes in quarantine (unless ``quarantine_conflicts`` is false: a retry of bytes
        that are in quarantine already). ``digests``: the hex SHA-256 of each item's bytes,
        when the caller computed them already (else they are computed here).
        """
        for _, data, source in items:
            check_source(source)
            if not isinstance(data, bytes | bytearray | memoryview):
                raise StoreInputError(f"packet data must be bytes, not {type(data).__name__}")
        if not items:
            return []
        now = utc_now()
        outcomes: list[StoreOutcome | None] = [None] * len(items)
        # Rows are locked in key order (a stable sort keeps the first of a repeated key first), so
        # two consumers storing overlapping batches at once wait for each other instead of deadlocking.
        order = sorted(range(len(items)), key=lambda i: (items[i][0].kiosk_id, items[i][0].packet_id))
        with self._tx() as sql:
            for index in order:
                header, data, source = items[index]
                raw = bytes(data)
                digest = digests[index] if digests is not None else hashlib.sha256(raw).hexdigest()
                outcomes[index] = self._insert_packet(
                    sql, header, raw, digest, source, now, quarantine_conflicts
                )
        return [o for o in outcomes if o is not None]

    def _insert_packet(
        self,
        sql: Sql,
        header: PacketHeader,
        raw: bytes,
        digest: str,
        source: str,
        now: str,
        quarantine_conflicts: bool,
    ) -> StoreOutcome:
        inserted = sql(
            "INSERT INTO packets"
            " (kiosk, packet_id, seq, created_at, received_at, bytes, sha256, data, source, synthetic)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kiosk, packet_id) DO NOTHING",
            [
                header.kiosk_id,
                header.packet_id,
                header.seq,
                header.created_at,
                now,
                len(raw),
                digest,
                raw,
                source,
                int(header.synthetic),
            ],
        ).rowcount
        if inserted == 1:
            return StoreOutcome.STORED
        (stored_digest,) = sql(
            "SELECT sha256 FROM packets WHERE kiosk = ? AND packet_id = ?",
            [header.kiosk_id, header.packet_id],
        ).fetchone()
        if stored_digest == digest:
            self._count_duplicates(sql, header.kiosk_id, 1)
            return StoreOutcome.DUPLICATE
        if quarantine_conflicts:
            reason = conflict_reason(header.kiosk_id, header.packet_id, header.seq)
            log.warning("%s", reason)
            self._insert_quarantine(
                sql, raw, kiosk_hint=header.kiosk_id, reason=reason, source=source, now=now
            )
        return StoreOutcome.CONFLICT

    def count_duplicate_deliveries(self, kiosk: str, n: int) -> None:
        """Count ``n`` deliveries of packets ``kiosk`` had already delivered (wasted work, shown in the fleet)."""
        if n > 0:
            with self._tx() as sql:
                self._count_duplicates(sql, kiosk, n)

    def _count_duplicates(self, sql: Sql, kiosk: str, n: int) -> None:
        sql(
            "INSERT INTO kiosk_counters (kiosk, duplicate_deliveries) VALUES (?, ?)"
            " ON CONFLICT (kiosk) DO UPDATE SET"
            " duplicate_deliveries = kiosk_counters.duplicate_deliveries + excluded.duplicate_deliveries",
            [kiosk, n],
        )

    def stored_sha256(self, kiosk: str, packet_id: str) -> str | None:
        """The hex SHA-256 of the bytes stored for this kiosk and packet id, or None if none are."""
        with self._tx(write=False) as sql:
            row = sql(
                "SELECT sha256 FROM packets WHERE kiosk = ? AND packet_id = ?", [kiosk, packet_id]
            ).fetchone()
        return None if row is None else str(row[0])

    def packets(
        self, kiosk: str | None = None, *, since: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Stored packets (no data), by kiosk and seq: ``packet_id, kiosk, seq, created_at, received_at, bytes,
        source, synthetic`` (a simulated kit's test resident, never a real one). ``since`` keeps those
        received (centre's clock) at or after an RFC 3339 time; ``limit`` the newest ``limit`` received.
        :raises StoreInputError: ``since`` is not an RFC 3339 time, or ``limit`` below 1
        """
        query = "SELECT packet_id, kiosk, seq, created_at, received_at, bytes, source, synthetic FROM packets"
        conditions: list[str] = []
        params: list[Any] = []
        if kiosk is not None:
            conditions.append("kiosk = ?")
            params.append(kiosk)
        if since is not None:
            conditions.append("received_at >= ?")
            params.append(check_time(since, "since"))
        if conditions:
            query += " WHERE " + " AND ".join(conditions)
        if limit is not None:
            if limit < 1:
                raise StoreInputError(f"limit {limit} is not a number of packets (1 or more)")
            query += " ORDER BY received_at DESC, seq DESC, kiosk LIMIT ?"
            params.append(limit)
        with self._tx(write=False) as sql:
            rows = sql(query, params).fetchall()
        rows.sort(key=lambda r: (r[1], r[2], r[0]))
        names = ("packet_id", "kiosk", "seq", "created_at", "received_at", "bytes", "source")
        return [{**dict(zip(names, row[:-1], strict=True)), "synthetic": bool(row[-1])} for row in rows]

    def packet_data(self, kiosk: str, packet_id: str) -> bytes | None:
        """The stored bytes of one packet of ``kiosk``, or None."""
        with self._tx(write=False) as sql:
            row = sql(
                "SELECT data FROM packets WHERE kiosk = ? AND packet_id = ?", [kiosk, packet_id]
            ).fetchone()
        return None if row is None else bytes(row[0])

    # ------------------------------------------------------------------ partial transfers

    def add_chunks(self, items: Sequence[tuple[str, Chunk]]) -> list[int]:
        """Keep chunks ``(kiosk, chunk)`` of packets in transfer, all in one durable transaction.

        Returns, for each item, how many bytes from the start of its packet (its kiosk,
        packet id and SHA-256) the centre holds without a gap once the batch is committed.
        A chunk held already at the same offset is a no-op unless the new one is longer
        (it then replaces it); a probe (no data) only asks. A chunk whose total differs
        from the one its transfer already has is not kept (a total is fixed by the
        SHA-256; the transfer's own chunks decide). Nothing here is authenticated: the
        caller checks the assembled packet.
        :raises StoreInputError: a bad kiosk id, SHA-256 or span
        """
        for kiosk, chunk in items:
            check_kiosk_id(kiosk)
            check_chunk(chunk)
        if not items:
            return []
        now = utc_now()
        keys = [(kiosk, chunk.packet_id, chunk.sha256) for kiosk, chunk in items]
        # rows locked in key order, as in commit_packets: concurrent batches cannot deadlock
        order = sorted(range(len(items)), key=lambda i: (keys[i], items[i][1].offset))
        totals: dict[tuple[str, str, str], int | None] = {}
        with self._tx() as sql:
            for index in order:
                key, chunk = keys[index], items[index][1]
                if key not in totals:
                    row = sql(
                        "SELECT total FROM partial_chunks WHERE kiosk = ? AND packet_id = ? AND sha256 = ? LIMIT 1",
                        key,
                    ).fetchone()
                    totals[key] = None if row is None else int(row[0])
                if chunk.probe or not chunk.data:
                    continue
                if totals[key] not in (None, chunk.total):
                    log.warning(
                        "chunk of packet %s (kiosk %s) declares a %d-byte packet, its transfer %s: not kept",
                        chunk.packet_id,
                        key[0],
                        chunk.total,
                        totals[key],
                    )
                    continue
                sql(
                    "INSERT INTO partial_chunks"
                    " (kiosk, packet_id, sha256, byte_offset, bytes, total, data, received_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (kiosk, packet_id, sha256, byte_offset) DO UPDATE SET"
                    " bytes = excluded.bytes, data = excluded.data, received_at = excluded.received_at"
                    " WHERE excluded.bytes > partial_chunks.bytes",
                    [*key, chunk.offset, len(chunk.data), chunk.total, bytes(chunk.data), now],
                )
                totals[key] = chunk.total
            have = {key: self._prefix(sql, key) for key in totals}
        return [have[key] for key in keys]

    def _prefix(self, sql: Sql, key: Sequence[str]) -> int:
        """Bytes held from the start of one transfer, from its (offset, length) rows: never its data."""
        spans = sql(
            "SELECT byte_offset, bytes FROM partial_chunks WHERE kiosk = ? AND packet_id = ? AND sha256 = ?"
            " ORDER BY byte_offset",
            list(key),
        ).fetchall()
        return covered_prefix([(int(o), int(n)) for o, n in spans])

    def partial_have(self, kiosk: str, packet_id: str, sha256: str) -> int:
        """Bytes of this transfer held from its start without a gap (0 when nothing is held)."""
        with self._tx(write=False) as sql:
            return self._prefix(sql, (kiosk, packet_id, sha256))

    def assemble_partial(self, kiosk: str, packet_id: str, sha256: str) -> bytes | None:
        """The whole packet when its chunks cover 0 .. total without a gap (overlaps taken in offset
        order), else None. The caller checks its SHA-256 and authenticates it."""
        key = [kiosk, packet_id, sha256]
        with self._tx(write=False) as sql:
            row = sql(
                "SELECT MAX(total) FROM partial_chunks WHERE kiosk = ? AND packet_id = ? AND sha256 = ?", key
            ).fetchone()
            if row is None or row[0] is None:
                return None
            total = int(row[0])
            if self._prefix(sql, key) < total:
                return None
            packet = bytearray()
            cursor = sql(
                "SELECT byte_offset, data FROM partial_chunks WHERE kiosk = ? AND packet_id = ? AND sha256 = ?"
                " ORDER BY byte_offset",
                key,
            )
            while (chunk := cursor.fetchone()) is not None:  # one chunk at a time beside the packet
                offset, data = int(chunk[0]), chunk[1]
                if offset > len(packet):
                    return None
                packet += data[len(packet) - offset :]
        return bytes(packet[:total]) if len(packet) >= total else None

    def drop_partial(self, kiosk: str, packet_id: str, sha256: str) -> None:
        """Forget one transfer's chunks (the packet is stored, or its bytes did not authenticate)."""
        with self._tx() as sql:
            sql(
                "DELETE FROM partial_chunks WHERE kiosk = ? AND packet_id = ? AND sha256 = ?",
                [kiosk, packet_id, sha256],
            )

    def expire_partials(self, older_than_s: float) -> int:
        """Drop the transfers whose newest chunk is older than ``older_than_s``; returns how many.

        :raises StoreInputError: not a number of seconds >= 0
        """
        if (
            not isinstance(older_than_s, int | float)
            or isinstance(older_than_s, bool)
            or not math.isfinite(older_than_s)
            or older_than_s < 0
        ):
            raise StoreInputError(f"partial expiry {older_than_s!r} is not a number of seconds >= 0")
        cutoff = utc_text(datetime.now(UTC) - timedelta(seconds=older_than_s))
        with self._tx() as sql:
            dropped = sql(
                "DELETE FROM partial_chunks WHERE (kiosk, packet_id, sha256) IN ("
                " SELECT kiosk, packet_id, sha256 FROM partial_chunks GROUP BY kiosk, packet_id, sha256"
                " HAVING MAX(received_at) < ?) RETURNING kiosk, packet_id, sha256",
                [cutoff],
            ).fetchall()
        transfers = {tuple(row) for row in dropped}
        if transfers:
            log.info("dropped %d partial transfers idle for over %.0f s", len(transfers), older_than_s)
        return len(transfers)

    def partials(self, kiosk: str | None = None) -> list[dict[str, Any]]:
        """Transfers in progress (no data): ``kiosk, packet_id, sha256, total, have, chunks,
        first_received_at, last_received_at``, by kiosk and packet id."""
        query = "SELECT kiosk, packet_id, sha256, byte_offset, bytes, total, received_at FROM partial_chunks"
        params: list[Any] = []
        if kiosk is not None:
            query += " WHERE kiosk = ?"
            params.append(kiosk)
        with self._tx(write=False) as sql:
            rows = sql(query + " ORDER BY kiosk, packet_id, sha256, byte_offset", params).fetchall()
        return [_partial_row(key, list(group)) for key, group in itertools.groupby(rows, key=lambda r: r[:3])]

    # ------------------------------------------------------------------ quarantine

    def quarantine(
        self, data: bytes, *, kiosk_hint: str | None, reason: str, source: str | None = None
    ) -> int | None:
        """Keep bytes that could not be stored as a packet, with the reason; returns the quarantine id.

        Idempotent by content: the same bytes again update their row (``times``, latest reason).
        Bounded: when the rows naming ``kiosk_hint`` (or naming none) already hold
        ``quarantine_cap_bytes``, new bytes are not kept, only counted (``quarantine_dropped``
        in the fleet), and None is returned.
        """
        with self._tx() as sql:
            return self._insert_quarantine(
                sql, bytes(data), kiosk_hint=kiosk_hint, reason=reason, source=source, now=utc_now()
            )

    def _insert_quarantine(
        self, sql: Sql, data: bytes, *, kiosk_hint: str | None, reason: str, source: str | None, now: str
    ) -> int | None:
        digest = hashlib.sha256(data).hexdigest()
        known = sql("SELECT 1 FROM quarantine WHERE sha256 = ?", [digest]).fetchone() is not None
        if not known:
            where = "kiosk_hint IS NULL" if kiosk_hint is None else "kiosk_hint = ?"
            (held,) = sql(
                f"SELECT COALESCE(SUM(bytes), 0) FROM quarantine WHERE {where}",
                [] if kiosk_hint is None else [kiosk_hint],
            ).fetchone()
            if int(held) + len(data) > self.quarantine_cap_bytes:
                self._count_dropped(sql, kiosk_hint, len(data), int(held), reason)
                return None
        row = sql(
            "INSERT INTO quarantine"
            " (received_at, last_received_at, times, kiosk_hint, reason, source, bytes, sha256, data)"
            " VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (sha256) DO UPDATE SET last_received_at = excluded.last_received_at,"
            " times = quarantine.times + 1, kiosk_hint = excluded.kiosk_hint, reason = excluded.reason,"
            " source = excluded.source"
            " RETURNING id",
            [now, now, kiosk_hint, reason, source, len(data), digest, data],
        ).fetchall()
        return int(row[0][0])

    def _count_dropped(self, sql: Sql, kiosk_hint: str | None, size: int, held: int, reason: str) -> None:
        """Count an input not kept because its kiosk's quarantine is full; log it now and then."""
        kiosk = kiosk_hint or ""  # inputs that name no kiosk count under "" (not a fleet row)
        sql(
            "INSERT INTO kiosk_counters (kiosk, quarantine_dropped, quarantine_dropped_bytes) VALUES (?, 1, ?)"
            " ON CONFLICT (kiosk) DO UPDATE SET quarantine_dropped = kiosk_counters.quarantine_dropped + 1,"
            " quarantine_dropped_bytes = kiosk_counters.quarantine_dropped_bytes + excluded.quarantine_dropped_bytes",
            [kiosk, size],
        )
        last, since = self._drops_logged.get(kiosk, (0.0, 0))
        now = time.monotonic()
        if now - last < DROP_LOG_INTERVAL_S:
            self._drops_logged[kiosk] = (last, since + 1)
            return
        self._drops_logged[kiosk] = (now, 0)
        log.warning(
            "quarantine of %s is full (%d of %d bytes): a %d-byte input not kept (%s)%s; "
            "look at `ektp-central quarantine --kiosk %s`, retry or delete what is there",
            f"kiosk {kiosk}" if kiosk else "inputs naming no kiosk",
            held,
            self.quarantine_cap_bytes,
            size,
            reason.split(":", 1)[0],
            f"; {since} more not kept since the last message" if since else "",
            kiosk or "ID",
        )

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

    def quarantine_ids(self) -> list[int]:
        """Every quarantine id, oldest first."""
        with self._tx(write=False) as sql:
            return [int(r[0]) for r in sql("SELECT id FROM quarantine ORDER BY id").fetchall()]

    def quarantined_data(self, ids: Sequence[int]) -> list[tuple[int, str | None, bytes]]:
        """``(id, source, data)`` of the quarantine rows among ``ids`` that exist, by id."""
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return []
        marks = ", ".join("?" for _ in wanted)
        with self._tx(write=False) as sql:
            rows = sql(
                f"SELECT id, source, data FROM quarantine WHERE id IN ({marks}) ORDER BY id", wanted
            ).fetchall()
        return [(int(i), source, bytes(data)) for i, source, data in rows]

    def settle_quarantined(self, released: Sequence[int], kept: Sequence[tuple[int, str]]) -> None:
        """After a retry, in one transaction: delete the ``released`` rows (their packets are stored)
        and give each ``kept`` row ``(id, reason)`` the reason of this attempt."""
        with self._tx() as sql:
            for qid in sorted(released):
                sql("DELETE FROM quarantine WHERE id = ?", [qid])
            for qid, reason in sorted(kept):
                sql("UPDATE quarantine SET reason = ? WHERE id = ?", [reason, qid])


def check_kiosk_id(kiosk_id: str) -> None:
    """:raises StoreInputError: not 1-64 characters of A-Z a-z 0-9 _ -"""
    if not isinstance(kiosk_id, str) or KIOSK_ID_RE.fullmatch(kiosk_id) is None:
        raise StoreInputError(
            f'kiosk id {kiosk_id!r} is invalid: expected 1-64 characters from A-Z a-z 0-9 _ - (e.g. "320715-01")'
        )


def check_chunk(chunk: Chunk) -> None:
    """:raises StoreInputError: not a chunk, or its fields do not add up"""
    if not isinstance(chunk, Chunk):
        raise StoreInputError(f"expected a wire.chunk.Chunk, not {type(chunk).__name__}")
    sha = chunk.sha256
    if len(sha) != SHA256_HEX_LEN or sha.strip("0123456789abcdef"):
        raise StoreInputError(f"chunk sha256 {sha[:80]!r} is not 64 lowercase hex digits")
    if not 1 <= chunk.total <= MAX_CHUNKED_PACKET or chunk.offset < 0 or chunk.end > chunk.total:
        raise StoreInputError(
            f"chunk of {len(chunk.data)} bytes at offset {chunk.offset} does not fit a {chunk.total}-byte packet"
        )


def conflict_reason(kiosk: str, packet_id: str, seq: int | None) -> str:
    at = "" if seq is None else f", seq {seq}"
    return (
        f"conflict: packet {packet_id} of kiosk {kiosk}{at} is already stored with other bytes; "
        "the first copy is kept, this one is quarantined"
    )


def _partial_row(key: Sequence[Any], rows: list[Any]) -> dict[str, Any]:
    """One transfer's summary from its chunk rows (kiosk, packet_id, sha256, offset, bytes, total, received_at)."""
    received = [r[6] for r in rows]
    return {
        "kiosk": key[0],
        "packet_id": key[1],
        "sha256": key[2],
        "total": int(rows[0][5]),
        "have": covered_prefix([(int(r[3]), int(r[4])) for r in rows]),
        "chunks": len(rows),
        "first_received_at": min(received),
        "last_received_at": max(received),
    }


def check_time(text: str, what: str) -> str:
    """An RFC 3339 time as the store's UTC text. :raises StoreInputError: not a time with a zone"""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        when = None
    if when is None or when.tzinfo is None:
        raise StoreInputError(
            f"{what} {text!r} is not an RFC 3339 time with a zone (e.g. 2026-12-01T17:00:00Z)"
        )
    return utc_text(when)


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
