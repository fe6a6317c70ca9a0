"""Quarantine of a damaged outbox file and salvage of what can still be read from it.

Nothing here deletes anything: the damaged file is opened read-only and its packets
are copied row by row into a fresh store, skipping rows SQLite cannot read; then it is
renamed (with its -wal and -shm) to ``<name>.corrupt-YYYYMMDDTHHMMSSZ``.

A body that SQLite can read may still be damaged (a flipped bit inside a page). When the
kiosk's public keys are given, each salvaged body must verify with one of them (its own
signature) and name the row's packet id and seq; one that does not is copied as
``damaged``, with what is wrong as its reason: kept for export, never sent, so the centre
never sees the kiosk's own damage as tampering in transit.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.files import fsync_dir
from agent.outbox_schema import (
    DAMAGED,
    DELIVERED,
    HELD_STATES,
    PENDING,
    SENT,
    connect,
    log,
    write_transaction,
)
from wire.packet import PacketError, PacketFault, verify

# (seq, packet_id, body) -> None when the body is the kiosk's own sound packet, else what is wrong
BodyCheck = Callable[[int, str, bytes], str | None]

SALVAGE_BATCH = 64  # rows copied per transaction of the fresh store
LOST_SEQS_LOGGED = 50

_PACKET_COLUMNS = (
    "packet_id, created_at, committed_at, state, bytes, attempts, sent_at, delivered_at, rejected_at, reason"
)


@dataclass(slots=True)
class SalvageReport:
    """What a salvage copied and what it had to leave in the quarantined file."""

    problem: str
    salvaged: int = 0
    salvaged_held: int = 0
    highest_seq: int = 0
    lost: int = 0
    lost_seqs: list[int] = field(default_factory=list)  # the first LOST_SEQS_LOGGED of them
    damaged: int = 0
    damaged_seqs: list[int] = field(default_factory=list)  # the first LOST_SEQS_LOGGED of them

    def note_lost(self, seq: int) -> None:
        self.lost += 1
        if len(self.lost_seqs) < LOST_SEQS_LOGGED:
            self.lost_seqs.append(seq)

    def note_damaged(self, seq: int) -> None:
        self.damaged += 1
        if len(self.damaged_seqs) < LOST_SEQS_LOGGED:
            self.damaged_seqs.append(seq)


def signature_check(kiosk_keys: Sequence[Ed25519PublicKey]) -> BodyCheck:
    """A body check: the packet verifies with one of the kiosk's keys and is the row's own."""

    def check(seq: int, packet_id: str, data: bytes) -> str | None:
        problem = "no kiosk key to check it with"
        for key in kiosk_keys:
            try:
                header = verify(data, key)
            except PacketError as exc:
                problem = str(exc)
                if exc.reason is not PacketFault.BAD_SIGNATURE:
                    break  # the header itself is unreadable: no other key helps
                continue
            if (header.packet_id, header.seq) != (packet_id, seq):
                return (
                    f"the stored bytes are packet {header.packet_id} seq {header.seq}, not this row's "
                    f"{packet_id} seq {seq}"
                )
            return None
        return problem

    return check


def quarantine(path: Path) -> Path:
    """Rename path and its -wal/-shm aside to a dated name; return the new database path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 0
    while any(Path(f"{target}{s}").exists() for s in ("", "-wal", "-shm")):
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    os.rename(path, target)
    for suffix in ("-wal", "-shm"):
        # The -wal keeps its role beside the renamed file, so its committed frames stay readable.
        with contextlib.suppress(FileNotFoundError):
            os.rename(f"{path}{suffix}", f"{target}{suffix}")
    fsync_dir(path.parent)
    return target


def salvage(
    source: Path, problem: str, dest: sqlite3.Connection, check: BodyCheck | None = None
) -> SalvageReport:
    """Copy every readable packet of source (opened read-only) into dest, an empty outbox.

    With ``check``, a held body it finds fault with is copied in state ``damaged``.
    """
    report = SalvageReport(problem=problem)
    try:
        src = connect(source, readonly=True)
    except sqlite3.Error as exc:
        log.error("cannot open the damaged outbox %s to salvage it: %s", source, exc)
        return report
    try:
        highest = _highest_seq(src)
        report.highest_seq = highest
        rows = _readable_rows(src, highest, report, check)
        while True:
            chunk = list(itertools.islice(rows, SALVAGE_BATCH))
            if not chunk:
                break
            with write_transaction(dest):
                for seq, meta, body in chunk:
                    dest.execute(
                        f"INSERT INTO packets (seq, {_PACKET_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (seq, *meta),
                    )
                    if body is not None:
                        dest.execute("INSERT INTO bodies (seq, data) VALUES (?, ?)", (seq, body))
            report.salvaged += len(chunk)
            report.salvaged_held += sum(1 for _, _, body in chunk if body is not None)
        with write_transaction(dest):
            dest.execute("UPDATE counters SET last_seq = max(last_seq, ?) WHERE id = 1", (highest,))
    finally:
        src.close()
    return report


def _highest_seq(src: sqlite3.Connection) -> int:
    """The highest seq any readable part of the damaged file still shows (counter or rows)."""
    best = 0
    for sql in (
        "SELECT last_seq FROM counters WHERE id = 1",
        "SELECT max(seq) FROM packets",
        "SELECT max(seq) FROM bodies",
    ):
        try:
            row = src.execute(sql).fetchone()
        except sqlite3.DatabaseError:
            continue
        if row is not None and isinstance(row[0], int):
            best = max(best, row[0])
    for table in ("packets", "bodies"):  # a forward scan, in case the right edge was damaged
        with contextlib.suppress(sqlite3.DatabaseError):
            for (seq,) in src.execute(f"SELECT seq FROM {table} WHERE seq > ? ORDER BY seq", (best,)):
                best = max(best, int(seq))
    return best


def _readable_rows(
    src: sqlite3.Connection, highest: int, report: SalvageReport, check: BodyCheck | None
) -> Iterator[tuple[int, tuple[object, ...], bytes | None]]:
    """Yield (seq, metadata, body or None) for every row readable by point lookup, 1..highest."""
    for seq in range(1, highest + 1):
        try:
            meta = src.execute(f"SELECT {_PACKET_COLUMNS} FROM packets WHERE seq = ?", (seq,)).fetchone()
        except sqlite3.DatabaseError:
            meta = None
        if meta is None:
            report.note_lost(seq)
            continue
        state, size = meta[3], meta[4]
        if state == DELIVERED:
            yield seq, tuple(meta), None
            continue
        if state not in HELD_STATES:
            report.note_lost(seq)
            continue
        try:
            row = src.execute("SELECT data FROM bodies WHERE seq = ?", (seq,)).fetchone()
        except sqlite3.DatabaseError:
            row = None
        if row is None or not isinstance(row[0], bytes) or len(row[0]) != size:
            report.note_lost(seq)
            continue
        if state == SENT:  # resumed like any interrupted send
            meta = (*meta[:3], PENDING, *meta[4:])
        fault = check(seq, str(meta[0]), row[0]) if check is not None and state != DAMAGED else None
        if fault is not None:
            # packet_id .. attempts kept; the reason says what is wrong (the last column)
            meta = (*meta[:3], DAMAGED, *meta[4:9], f"damaged on the kiosk: {fault}")
            report.note_damaged(seq)
        yield seq, tuple(meta), row[0]


__all__ = ["BodyCheck", "SalvageReport", "fsync_dir", "quarantine", "salvage", "signature_check"]
