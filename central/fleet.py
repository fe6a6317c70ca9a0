"""The fleet table: one row per kiosk from what the store knows of it.

Columns (also the JSON keys of `ektp-central fleet --json`); "centre's clock" marks the times
the centre stamped itself (a kiosk's own clock may be years off after a power cut):

    kiosk                  the kiosk id
    region                 its Kemendagri region code, the id's first 6 digits (province 2, regency 2,
                           district 2: "320715"), or None when the id does not start with one
    registered             whether its public key is registered
    online                 True / False from its last applied status, None if never heard
    status_ts              when that status was applied (centre's clock): online or offline since then
    last_seen              the latest of status_ts and health_received_at (centre's clock)
    last_health_ts         the ``ts`` of its last health snapshot (the kiosk's clock)
    health_received_at     when that snapshot arrived (centre's clock)
    health_age_s           seconds since health_received_at (centre's clock), None if never
    devices                {name: {"state", "detail", "hint"}} from the last snapshot; a device
                           whose first self-test has not run has state "untested"
    faulty                 devices whose state is "fault" or "absent", sorted (not those untested)
    degraded               devices whose state is "degraded", sorted
    backlog                queue.pending of the last health snapshot (None if unknown)
    backlog_bytes          queue.pending_bytes of that snapshot
    oldest_pending_age_s   queue.oldest_pending_age_s of that snapshot
    rejected, damaged      packets the kiosk holds as rejected by the centre / found damaged
    clock_synchronised     host.clock_synchronised of that snapshot (None if unknown)
    clock_unsynchronised_s how long it has recorded on an unsynchronised clock (None if not)
    disk_free_bytes        host.disk_free_bytes
    cpu_temp_c             host.cpu_temp_c
    reconnects             link.reconnects (since the agent started)
    refused_pubacks        link.refused_pubacks: publishes the broker refused (an ACL, a quota)
    kiosk_problems         the snapshot's own ``problems``: [{"code", "message"}]
    stored                 packets stored centrally (real residents: synthetic ones not counted)
    synthetic              synthetic packets stored (a simulated kit's test residents), kept apart
    last_seq               the highest stored seq (None if none)
    last_delivery          when its newest stored packet arrived (centre's clock), None if none
    gaps                   [from, to] ranges of seq missing below last_seq (seqs start at 1)
    duplicate_deliveries   deliveries of packets the centre already held (wasted but harmless work)
    quarantined            quarantine rows naming this kiosk, and their bytes (quarantine_bytes)
    quarantine_dropped     inputs naming this kiosk not kept: its quarantine was at its byte cap
    problems               why this kiosk needs someone, in plain words ([] when it does not):
                           offline, a faulty device, a backlog older than the limit, or a problem
                           the kiosk reports itself; `fleet` exits 1 when a listed row has one
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypedDict

FIRST_SEQ = 1  # the outbox numbers a kiosk's packets from 1
FAULTY_STATES = frozenset({"fault", "absent"})
DEVICE_STATES = ("ok", "degraded", "fault", "absent")  # CONTRACT.md, Health JSON
UNTESTED = "untested"  # shown for a device whose first self-test has not run
NOT_YET_TESTED = "not yet tested"  # a device's detail before its first self-test (agent.health)
DEFAULT_BACKLOG_PROBLEM_HOURS = 24.0
REGION_RE = re.compile(r"[0-9]{6}")


class DeviceView(TypedDict):
    state: str
    detail: str
    hint: str


class Finding(TypedDict):
    code: str
    message: str


class FleetRow(TypedDict):
    kiosk: str
    region: str | None
    registered: bool
    online: bool | None
    status_ts: str | None
    last_seen: str | None
    last_health_ts: str | None
    health_received_at: str | None
    health_age_s: float | None
    devices: dict[str, DeviceView]
    faulty: list[str]
    degraded: list[str]
    backlog: int | None
    backlog_bytes: int | None
    oldest_pending_age_s: float | None
    rejected: int | None
    damaged: int | None
    clock_synchronised: bool | None
    clock_unsynchronised_s: float | None
    disk_free_bytes: int | None
    cpu_temp_c: float | None
    reconnects: int | None
    refused_pubacks: int | None
    kiosk_problems: list[Finding]
    stored: int
    synthetic: int
    last_seq: int | None
    last_delivery: str | None
    gaps: list[list[int]]
    duplicate_deliveries: int
    quarantined: int
    quarantine_bytes: int
    quarantine_dropped: int
    problems: list[str]


_EMPTY: dict[str, Any] = {
    "kiosk": "",
    "region": None,
    "registered": False,
    "online": None,
    "status_ts": None,
    "last_seen": None,
    "last_health_ts": None,
    "health_received_at": None,
    "health_age_s": None,
    "devices": {},
    "faulty": [],
    "degraded": [],
    "backlog": None,
    "backlog_bytes": None,
    "oldest_pending_age_s": None,
    "rejected": None,
    "damaged": None,
    "clock_synchronised": None,
    "clock_unsynchronised_s": None,
    "disk_free_bytes": None,
    "cpu_temp_c": None,
    "reconnects": None,
    "refused_pubacks": None,
    "kiosk_problems": [],
    "stored": 0,
    "synthetic": 0,
    "last_seq": None,
    "last_delivery": None,
    "gaps": [],
    "duplicate_deliveries": 0,
    "quarantined": 0,
    "quarantine_bytes": 0,
    "quarantine_dropped": 0,
    "problems": [],
}  # every column of a row, as a kiosk the centre knows nothing more of (empty_row copies it)


def region_of(kiosk: str) -> str | None:
    """The Kemendagri region code a kiosk id starts with ("320715-01" -> "320715"), or None."""
    head = kiosk[:6]
    return head if REGION_RE.fullmatch(head) else None


def default_hint(device: str) -> str:
    """What to do about a device whose kiosk sent no hint of its own (an older agent)."""
    return f"on the kiosk: `ektp-agent diag {device}` tests it and says what to do (docs/troubleshooting.md)"


HEALTH_FIELDS = (
    "devices",
    "faulty",
    "degraded",
    "backlog",
    "backlog_bytes",
    "oldest_pending_age_s",
    "rejected",
    "damaged",
    "clock_synchronised",
    "clock_unsynchronised_s",
    "disk_free_bytes",
    "cpu_temp_c",
    "reconnects",
    "refused_pubacks",
    "kiosk_problems",
)


def health_fields(doc_text: str) -> dict[str, Any]:
    """What a row takes from a health document (its HEALTH_FIELDS), parsed once: a reader that
    keeps these per kiosk parses only the documents that changed since its last reading."""
    row = empty_row("")
    apply_health(row, _loads(doc_text))
    return {k: row[k] for k in HEALTH_FIELDS}  # type: ignore[literal-required]


def build_fleet(
    *,
    registered: Iterable[str],
    status: Iterable[Sequence[Any]],
    health: Iterable[Sequence[Any]],
    counts: Iterable[Sequence[Any]],
    gaps: Iterable[Sequence[Any]],
    counters: Iterable[Sequence[Any]] = (),
    quarantine: Iterable[Sequence[Any]] = (),
    now: datetime | None = None,
    backlog_problem_hours: float = DEFAULT_BACKLOG_PROBLEM_HOURS,
) -> list[FleetRow]:
    """Rows from the store's query results: status (kiosk, state, ts), health (kiosk, ts,
    received_at, doc JSON or its :func:`health_fields`), counts (kiosk, count, synthetic count, min seq, max seq, newest
    received_at), gaps (kiosk, from, to) in order, counters (kiosk, duplicate deliveries,
    quarantine dropped), quarantine (kiosk, rows, bytes)."""
    when = now or datetime.now(UTC)
    rows: dict[str, FleetRow] = {}

    def row(kiosk: str) -> FleetRow:
        if kiosk not in rows:
            rows[kiosk] = empty_row(kiosk)
        return rows[kiosk]

    for kiosk in registered:
        row(kiosk)["registered"] = True
    for kiosk, state, ts in status:
        r = row(kiosk)
        r["online"] = state == "online"
        r["status_ts"] = ts
    for kiosk, ts, received_at, doc_text in health:
        r = row(kiosk)
        r["last_health_ts"] = ts
        r["health_received_at"] = received_at
        r["health_age_s"] = _age_s(received_at, when)
        fields = doc_text if isinstance(doc_text, dict) else health_fields(doc_text)
        for key in HEALTH_FIELDS:  # copies: the caller may keep ``fields`` for its next reading
            value = fields[key]
            if isinstance(value, list):
                value = list(value)
            elif isinstance(value, dict):
                value = {name: DeviceView(**device) for name, device in value.items()}
            r[key] = value  # type: ignore[literal-required]
    for kiosk, count, synthetic, first, last, newest in counts:
        r = row(kiosk)
        r["stored"] = int(count) - int(synthetic)
        r["synthetic"] = int(synthetic)
        r["last_seq"] = int(last)
        r["last_delivery"] = newest
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
    for r in rows.values():
        seen = [t for t in (r["status_ts"], r["health_received_at"]) if t]
        r["last_seen"] = max(seen) if seen else None
        r["problems"] = judge(r, backlog_problem_hours)
    return [rows[k] for k in sorted(rows)]


def empty_row(kiosk: str) -> FleetRow:
    row: FleetRow = {**_EMPTY, "kiosk": kiosk, "region": region_of(kiosk)}  # type: ignore[typeddict-item]
    for key in ("devices", "faulty", "degraded", "kiosk_problems", "gaps", "problems"):
        row[key] = type(_EMPTY[key])()  # type: ignore[literal-required]
    return row


def judge(r: FleetRow, backlog_problem_hours: float) -> list[str]:
    """Why this kiosk needs someone, in the order to act on it."""
    out = []
    if r["online"] is False:
        out.append(f"offline since {r['status_ts']}")
    for name in r["faulty"]:
        device = r["devices"].get(name)
        detail = f": {device['detail']}" if device and device["detail"] else ""
        out.append(f"{name} {device['state'] if device else 'fault'}{detail}")
    age = r["oldest_pending_age_s"]
    if age is not None and age > backlog_problem_hours * 3600:
        out.append(
            f"backlog: oldest undelivered packet {age / 3600:.1f} h old (limit {backlog_problem_hours:g} h)"
        )
    for finding in r["kiosk_problems"]:
        if finding["code"] != "device-fault":  # already named above, with its detail
            out.append(finding["message"])
    return out


def _age_s(text: str | None, now: datetime) -> float | None:
    if not text:
        return None
    try:
        then = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return max(0.0, round((now - then).total_seconds(), 1))


def _loads(text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _text(value: Any, limit: int = 500) -> str:
    return value[:limit] if isinstance(value, str) else ""


def apply_health(row: FleetRow, doc: dict[str, Any]) -> None:
    """Read what the fleet shows from a health document, tolerating any shape (it is kiosk input)."""
    devices = doc.get("devices")
    if isinstance(devices, dict):
        for name, device in sorted(devices.items())[:16]:
            if not isinstance(device, dict):
                continue
            state = device.get("state")
            state = state if state in DEVICE_STATES else "absent"
            detail = _text(device.get("detail"))
            if detail == NOT_YET_TESTED:  # a kiosk just started: its first self-test has not run
                row["devices"][str(name)] = DeviceView(state=UNTESTED, detail=detail, hint="")
                continue
            hint = _text(device.get("hint")) or ("" if state == "ok" else default_hint(str(name)))
            row["devices"][str(name)] = DeviceView(state=state, detail=detail, hint=hint)
            if state in FAULTY_STATES:
                row["faulty"].append(str(name))
            elif state == "degraded":
                row["degraded"].append(str(name))
    queue = doc.get("queue") if isinstance(doc.get("queue"), dict) else {}
    row["backlog"] = _int(queue.get("pending"))
    row["backlog_bytes"] = _int(queue.get("pending_bytes"))
    row["oldest_pending_age_s"] = _num(queue.get("oldest_pending_age_s"))
    row["rejected"] = _int(queue.get("rejected"))
    row["damaged"] = _int(queue.get("damaged"))
    host = doc.get("host") if isinstance(doc.get("host"), dict) else {}
    synced = host.get("clock_synchronised")
    row["clock_synchronised"] = synced if isinstance(synced, bool) else None
    row["clock_unsynchronised_s"] = _num(host.get("clock_unsynchronised_s"))
    row["disk_free_bytes"] = _int(host.get("disk_free_bytes"))
    row["cpu_temp_c"] = _num(host.get("cpu_temp_c"))
    link = doc.get("link") if isinstance(doc.get("link"), dict) else {}
    row["reconnects"] = _int(link.get("reconnects"))
    row["refused_pubacks"] = _int(link.get("refused_pubacks"))
    problems = doc.get("problems")
    if isinstance(problems, list):
        row["kiosk_problems"] = [
            Finding(code=_text(p.get("code"), 64), message=_text(p.get("message")))
            for p in problems[:16]
            if isinstance(p, dict)
        ]


def device_rank(state: str | None) -> int | None:
    """A device state as a number that orders by severity (health history keeps the worst of a step)."""
    return {"ok": 0, UNTESTED: 1, "degraded": 2, "absent": 3, "fault": 4}.get(state) if state else None


RANK_STATE = {0: "ok", 1: UNTESTED, 2: "degraded", 3: "absent", 4: "fault"}
