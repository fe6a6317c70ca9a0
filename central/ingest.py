"""Ingest packets at the centre: check each against its kiosk's registered key, then store
the verified ones in one transaction (group commit); anything else goes to quarantine.

The same path serves the MQTT consumer (``source="mqtt"``) and ``ektp-central import``
(``source="import"``). The centre stores the signed ciphertext as it came; decrypting
is a separate step (``Ingestor.decrypt``) that needs the centre's private key.

Outcomes: ``stored`` (new), ``duplicate`` (this packet id is already stored: ack it
again), ``rejected`` (kept in quarantine with the reason; never acked as stored).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from central.store import CentralStore, StoreOutcome, check_source
from wire.keys import CentralPrivateKeys
from wire.packet import MAX_BODY_BYTES, PacketError, PacketHeader, open_packet, read_header, verify
from wire.record import EnrollmentRecord

log = logging.getLogger(__name__)

MAX_PACKET_BYTES = MAX_BODY_BYTES + 64 * 1024  # the largest body plus room for header, key, tag, signature
QUARANTINE_HEAD_BYTES = 64 * 1024  # of an input over the cap, only its head is kept

Status = Literal["stored", "duplicate", "rejected"]


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What became of one input. For a rejected one, ``packet_id``/``kiosk``/``seq`` are the
    unverified values of its header when it had a readable one, else None."""

    packet_id: str | None
    kiosk: str | None
    seq: int | None
    status: Status
    reason: str  # "" when stored; for the rest, why (a rejection starts with its fault code)
    fault: str | None = None  # rejected: a PacketFault value, "unknown_kiosk" or "too_large"; "conflict"

    @property
    def acknowledged(self) -> bool:
        """Whether the centre holds this packet id (stored now or before): the kiosk may delete it."""
        return self.status != "rejected"


class PacketNotStored(LookupError):
    """No stored packet has this id."""


class Ingestor:
    """Verify and store packets into a ``CentralStore``; one per consumer thread or command."""

    def __init__(self, store: CentralStore, central_keys: CentralPrivateKeys | None = None) -> None:
        self.store = store
        self.central_keys = central_keys  # only ``decrypt`` needs it

    def ingest(self, data: bytes, source: str) -> IngestResult:
        """Ingest one packet (its own transaction). :raises StoreError: nothing was stored or quarantined"""
        return self.ingest_many([data], source)[0]

    def ingest_many(self, items: Sequence[bytes], source: str) -> list[IngestResult]:
        """Ingest a batch: verify each, quarantine the bad ones, store the good ones in ONE transaction.

        Results are in the order of ``items``. When this returns, every stored or
        duplicate result is durable and every rejected one is durably quarantined.
        :raises StoreInputError: an unknown source
        :raises StoreError: the store failed; ack nothing of this batch
        """
        check_source(source)
        results: list[IngestResult | None] = [None] * len(items)
        verified: list[tuple[int, PacketHeader, bytes]] = []
        keys: dict[str, Ed25519PublicKey | None] = {}  # one lookup per kiosk per batch
        for index, raw in enumerate(items):
            data = bytes(raw)
            checked = self._check(data, keys)
            if isinstance(checked, PacketHeader):
                verified.append((index, checked, data))
                continue
            results[index] = checked
            kept = data if len(data) <= MAX_PACKET_BYTES else data[:QUARANTINE_HEAD_BYTES]
            self.store.quarantine(kept, kiosk_hint=checked.kiosk, reason=checked.reason, source=source)
            log.warning("packet rejected (%s) and quarantined: %s", source, checked.reason)
        outcomes = self.store.commit_packets([(header, data, source) for _, header, data in verified])
        for (index, header, _), outcome in zip(verified, outcomes, strict=True):
            results[index] = _result(header, outcome)
        return [r for r in results if r is not None]

    def decrypt(self, packet_id: str) -> tuple[PacketHeader, EnrollmentRecord]:
        """Open a stored packet with the centre's key. Biometrics: never print or log the record.

        :raises PacketNotStored: no such packet
        :raises PacketError: it does not open (wrong centre key, kiosk key replaced, bad body)
        """
        if self.central_keys is None:
            raise RuntimeError("Ingestor.decrypt needs the centre's private keys")
        data = self.store.packet_data(packet_id)
        if data is None:
            raise PacketNotStored(f"packet {packet_id} is not stored")
        header = read_header(data)
        kiosk_public = self.store.kiosk_public_key(header.kiosk_id)
        if kiosk_public is None:
            raise PacketNotStored(f"packet {packet_id}: kiosk {header.kiosk_id} is no longer registered")
        return open_packet(data, kiosk_public=kiosk_public, central_private=self.central_keys.encryption)

    def _check(self, data: bytes, keys: dict[str, Ed25519PublicKey | None]) -> PacketHeader | IngestResult:
        """The verified header, or the rejection."""
        if len(data) > MAX_PACKET_BYTES:
            return _rejected(
                None,
                "too_large",
                f"too_large: {len(data)} bytes, over the {MAX_PACKET_BYTES}-byte cap of a packet",
            )
        try:
            header = read_header(data)
        except PacketError as exc:
            return IngestResult(
                exc.packet_id, exc.kiosk_id, None, "rejected", f"{exc.reason.value}: {exc}", exc.reason.value
            )
        if header.kiosk_id not in keys:
            keys[header.kiosk_id] = self.store.kiosk_public_key(header.kiosk_id)
        kiosk_public = keys[header.kiosk_id]
        if kiosk_public is None:
            return _rejected(
                header,
                "unknown_kiosk",
                f"unknown_kiosk: kiosk {header.kiosk_id} is not registered: "
                f"`ektp-central kiosk add {header.kiosk_id} --public-key FILE`",
            )
        try:
            return verify(data, kiosk_public)
        except PacketError as exc:
            return _rejected(header, exc.reason.value, f"{exc.reason.value}: {exc}")


def _rejected(header: PacketHeader | None, fault: str, reason: str) -> IngestResult:
    if header is None:
        return IngestResult(None, None, None, "rejected", reason, fault)
    return IngestResult(header.packet_id, header.kiosk_id, header.seq, "rejected", reason, fault)


def _result(header: PacketHeader, outcome: StoreOutcome) -> IngestResult:
    if outcome is StoreOutcome.STORED:
        return IngestResult(header.packet_id, header.kiosk_id, header.seq, "stored", "")
    if outcome is StoreOutcome.DUPLICATE:
        return IngestResult(header.packet_id, header.kiosk_id, header.seq, "duplicate", "already stored")
    return IngestResult(
        header.packet_id,
        header.kiosk_id,
        header.seq,
        "duplicate",
        f"conflict: packet id {header.packet_id} is already stored with other bytes; "
        "the first copy is kept, this one is quarantined",
        "conflict",
    )
