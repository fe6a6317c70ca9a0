"""Ingest packets at the centre: authenticate each against its kiosk's registered key (and,
with the centre's keys, prove its body opens), then store the good ones in one
transaction (group commit); what a person must look at goes to quarantine.

The same path serves the MQTT consumer (``source="mqtt"``), ``ektp-central import``
(``source="import"``) and ``ektp-central quarantine retry``. The centre stores the signed
ciphertext as it came; reading the record is a separate step (``Ingestor.decrypt``).

The checks that cost CPU (SHA-256, the signature, opening the body) release the GIL: a
consumer hands the Ingestor a small thread pool and a batch is checked on both cores.

Outcomes (``IngestResult.status``), in the order the checks run:

    damaged    the bytes did not authenticate: not the SHA-256 the transfer announced, no
               readable header, or a signature that no registered key of the kiosk named
               in the header verifies (central.kiosk_keys: which keys are tried).
               Nothing of them is kept from MQTT (the kiosk sends them again; a flaky
               link must not fill the quarantine); an import quarantines them.
    rejected   not from the kiosk (or not the packet id) the transfer announced, from a kiosk
               that is not registered, too large, signed by a key revoked at the time the
               packet claims, or authenticated but its body does not open with the
               centre's key: quarantined, never acked as stored
    conflict   other bytes are stored under this kiosk and packet id: these are quarantined
    stored     newly stored
    duplicate  these bytes were stored before (ack them again)
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Literal

from central.keyring import CentralKeyring, as_keyring
from central.kiosk_keys import KioskKey, candidates
from central.store import SOURCES, CentralStore, StoreOutcome, check_source, conflict_reason
from wire.keys import CentralPrivateKeys
from wire.packet import (
    MAX_BODY_BYTES,
    PacketError,
    PacketHeader,
    open_packet,
    read_header,
    verify,
)
from wire.record import EnrollmentRecord

log = logging.getLogger(__name__)

MAX_PACKET_BYTES = MAX_BODY_BYTES + 64 * 1024  # the largest body plus room for header, key, tag, signature
QUARANTINE_HEAD_BYTES = 4096  # of an input that is not a packet, only its head is kept (enough to diagnose)
RETRY_BATCH_ROWS = 64  # quarantine rows re-ingested per store transaction
RETRY_BATCH_BYTES = 64 * 1024 * 1024

Status = Literal["stored", "duplicate", "rejected", "damaged", "conflict"]


@dataclass(frozen=True, slots=True)
class Claim:
    """What the transfer that brought an input announced: checked before anything else."""

    kiosk: str  # the kiosk whose topic carried it
    packet_id: str
    sha256: str


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
    generation: int | None = None  # which centre key pair opened the body (0 = current), when checked

    @property
    def acknowledged(self) -> bool:
        """Whether the centre holds exactly these bytes (stored now or before): the kiosk may free them."""
        return self.status in ("stored", "duplicate")


class PacketNotStored(LookupError):
    """No stored packet has this kiosk and id."""


class Ingestor:
    """Authenticate and store packets into a ``CentralStore``; one per consumer thread or command.

    ``central_keys``: with them (one pair, or the keyring of current and retired pairs), a
    packet is stored only if its body opens with one of the centre's encryption keys (else
    rejected); without them that check is skipped.
    """

    def __init__(
        self,
        store: CentralStore,
        central_keys: CentralPrivateKeys | CentralKeyring | None = None,
        *,
        crypto: Executor | None = None,
    ) -> None:
        self.store = store
        self.central_keys = None if central_keys is None else as_keyring(central_keys)
        self.crypto = crypto  # runs the CPU-bound checks of a batch in parallel; None: one by one

    def ingest(self, data: bytes, source: str) -> IngestResult:
        """Ingest one packet (its own transaction). :raises StoreError: nothing was stored or quarantined"""
        return self.ingest_many([data], source)[0]

    def ingest_many(
        self, items: Sequence[bytes], source: str, *, claims: Sequence[Claim] | None = None
    ) -> list[IngestResult]:
        """Ingest a batch: check each, quarantine what must be kept aside, store the rest in ONE transaction.

        ``claims``: per item, what its transfer announced (kiosk, packet id, SHA-256).
        Results are in the order of ``items``. When this returns, every stored or
        duplicate result is durable and every quarantined input is durably quarantined.
        :raises StoreInputError: an unknown source
        :raises StoreError: the store failed; ack nothing of this batch
        """
        check_source(source)
        return self._ingest([(bytes(raw), source) for raw in items], quarantine=True, claims=claims)

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
        header = read_header(data)
        keys = self.store.kiosk_keys(kiosk)
        if not keys:
            raise PacketNotStored(f"packet {packet_id}: kiosk {kiosk} is no longer registered")
        signer = _signer(data, candidates(keys, header.created_at)[0]) or keys[-1]
        failure: PacketError | None = None
        for generation in self.central_keys.generations:  # a packet sealed before a rotation: a retired key
            try:
                return open_packet(
                    data, kiosk_public=signer.public_key, central_private=generation.encryption
                )
            except PacketError as exc:
                failure = failure or exc
        assert failure is not None
        raise failure

    # ------------------------------------------------------------------ the checks

    def _ingest(
        self, items: Sequence[tuple[bytes, str]], *, quarantine: bool, claims: Sequence[Claim] | None = None
    ) -> list[IngestResult]:
        """Check each ``(data, source)``, quarantine (if ``quarantine``) and store; results in order."""
        keys: dict[str, list[KioskKey]] = {}  # one lookup per kiosk per batch
        # the store is used on this thread only; the pool gets pure CPU work
        looked_up = [self._look_up(data, keys) for data, _ in items]
        jobs = [
            (data, checked, None if claims is None else claims[i])
            for i, ((data, _), checked) in enumerate(zip(items, looked_up, strict=True))
        ]
        checks = (
            list(self.crypto.map(self._authenticate, jobs))
            if self.crypto
            else list(map(self._authenticate, jobs))
        )
        results: list[IngestResult | None] = [None] * len(items)
        verified: list[tuple[int, PacketHeader, bytes, str, str]] = []
        generations: dict[int, int | None] = {}
        for index, ((data, source), (checked, digest, generation)) in enumerate(
            zip(items, checks, strict=True)
        ):
            if isinstance(checked, PacketHeader):
                verified.append((index, checked, data, source, digest))
                generations[index] = generation
                continue
            results[index] = checked
            if checked.status == "damaged" and source == "mqtt":
                log.warning(
                    "damaged packet from MQTT not kept (the kiosk sends it again): %s", checked.reason
                )
                continue
            if quarantine:
                kept = data if checked.seq is not None else data[:QUARANTINE_HEAD_BYTES]
                self.store.quarantine(kept, kiosk_hint=checked.kiosk, reason=checked.reason, source=source)
                log.warning("packet %s (%s) and quarantined: %s", checked.status, source, checked.reason)
        outcomes = self.store.commit_packets(
            [(header, data, source) for _, header, data, source, _ in verified],
            quarantine_conflicts=quarantine,
            digests=[digest for *_, digest in verified],
        )
        for (index, header, _, _, digest), outcome in zip(verified, outcomes, strict=True):
            results[index] = _result(header, outcome, digest, generations[index])
        return [r for r in results if r is not None]

    def _look_up(
        self, data: bytes, keys: dict[str, list[KioskKey]]
    ) -> tuple[PacketHeader, list[KioskKey]] | PacketError | None:
        """The header and its kiosk's registered keys; the header's error; None if too large."""
        if len(data) > MAX_PACKET_BYTES:
            return None
        try:
            header = read_header(data)
        except PacketError as exc:
            return exc
        if header.kiosk_id not in keys:
            keys[header.kiosk_id] = self.store.kiosk_keys(header.kiosk_id)
        return header, keys[header.kiosk_id]

    def _authenticate(
        self,
        job: tuple[bytes, tuple[PacketHeader, list[KioskKey]] | PacketError | None, Claim | None],
    ) -> tuple[PacketHeader | IngestResult, str, int | None]:
        """(the authenticated header, or what became of the input instead; its hex SHA-256; the
        generation of the centre key that opened its body, None when not checked)."""
        data, looked_up, claim = job
        digest = hashlib.sha256(data).hexdigest()
        if claim is not None and digest != claim.sha256:
            reason = "damaged: the bytes do not match the SHA-256 their transfer announced"
            return (
                IngestResult(
                    claim.packet_id, claim.kiosk, None, "damaged", reason, "sha256_mismatch", digest
                ),
                digest,
                None,
            )
        if looked_up is None:
            reason = f"too_large: {len(data)} bytes, over the {MAX_PACKET_BYTES}-byte cap of a packet"
            return IngestResult(None, None, None, "rejected", reason, "too_large", digest), digest, None
        if isinstance(looked_up, PacketError):
            fault = looked_up.reason.value
            reason = f"damaged: {fault}: {looked_up}"
            return (
                IngestResult(looked_up.packet_id, looked_up.kiosk_id, None, "damaged", reason, fault, digest),
                digest,
                None,
            )
        header, kiosk_keys = looked_up
        if claim is not None and (header.kiosk_id, header.packet_id) != (claim.kiosk, claim.packet_id):
            reason = (
                f"not_announced: packet {header.packet_id} of kiosk {header.kiosk_id} arrived as packet "
                f"{claim.packet_id} on kiosk {claim.kiosk}'s topic"
            )
            return _refused(header, "rejected", "not_announced", reason, digest), digest, None
        if not kiosk_keys:
            reason = (
                f"unknown_kiosk: kiosk {header.kiosk_id} is not registered: register it with "
                f"`ektp-central kiosk add {header.kiosk_id} --public-key FILE`, "
                "then `ektp-central quarantine retry --all`"
            )
            return _refused(header, "rejected", "unknown_kiosk", reason, digest), digest, None
        usable, revoked = candidates(kiosk_keys, header.created_at)
        if _signer(data, usable) is None:
            by_revoked = _signer(data, revoked)
            if by_revoked is not None:
                reason = (
                    f"revoked_key: packet {header.packet_id} of kiosk {header.kiosk_id}, made at "
                    f"{header.created_at}, is signed by key {by_revoked.fingerprint}, revoked since "
                    f"{by_revoked.revoked_since}"
                )
                return _refused(header, "rejected", "revoked_key", reason, digest), digest, None
            tried = ", ".join(k.fingerprint for k in usable) or "none valid then"
            reason = (
                f"damaged: bad_signature: packet {header.packet_id}: the signature verifies with no key "
                f"of kiosk {header.kiosk_id} (tried {tried}): damaged, or not made by this kiosk"
            )
            return _refused(header, "damaged", "bad_signature", reason, digest), digest, None
        generation = None
        if self.central_keys is not None:
            try:
                _, generation = self.central_keys.open_body(data, header)
            except PacketError as exc:
                fault = exc.reason.value
                return _refused(header, "rejected", fault, f"{fault}: {exc}", digest), digest, None
        return header, digest, generation


def _signer(data: bytes, keys: list[KioskKey]) -> KioskKey | None:
    """The first of ``keys`` whose signature check of ``data`` passes, or None."""
    for key in keys:
        try:
            verify(data, key.public_key)
        except PacketError:
            continue
        return key
    return None


def _refused(header: PacketHeader, status: Status, fault: str, reason: str, digest: str) -> IngestResult:
    return IngestResult(header.packet_id, header.kiosk_id, header.seq, status, reason, fault, digest)


def _result(header: PacketHeader, outcome: StoreOutcome, digest: str, generation: int | None) -> IngestResult:
    if outcome is StoreOutcome.STORED:
        return IngestResult(
            header.packet_id, header.kiosk_id, header.seq, "stored", "", None, digest, generation
        )
    if outcome is StoreOutcome.DUPLICATE:
        return IngestResult(
            header.packet_id,
            header.kiosk_id,
            header.seq,
            "duplicate",
            "already stored",
            None,
            digest,
            generation,
        )
    reason = conflict_reason(header.kiosk_id, header.packet_id, header.seq)
    return IngestResult(header.packet_id, header.kiosk_id, header.seq, "conflict", reason, "conflict", digest)
