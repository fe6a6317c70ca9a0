"""The central store on PostgreSQL (psycopg 3): for a fleet, several consumers share one database.

The connection is in autocommit mode and every unit of work is an explicit transaction;
a commit is durable as the server's ``synchronous_commit`` makes it (on by default).
A broken connection is replaced at the next call. The schema (search_path) comes from
the URL, e.g. ``postgresql://ektp@db/ektp?options=-csearch_path%3Dcentral``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from central.store import CentralStore, Cursor, Sql, StoreError, StoreUnavailable, redact_url

CONNECT_TIMEOUT_S = 10
SCHEMA_LOCK_ID = 0x454B5450  # "EKTP": serialises schema creation between consumers starting together


class PostgresStore(CentralStore):
    BLOB = "BYTEA"
    SERIAL_PK = "BIGSERIAL PRIMARY KEY"
    FLOAT = "DOUBLE PRECISION"
    GREATEST = "GREATEST"

    def __init__(self, url: str) -> None:
        super().__init__(redact_url(url))
        self._url = url
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = False
        try:
            with self._tx() as sql:
                sql("SELECT pg_advisory_xact_lock(?)", [SCHEMA_LOCK_ID])
                self._create_schema(sql)
        except BaseException:
            self.close()
            raise

    def _migrate_packets_v1(self, sql: Sql) -> None:
        """Schema 1 -> 2 in place: PostgreSQL changes the primary key without copying the packets
        (one index build, in the opening transaction), where SQLite must rebuild the table."""
        (old_key,) = sql(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'packets'::regclass AND contype = 'p'"
        ).fetchone()
        sql(
            f'ALTER TABLE packets DROP CONSTRAINT "{old_key}",'
            " ADD CONSTRAINT packets_kiosk_packet_id PRIMARY KEY (kiosk, packet_id)"
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._closed:
            raise StoreError(f"central store {self.display} is closed")
        if self._conn is not None and (self._conn.closed or self._conn.broken):
            self._conn.close()
            self._conn = None
        if self._conn is None:
            try:
                self._conn = psycopg.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
            except psycopg.Error as exc:
                raise StoreUnavailable(
                    f"cannot connect to the central store {self.display}: {str(exc).strip()}"
                ) from exc
        return self._conn

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Sql]:
        conn = self._connection()

        def sql(text: str, params: Sequence[Any] = ()) -> Cursor:
            # the shared SQL uses "?" placeholders and no literal "?" or "%"
            return conn.execute(text.replace("?", "%s"), params)

        try:
            with conn.transaction():
                yield sql
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"central store {self.display}: {str(exc).strip()}") from exc
        except psycopg.Error as exc:
            raise StoreError(f"central store {self.display}: {str(exc).strip()}") from exc
