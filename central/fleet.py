"""The fleet table: one row per kiosk from what the store knows of it.

Columns (also the JSON keys of `ektp-central fleet --json`):

    kiosk                 the kiosk id
    registered            whether its public key is registered
    online                True / False from its last applied status, None if never heard
    status_ts             when that status was applied (the centre's clock)
    last_health_ts        the ``ts`` of its last health snapshot (the kiosk's clock)
    faulty                devices whose state is "fault" or "absent", sorted (not those not yet tested)
    degraded              devices whose state is "degraded", sorted
    backlog               queue.pending of the last health snapshot (None if unknown)
    oldest_pending_age_s  queue.oldest_pending_age_s of that snapshot
    stored                packets stored centrally (real residents: synthetic ones not counted)
    synthetic             synthetic packets stored (a simulated kit's test residents), kept apart
    last_seq              the highest stored seq (None if none)
    gaps                  [from, to] ranges of seq missing below last_seq (seqs start at 1)
    duplicate_deliveries  deliveries of packets the centre already held (wasted but harmless work)
    quarantined           quarantine rows naming this kiosk, and their bytes (quarantine_bytes)
    quarantine_dropped    inputs naming this kiosk not kept: its quarantine was at its byte cap
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, TypedDict

FIRST_SEQ = 1  # the outbox numbers a kiosk's packets from 1
FAULTY_STATES = frozenset({"fault", "absent"})
NOT_YET_TESTED = "not yet tested"  # a device's detail before its first self-test (agent.health)


class FleetRow(TypedDict):
    kiosk: str
    registered: bool
    online: bool | None
    status_ts: str | None
    last_health_ts: str | None
    faulty: list[str]
    degraded: list[str]
    backlog: int | None
    oldest_pending_age_s: float | None
    stored: int
    synthetic: int
    last_seq: int | None
    gaps: list[list[int]]
    duplicate_deliveries: int
    quarantined: int
    quarantine_bytes: int
    quarantine_dropped: int


def build_fleet(
    *,
    registered: Iterable[str],
    status: Iterable[Sequence[Any]],
    health: Iterable[Sequence[Any]],
    counts: Iterable[Sequence[Any]],
    gaps: Iterable[Sequence[Any]],
    counters: Iterable[Sequence[Any]] = (),
    quarantine: Iterable[Sequence[Any]] = (),
) -> list[FleetRow]:
    """Rows from the store's query results: status (kiosk, state, ts), health (kiosk, ts, doc
    JSON), counts (kiosk, count, synthetic count, min seq, max seq), gaps (kiosk, from, to) in
    order, counters (kiosk, duplicate deliveries, quarantine dropped), quarantine (kiosk,
    rows, bytes)."""
    rows: dict[str, FleetRow] = {}

    def row(kiosk: str) -> FleetRow:
        if kiosk not in rows:
            rows[kiosk] = FleetRow(
                kiosk=kiosk,
                registered=False,
                online=None,
                status_ts=None,
                last_health_ts=None,
                faulty=[],
                degraded=[],
                backlog=None,
                oldest_pending_age_s=None,
                stored=0,
                synthetic=0,
                last_seq=None,
                gaps=[],
                duplicate_deliveries=0,
                quarantined=0,
                quarantine_bytes=0,
                quarantine_dropped=0,
            )
        return rows[kiosk]

    for kiosk in registered:
        row(kiosk)["registered"] = True
    for kiosk, state, ts in status:
        r = row(kiosk)
        r["online"] = state == "online"
        r["status_ts"] = ts
    for kiosk, ts, doc_text in health:
        r = row(kiosk)
        r["last_health_ts"] = ts
        _apply_health(r, _loads(doc_text))
    for kiosk, count, synthetic, first, last in counts:
        r = row(kiosk)
        r["stored"] = int(count) - int(synthetic)
        r["synthetic"] = int(synthetic)
        r["last_seq"] = int(last)
        if int(first) > FIRST_SEQ:
            r["gaps"].append([FIRST_SEQ, int(first) - 1])
    for kiosk, start, end in gaps:
        row(kiosk)["gaps"].append([int(start), int(end)])
    for kiosk, duplicates, dropped in counters:
        if not kiosk:
            continue  # inputs that named no kiosk
        r = row(kiosk)
        r["duplicate_deliveries"] = int(duplicates)
        r["quarantine_dropped"] = int(dropped)
    for kiosk, n, size in quarantine:
        r = row(kiosk)
        r["quarantined"] = int(n)
        r["quarantine_bytes"] = int(size)
    return [rows[k] for k in sorted(rows)]


def _loads(text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _apply_health(row: FleetRow, doc: dict[str, Any]) -> None:
    """Read what the fleet shows from a health document, tolerating any shape (it is kiosk input)."""
    devices = doc.get("devices")
    if isinstance(devices, dict):
        for name, device in devices.items():
            state = device.get("state") if isinstance(device, dict) else None
            if isinstance(device, dict) and device.get("detail") == NOT_YET_TESTED:
                continue  # a kiosk just started: its first self-test has not run, nothing is known
            if state in FAULTY_STATES:
                row["faulty"].append(str(name))
            elif state == "degraded":
                row["degraded"].append(str(name))
        row["faulty"].sort()
        row["degraded"].sort()
    queue = doc.get("queue")
    if isinstance(queue, dict):
        pending = queue.get("pending")
        if isinstance(pending, int) and not isinstance(pending, bool):
            row["backlog"] = pending
        age = queue.get("oldest_pending_age_s")
        if isinstance(age, int | float) and not isinstance(age, bool):
            row["oldest_pending_age_s"] = float(age)
