"""What the demo knows, under one lock: its events, the receipts of its enrollments, the
kiosk's and the centre's last readings, the broker's cuts; and the two things made of it,
the view's ``Snapshot`` and the closing summary.

The counters the view shows side by side (enrolled, backlog, stored at the centre) come
from one ``Reading``, taken in this order: the receipts so far, then the kiosk's status,
then the centre's packets. Every receipt was committed before the status was read, so it
is either in the backlog or delivered; a delivered packet was stored at the centre before
its ack, so before the centre was read. Hence, in every reading,
``enrolled - backlog <= stored <= enrolled``: "0 (all delivered)" never sits beside
"stored 1 of 2".
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from demo.view import Event, Snapshot, plain_event
from demo.workdir import KIOSK_ID

EVENTS_KEPT = 50


@dataclass(slots=True)
class Cut:
    at_s: float
    for_s: float
    restored_at_s: float | None = None
    peak_backlog: int = 0
    drained_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class Reading:
    """The counters of one moment, read in an order that keeps them consistent (above)."""

    receipts: tuple[dict[str, Any], ...]  # the receipts counted before the status was read
    status: dict[str, Any]  # the kiosk's status (or, once it stopped, its outbox)
    centre_ids: frozenset[str]  # those receipts' packets at the centre, read after the status


@dataclass(slots=True)
class DemoState:
    """The demo's shared state; every field is read and written under ``lock``."""

    live: bool  # a live view draws the events; otherwise each is printed as it happens
    shown_dir: str
    duration_s: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)  # a problem stops the demo
    t0: float = field(default_factory=time.monotonic)
    phase: str = "starting"
    events: list[Event] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    receipts: list[dict[str, Any]] = field(default_factory=list)
    enroll_failures: int = 0
    next_enroll_at: float | None = None  # time.monotonic()
    status: dict[str, Any] | None = None  # the kiosk's latest status: link and devices
    reading: Reading | None = None
    centre_rows: list[dict[str, Any]] | None = None  # the centre's latest packets of this kiosk
    centre_connected: bool | None = None  # from the centre's log
    undelivered_ids: set[str] | None = None  # the outbox once the agent stopped
    cuts: list[Cut] = field(default_factory=list)
    broker_port: int | None = None
    broker_state: str = "starting"  # "up", "cut", "stopped", "starting"
    link_cut: bool = False  # the demo cut the broker and the kiosk has not reconnected since
    next_cut_at: float | None = None  # seconds since t0
    restore_at: float | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, text: str, style: str = "") -> None:
        with self.lock:
            e = Event(round(self.now(), 1), text, style)
            self.events.append(e)
            del self.events[:-EVENTS_KEPT]
            if not self.live:
                print(plain_event(e), flush=True)

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)
        self.event(text, "bold red")
        self.stop.set()

    def set(self, **values: Any) -> None:
        with self.lock:
            for k, v in values.items():
                setattr(self, k, v)

    def receipts_now(self) -> tuple[dict[str, Any], ...]:
        with self.lock:
            return tuple(self.receipts)

    def take_reading(
        self, receipts: tuple[dict[str, Any], ...], status: dict[str, Any], centre_rows: list[dict[str, Any]]
    ) -> None:
        """A reading: ``receipts`` counted first, then ``status``, then ``centre_rows``."""
        ids = {str(r.get("packet_id")) for r in receipts}
        at_centre = frozenset(str(r.get("packet_id")) for r in centre_rows) & ids
        with self.lock:
            self.reading = Reading(receipts, status, at_centre)
            self.centre_rows = centre_rows

    def apply_status(self, doc: dict[str, Any]) -> None:
        """The kiosk's latest status: events for what changed, the cut's backlog and drain."""
        notes: list[tuple[str, str]] = []
        with self.lock:
            prev = self.status or {}
            self.status = doc
            pending = doc.get("queue", {}).get("pending")
            link, prev_link = doc.get("link", {}), prev.get("link", {})
            if prev_link and link.get("connected") != prev_link.get("connected"):
                if link.get("connected"):
                    notes.append((f"link up again (reconnect {link.get('reconnects')})", "green"))
                elif self.link_cut:
                    notes.append(("link down: the demo cut the broker", "red"))
                else:
                    notes.append((f"link down: {link.get('last_error') or 'no broker'}", "red"))
            if link.get("connected") and self.broker_state == "up":
                self.link_cut = False
            for name, d in doc.get("devices", {}).items():
                before = prev.get("devices", {}).get(name, {}).get("state")
                if before is not None and before != d.get("state"):
                    notes.append((f"{name}: {before} -> {d.get('state')}", "yellow"))
            cut = self.cuts[-1] if self.cuts else None
            if cut is not None and cut.drained_after_s is None and isinstance(pending, int):
                cut.peak_backlog = max(cut.peak_backlog, pending)
                if cut.restored_at_s is not None and pending == 0:
                    cut.drained_after_s = round(self.now() - cut.restored_at_s, 1)
                    notes.append(
                        (
                            f"backlog drained: {cut.peak_backlog} packet(s) delivered "
                            f"{cut.drained_after_s:g} s after the restore",
                            "bold green",
                        )
                    )
        for text, style in notes:
            self.event(text, style)

    def pending(self) -> int | None:
        """The kiosk's backlog in its latest status."""
        with self.lock:
            pending = (self.status or {}).get("queue", {}).get("pending")
        return pending if isinstance(pending, int) else None

    def snapshot(self) -> Snapshot:
        with self.lock:
            latest = self.status or {}
            link = latest.get("link", {})
            reading = self.reading
            counted = reading.status if reading else {}
            queue = counted.get("queue", {})
            receipts = reading.receipts if reading else ()
            now = self.now()
            link_error = link.get("last_error") or ""
            if self.link_cut:
                link_error = "cut by the demo" + (
                    "" if self.broker_state == "cut" else "; the broker is back, reconnecting"
                )
            return Snapshot(
                elapsed_s=now,
                phase=self.phase,
                kiosk_id=KIOSK_ID,
                data_dir=self.shown_dir,
                duration_s=self.duration_s,
                enrolled=len(receipts),
                enroll_failures=self.enroll_failures,
                last_seq=receipts[-1].get("seq") if receipts else None,
                next_enroll_in_s=(
                    max(0.0, self.next_enroll_at - time.monotonic()) if self.next_enroll_at else None
                ),
                service=latest.get("service"),
                pending=queue.get("pending"),
                pending_bytes=queue.get("pending_bytes"),
                oldest_pending_age_s=queue.get("oldest_pending_age_s"),
                rejected=queue.get("rejected") or 0,
                link_connected=link.get("connected"),
                reconnects=link.get("reconnects"),
                link_error=link_error,
                devices={
                    n: (str(d.get("state", "?")), str(d.get("detail", "")))
                    for n, d in latest.get("devices", {}).items()
                },
                centre_stored=None if reading is None else len(reading.centre_ids),
                centre_connected=self.centre_connected,
                broker_port=self.broker_port,
                broker_state=self.broker_state,
                cut_in_s=(
                    max(0.0, self.next_cut_at - now)
                    if self.next_cut_at is not None and self.broker_state == "up" and self.phase == "running"
                    else None
                ),
                restore_in_s=(
                    max(0.0, self.restore_at - now)
                    if self.restore_at is not None and self.broker_state == "cut"
                    else None
                ),
                cuts_done=len(self.cuts),
                events=tuple(self.events[-8:]),
            )

    def summary(self) -> dict[str, Any]:
        """Receipts against the centre's store: each delivered once, the rest still in the outbox."""
        with self.lock:
            problems = list(self.problems)
            rows = list(self.centre_rows or [])
            undelivered_ids = set(self.undelivered_ids or ())
            receipts = list(self.receipts)
            enroll_failures = self.enroll_failures
            status = self.status or {}
            cuts = [asdict(c) for c in self.cuts]
        ids = [str(r.get("packet_id")) for r in receipts]
        at_centre = Counter(str(r.get("packet_id")) for r in rows)
        seqs = Counter(r.get("seq") for r in rows)
        duplicates = sum(c - 1 for c in at_centre.values() if c > 1) + sum(
            c - 1 for c in seqs.values() if c > 1
        )
        missing = [pid for pid in ids if at_centre[pid] == 0]
        undelivered = [pid for pid in missing if pid in undelivered_ids]
        lost = len(missing) - len(undelivered)
        exactly_once = duplicates == 0 and lost == 0 and len(set(ids)) == len(ids)
        return {
            "summary": "ektp demo",
            "ok": exactly_once and not problems,
            "duration_s": round(self.now(), 1),
            "enrolled": len(ids),
            "enroll_failures": enroll_failures,
            "centre_stored": len(rows),
            "delivered": len(ids) - len(missing),
            "undelivered": len(undelivered),
            "lost": lost,
            "duplicates": duplicates,
            "unexpected_at_centre": len(set(at_centre) - set(ids)),
            "exactly_once": exactly_once,
            "broker_cuts": len(cuts),
            "backlog_drained": bool(cuts) and all(c["drained_after_s"] is not None for c in cuts),
            "cuts": cuts,
            "reconnects": status.get("link", {}).get("reconnects"),
            "problems": problems,
            "dir": self.shown_dir,
        }
