"""Ingest packets at the centre: authenticate each against its kiosk's registered key (and,
with the centre's keys, prove its body opens), then store the good ones in one
transaction (group commit); what a person must look at goes to quarantine.

The same path serves the MQTT consumer (``source="mqtt"``), ``ektp-central import``
(``source="import"``) and ``ektp-central quarantine retry``. The centre stores the signed
ciphertext as it came; reading the record is a separate step (``Ingestor.decrypt``).

Outcomes (``IngestResult.status``), in the order the checks run:

    damaged    the bytes did not authenticate: no readable header, or a signature that
               the registered key of the kiosk named in the header does not verify.
               Nothing of them is kept from MQTT (the kiosk sends them again; a flaky
               link must not fill the quarantine); an import quarantines them.
    rejected   from a kiosk that is not registered, too large, or authenticated but its
               body does not open with the centre's key: quarantined, never acked as stored
    conflict   other bytes are stored under this kiosk and packet id: these are quarantined
    stored     newly stored
    duplicate  these bytes were stored before (ack them again)
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from central.decrypt import open_body
from central.store import SOURCES, CentralStore, StoreOutcome, check_source, conflict_reason
from wire.keys import CentralPrivateKeys
from wire.packet import MAX_BODY_BYTES, PacketError, PacketHeader, open_packet, read_header, verify
from wire.record import EnrollmentRecord

log = logging.getLogger(__name__)

MAX_PACKET_BYTES = MAX_BODY_BYTES + 64 * 1024  # the largest body plus room for header, key, tag, signature
QUARANTINE_HEAD_BYTES = 64 * 1024  # of an input over the cap, only its head is kept
RETRY_BATCH_ROWS = 64  # quarantine rows re-ingested per store transaction
RETRY_BATCH_BYTES = 64 * 1024 * 1024

Status = Literal["stored", "duplicate", "rejected", "damaged", "conflict"]
STATUSES: tuple[Status, ...] = ("stored", "duplicate", "rejected", "damaged", "conflict")


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What became of one input. Unless stored or duplicate, ``packet_id``/``kiosk``/``seq`` are
    the unverified values of its header when it had a readable one, else None."""

    packet_id: str | None
    kiosk: str | None
    seq: int | None
    status: Status
    reason: str  # "" when stored; for the rest, why (a rejection starts with its fault code)
    fault: str | None = None  # a PacketFault value, "unknown_kiosk", "too_large", "conflict" or None
    sha256: str = ""  # hex SHA-256 of the input bytes ("" when they could not be read)

    @property
    def acknowledged(self) -> bool:
        """Whether the centre holds exactly these bytes (stored now or before): the kiosk may free them."""
        return self.status in ("stored", "duplicate")


class PacketNotStored(LookupError):
    """No stored packet has this kiosk and id."""


