"""Each kiosk's signing keys over time: which key may have signed a packet made at a given moment.

A kiosk's first key is valid from the beginning. ``kiosk key add`` (a rotation) starts a new
key at a moment (by default now) and closes the validity of the keys before it there, so
packets the kiosk signed before it rotated still verify. ``kiosk key revoke`` marks a key
revoked since a moment (the earliest suspected compromise): no packet it signed that claims
to be made at or after that moment is accepted; earlier ones stay valid.

Which key verifies a packet: the key whose validity holds the packet's creation time first,
then the kiosk's other keys not revoked at that time (a kiosk whose clock was wrong, or one
that rotated before the centre registered its new key). A packet that only a key revoked
at its creation time verifies is refused as ``revoked_key``, never stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from wire.keys import key_fingerprint, raw_public

if TYPE_CHECKING:
    from central.store import Sql

BEGINNING = "1970-01-01T00:00:00.000Z"  # the validity start of a kiosk's first key (times order as text)

KEYS_DDL = (
    "CREATE TABLE IF NOT EXISTS kiosk_keys ("
    " kiosk TEXT NOT NULL, fingerprint TEXT NOT NULL, public_key TEXT NOT NULL,"
    " valid_from TEXT NOT NULL, valid_until TEXT, revoked_since TEXT, added_at TEXT NOT NULL,"
    " PRIMARY KEY (kiosk, fingerprint))"
)


@dataclass(frozen=True, slots=True)
class KioskKey:
    """One signing key of a kiosk and the times it holds for (RFC 3339 UTC text; None: open)."""

    kiosk: str
    fingerprint: str
    public_key: Ed25519PublicKey
    valid_from: str
    valid_until: str | None
    revoked_since: str | None
    added_at: str

    def covers(self, created_at: str) -> bool:
        """Whether this key was the kiosk's key when a packet made at ``created_at`` was signed."""
        return self.valid_from <= created_at and (self.valid_until is None or created_at < self.valid_until)

    def revoked_at(self, created_at: str) -> bool:
        return self.revoked_since is not None and created_at >= self.revoked_since

    def to_json(self) -> dict[str, Any]:
        return {
            "kiosk": self.kiosk,
            "fingerprint": self.fingerprint,
            "valid_from": self.valid_from,
            "valid_until": self.valid_until,
            "revoked_since": self.revoked_since,
            "added_at": self.added_at,
            "current": self.valid_until is None and self.revoked_since is None,
        }


def candidates(keys: Sequence[KioskKey], created_at: str) -> tuple[list[KioskKey], list[KioskKey]]:
    """(the keys to try for a packet made at ``created_at``, in order; the keys revoked at that time)."""
    usable = [k for k in keys if not k.revoked_at(created_at)]
    # the covering key first, then the others newest first
    first = [k for k in usable if k.covers(created_at)]
    rest = sorted((k for k in usable if not k.covers(created_at)), key=lambda k: k.valid_from, reverse=True)
    return first + rest, [k for k in keys if k.revoked_at(created_at)]


def fingerprint_of(key: Ed25519PublicKey) -> str:
    return key_fingerprint(raw_public(key))


def pem_of(key: Ed25519PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def rows_to_keys(rows: Sequence[Sequence[Any]], parse: Any) -> list[KioskKey]:
    """KioskKeys from ``(kiosk, fingerprint, pem, valid_from, valid_until, revoked_since, added_at)`` rows."""
    return [
        KioskKey(kiosk, fp, parse(pem.encode()), valid_from, valid_until, revoked_since, added_at)
        for kiosk, fp, pem, valid_from, valid_until, revoked_since, added_at in rows
    ]


SELECT_KEYS = (
    "SELECT kiosk, fingerprint, public_key, valid_from, valid_until, revoked_since, added_at"
    " FROM kiosk_keys WHERE kiosk = ? ORDER BY valid_from"
)


def migrate_registered(sql: Sql, parse: Any) -> None:
    """Schema 2 -> 3: each registered kiosk's one key becomes its first key, valid from the beginning."""
    for kiosk, pem, added_at in sql("SELECT id, public_key, added_at FROM kiosks").fetchall():
        key = parse(pem.encode())
        sql(
            "INSERT INTO kiosk_keys (kiosk, fingerprint, public_key, valid_from, valid_until, revoked_since,"
            " added_at) VALUES (?, ?, ?, ?, NULL, NULL, ?) ON CONFLICT (kiosk, fingerprint) DO NOTHING",
            [kiosk, fingerprint_of(key), pem, BEGINNING, added_at],
        )
