"""Helpers for the central store tests: a store URL per backend, kiosk keys and sealed packets,
and a database as schema 1 left it (for the migration).

PostgreSQL: the server named by $EKTP_TEST_PG (default postgresql://postgres@127.0.0.1:5432/test);
each test gets its own fresh schema, dropped afterwards. An unreachable server skips
those tests, unless $EKTP_REQUIRE_PG=1 (CI), which fails them.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.factories import small_record
from wire.keys import CentralPrivateKeys, create_central_keys
from wire.packet import SealedPacket, seal
from wire.record import EnrollmentRecord

PG_URL = os.environ.get("EKTP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def with_search_path(url: str, schema: str) -> str:
    """``url`` whose connections use ``schema`` first (libpq ``options=-csearch_path=...``)."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}', safe='')}"


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL at {PG_URL} is unreachable ({str(exc).strip()})"
        if os.environ.get("EKTP_REQUIRE_PG") == "1":
            pytest.fail(f"{message}, and EKTP_REQUIRE_PG=1 requires it")
        pytest.skip(message)


def store_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh store URL of ``backend``: a SQLite path in tmp_path, or a PostgreSQL schema of its own."""
    if backend == "sqlite":
        yield str(tmp_path / "central.db")
        return
    schema = f"test_{secrets.token_hex(6)}"
    with _admin() as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield with_search_path(PG_URL, schema)
    finally:
        with _admin() as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@functools.cache
def record() -> EnrollmentRecord:
    return small_record()


@dataclass
class Kiosk:
    """A kiosk's id and key, sealing packets for a centre."""

    kiosk_id: str
    key: Ed25519PrivateKey
    central: CentralPrivateKeys

    @property
    def public_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def seal(self, seq: int, **kwargs: object) -> SealedPacket:
        return seal(
            record(),
            kiosk_id=self.kiosk_id,
            seq=seq,
            kiosk_key=self.key,
            central_public=self.central.encryption.public_key(),
            clock_synced=True,
            **kwargs,  # type: ignore[arg-type]
        )


def central_keys(tmp_path: Path) -> CentralPrivateKeys:
    return create_central_keys(tmp_path / "central.key")


def kiosk(kiosk_id: str, central: CentralPrivateKeys) -> Kiosk:
    return Kiosk(kiosk_id, Ed25519PrivateKey.generate(), central)


# ----------------------------------------------------------------------------- schema 1, for migrations


def v1_schema(backend: str) -> list[str]:
    """The DDL of central store schema 1 (packets keyed by packet id alone), as that release wrote it."""
    blob = "BLOB" if backend == "sqlite" else "BYTEA"
    serial = "INTEGER PRIMARY KEY AUTOINCREMENT" if backend == "sqlite" else "BIGSERIAL PRIMARY KEY"
    return [
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE kiosks (id TEXT PRIMARY KEY, public_key TEXT NOT NULL, added_at TEXT NOT NULL)",
        "CREATE TABLE packets ("
        " packet_id TEXT PRIMARY KEY, kiosk TEXT NOT NULL, seq BIGINT NOT NULL,"
        " created_at TEXT NOT NULL, received_at TEXT NOT NULL, bytes BIGINT NOT NULL,"
        f" sha256 TEXT NOT NULL, data {blob} NOT NULL,"
        " source TEXT NOT NULL CHECK (source IN ('mqtt', 'import')))",
        "CREATE INDEX packets_kiosk_seq ON packets (kiosk, seq)",
        "CREATE TABLE quarantine ("
        f" id {serial}, received_at TEXT NOT NULL, last_received_at TEXT NOT NULL,"
        " times BIGINT NOT NULL, kiosk_hint TEXT, reason TEXT NOT NULL, source TEXT,"
        f" bytes BIGINT NOT NULL, sha256 TEXT NOT NULL UNIQUE, data {blob} NOT NULL)",
        "CREATE TABLE kiosk_status ("
        " kiosk TEXT PRIMARY KEY, state TEXT NOT NULL, connection BIGINT,"
        " state_rank INTEGER NOT NULL, ts TEXT NOT NULL, doc TEXT NOT NULL)",
        "CREATE TABLE kiosk_health ("
        " kiosk TEXT PRIMARY KEY, ts TEXT NOT NULL, received_at TEXT NOT NULL, doc TEXT NOT NULL)",
        "INSERT INTO meta (key, value) VALUES ('schema_version', '1')",
    ]


def run_sql(url: str, statements: list[tuple[str, Sequence[object]]]) -> None:
    """Run ``(sql with ? placeholders, params)`` on the database at ``url`` with its own driver, in one
    transaction, bypassing the store (to build a database as an older release left it)."""
    if url.startswith(("postgresql://", "postgres://")):
        with psycopg.connect(url, autocommit=False) as pg:
            for text, params in statements:
                pg.execute(text.replace("?", "%s"), params)
        return
    lite = sqlite3.connect(url)
    try:
        with lite:
            for text, params in statements:
                lite.execute(text, params)
    finally:
        lite.close()


def create_v1_store(url: str, backend: str, packets: list[SealedPacket]) -> None:
    """A schema 1 database at ``url`` holding ``packets`` (source import) and one quarantine row."""
    statements: list[tuple[str, Sequence[object]]] = [(ddl, ()) for ddl in v1_schema(backend)]
    for p in packets:
        statements.append(
            (
                "INSERT INTO packets (packet_id, kiosk, seq, created_at, received_at, bytes, sha256, data, source)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'import')",
                (
                    p.packet_id,
                    p.kiosk_id,
                    p.seq,
                    p.created_at,
                    "2026-01-02T03:04:05.000Z",
                    len(p.data),
                    hashlib.sha256(p.data).hexdigest(),
                    p.data,
                ),
            )
        )
    statements.append(
        (
            "INSERT INTO quarantine (received_at, last_received_at, times, kiosk_hint, reason, source, bytes,"
            " sha256, data) VALUES (?, ?, 1, NULL, 'bad_magic: garbage', 'import', 7, ?, ?)",
            (
                "2026-01-02T03:04:05.000Z",
                "2026-01-02T03:04:05.000Z",
                hashlib.sha256(b"garbage").hexdigest(),
                b"garbage",
            ),
        )
    )
    run_sql(url, statements)


def fetch_sql(url: str, text: str) -> list[tuple[object, ...]]:
    """The rows of one query on the database at ``url``, bypassing the store."""
    if url.startswith(("postgresql://", "postgres://")):
        with psycopg.connect(url) as pg:
            return [tuple(r) for r in pg.execute(text.encode()).fetchall()]
    lite = sqlite3.connect(url)
    try:
        return [tuple(r) for r in lite.execute(text).fetchall()]
    finally:
        lite.close()