class Ingestor:
    """Authenticate and store packets into a ``CentralStore``; one per consumer thread or command.

    ``central_keys``: with them, a packet is stored only if its body opens with the
    centre's encryption key (else rejected); without them that check is skipped.
    """

    def __init__(self, store: CentralStore, central_keys: CentralPrivateKeys | None = None) -> None:
        self.store = store
        self.central_keys = central_keys

    def ingest(self, data: bytes, source: str) -> IngestResult:
        """Ingest one packet (its own transaction). :raises StoreError: nothing was stored or quarantined"""
        return self.ingest_many([data], source)[0]

    def ingest_many(self, items: Sequence[bytes], source: str) -> list[IngestResult]:
        """Ingest a batch: check each, quarantine what must be kept aside, store the rest in ONE transaction.

        Results are in the order of ``items``. When this returns, every stored or
        duplicate result is durable and every quarantined input is durably quarantined.
        :raises StoreInputError: an unknown source
        :raises StoreError: the store failed; ack nothing of this batch
        """
        check_source(source)
        return self._ingest([(bytes(raw), source) for raw in items], quarantine=True)

    def retry_quarantined(self, ids: Sequence[int]) -> list[tuple[int, IngestResult]]:
        """Ingest the quarantined inputs ``ids`` again (e.g. after ``kiosk add``), in batches.

        Those now stored or duplicate leave the quarantine; the others stay, with this
        attempt's reason. Ids not in the quarantine are skipped. Results by id.
        :raises StoreError: the batch being retried is left as it was
        """
        sizes = {row["id"]: int(row["bytes"]) for row in self.store.quarantined()}
        pending = deque(qid for qid in sorted(set(ids)) if qid in sizes)
        done: list[tuple[int, IngestResult]] = []
        while pending:
            batch: list[int] = []
            size = 0
            while pending and len(batch) < RETRY_BATCH_ROWS and size < RETRY_BATCH_BYTES:
                batch.append(pending.popleft())
                size += sizes[batch[-1]]
            rows = self.store.quarantined_data(batch)
            # the source it came by (the stored packet keeps it); bytes kept aside without one count as mqtt
            items = [(data, source if source in SOURCES else "mqtt") for _, source, data in rows]
            results = list(
                zip((qid for qid, _, _ in rows), self._ingest(items, quarantine=False), strict=True)
            )
            self.store.settle_quarantined(
                [qid for qid, r in results if r.acknowledged],
                [(qid, r.reason) for qid, r in results if not r.acknowledged],
            )
            done += results
        return done

    def decrypt(self, kiosk: str, packet_id: str) -> tuple[PacketHeader, EnrollmentRecord]:
        """Open a stored packet with the centre's key. Biometrics: never print or log the record.

        :raises PacketNotStored: no such packet
        :raises PacketError: it does not open (wrong centre key, kiosk key replaced, bad body)
        """
        if self.central_keys is None:
            raise RuntimeError("Ingestor.decrypt needs the centre's private keys")
        data = self.store.packet_data(kiosk, packet_id)
        if data is None:
            raise PacketNotStored(f"packet {packet_id} of kiosk {kiosk} is not stored")
        kiosk_public = self.store.kiosk_public_key(kiosk)
        if kiosk_public is None:
            raise PacketNotStored(f"packet {packet_id}: kiosk {kiosk} is no longer registered")
        return open_packet(data, kiosk_public=kiosk_public, central_private=self.central_keys.encryption)

    # ------------------------------------------------------------------ the checks

    def _ingest(self, items: Sequence[tuple[bytes, str]], *, quarantine: bool) -> list[IngestResult]:
        """Check each ``(data, source)``, quarantine (if ``quarantine``) and store; results in order."""
        results: list[IngestResult | None] = [None] * len(items)
        verified: list[tuple[int, PacketHeader, bytes, str, str]] = []
        keys: dict[str, Ed25519PublicKey | None] = {}  # one lookup per kiosk per batch
        for index, (data, source) in enumerate(items):
            digest = hashlib.sha256(data).hexdigest()
            checked = self._check(data, digest, keys)
            if isinstance(checked, PacketHeader):
                verified.append((index, checked, data, source, digest))
                continue
            results[index] = checked
            if checked.status == "damaged" and source == "mqtt":
                log.warning(
                    "damaged packet from MQTT not kept (the kiosk sends it again): %s", checked.reason
                )
                continue
            if quarantine:
                kept = data if len(data) <= MAX_PACKET_BYTES else data[:QUARANTINE_HEAD_BYTES]
                self.store.quarantine(kept, kiosk_hint=checked.kiosk, reason=checked.reason, source=source)
                log.warning("packet %s (%s) and quarantined: %s", checked.status, source, checked.reason)
        outcomes = self.store.commit_packets(
            [(header, data, source) for _, header, data, source, _ in verified],
            quarantine_conflicts=quarantine,
        )
        for (index, header, _, _, digest), outcome in zip(verified, outcomes, strict=True):
            results[index] = _result(header, outcome, digest)
        return [r for r in results if r is not None]

    def _check(
        self, data: bytes, digest: str, keys: dict[str, Ed25519PublicKey | None]
    ) -> PacketHeader | IngestResult:
        """The authenticated header, or what became of the input instead."""
        if len(data) > MAX_PACKET_BYTES:
            return IngestResult(
                None,
                None,
                None,
                "rejected",
                f"too_large: {len(data)} bytes, over the {MAX_PACKET_BYTES}-byte cap of a packet",
                "too_large",
                digest,
            )
        try:
            header = read_header(data)
        except PacketError as exc:
            fault = exc.reason.value
            return IngestResult(
                exc.packet_id, exc.kiosk_id, None, "damaged", f"damaged: {fault}: {exc}", fault, digest
            )
        if header.kiosk_id not in keys:
            keys[header.kiosk_id] = self.store.kiosk_public_key(header.kiosk_id)
        kiosk_public = keys[header.kiosk_id]
        if kiosk_public is None:
            return _refused(
                header,
                "rejected",
                "unknown_kiosk",
                f"unknown_kiosk: kiosk {header.kiosk_id} is not registered: register it with "
                f"`ektp-central kiosk add {header.kiosk_id} --public-key FILE`, "
                "then `ektp-central quarantine retry --all`",
                digest,
            )
        try:
            verify(data, kiosk_public)
        except PacketError as exc:
            fault = exc.reason.value
            return _refused(header, "damaged", fault, f"damaged: {fault}: {exc}", digest)
        if self.central_keys is not None:
            try:
                open_body(data, header, self.central_keys.encryption)
            except PacketError as exc:
                fault = exc.reason.value
                return _refused(header, "rejected", fault, f"{fault}: {exc}", digest)
        return header


def _refused(header: PacketHeader, status: Status, fault: str, reason: str, digest: str) -> IngestResult:
    return IngestResult(header.packet_id, header.kiosk_id, header.seq, status, reason, fault, digest)


def _result(header: PacketHeader, outcome: StoreOutcome, digest: str) -> IngestResult:
    if outcome is StoreOutcome.STORED:
        return IngestResult(header.packet_id, header.kiosk_id, header.seq, "stored", "", None, digest)
    if outcome is StoreOutcome.DUPLICATE:
        return IngestResult(
            header.packet_id, header.kiosk_id, header.seq, "duplicate", "already stored", None, digest
        )
    reason = conflict_reason(header.kiosk_id, header.packet_id, header.seq)
    return IngestResult(header.packet_id, header.kiosk_id, header.seq, "conflict", reason, "conflict", digest)
