"""Helpers for the central store tests: a store URL per backend, kiosk keys and sealed packets.

PostgreSQL: the server named by $EKTP_TEST_PG (default postgresql://postgres@127.0.0.1:5432/test);
each test gets its own fresh schema, dropped afterwards. An unreachable server skips
those tests, unless $EKTP_REQUIRE_PG=1 (CI), which fails them.
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Iterator
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
