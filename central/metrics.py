"""Prometheus metrics of the centre: its own counters (CentreMetrics) and, read from the store at
each scrape, one set of gauges per kiosk (render_metrics). docs/monitoring.md lists every metric,
its labels and the alert rules built on them (docs/alerts.yml).

Per kiosk (labels ``kiosk`` and ``region``, the id's Kemendagri code or "" when it has none);
a gauge whose figure the centre does not know for a kiosk is left out for it, never sent as 0:

    ektp_kiosk_online                     1 online, 0 offline (its last applied status)
    ektp_kiosk_status_age_seconds         since that status was applied (centre's clock)
    ektp_kiosk_last_health_age_seconds    since its last health snapshot arrived (centre's clock)
    ektp_kiosk_backlog_packets            packets waiting on the kiosk (its last snapshot)
    ektp_kiosk_backlog_bytes              their bytes
    ektp_kiosk_backlog_oldest_age_seconds the age of the oldest of them
    ektp_kiosk_device_state               1 for each device's current state (labels device, state)
    ektp_kiosk_clock_synchronised         1 synchronised, 0 not
    ektp_kiosk_rejected_packets           packets the kiosk holds as rejected by the centre
    ektp_kiosk_damaged_packets            packets the kiosk found damaged in its own store
    ektp_kiosk_seq_gaps                   seqs missing at the centre below the highest stored one
    ektp_kiosk_stored_packets             packets stored centrally (real residents)
    ektp_kiosk_problems                   how many reasons the fleet view lists for someone to act

The per-kiosk text is written here rather than through prometheus_client's ``generate_latest``:
at 10,000 kiosks (some 150,000 samples) that takes about 1.6 s, this about 0.1 s
(bench/metrics_render.py measures both). tests/test_central_metrics.py parses the output with
prometheus_client's own parser.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

from central.fleet import FleetRow

# The classic text format (0.0.4): every Prometheus since 2.0 reads it, and the body uses only
# names it allows. (prometheus_client >= 0.22 names its own output version 1.0.0.)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PACKET_STATUSES = ("stored", "duplicate", "rejected", "damaged", "conflict")
# The outcomes the quarantine is for: a rejected packet, and one whose packet id holds other
# bytes. A damaged packet from MQTT is not kept (central/ingest.py: the kiosk sends it again), so
# it is not counted; a conflict the consumer answers from a chunk (the stored packet's hash
# differs) keeps nothing either but is counted: the same person must look at that kiosk.
QUARANTINED_STATUSES = frozenset({"rejected", "conflict"})
DOCUMENT_KINDS = ("health", "status")
STORE_OPERATIONS = ("packets", "fleet")
MAX_DEVICE_LABEL = 64  # a device name is the kiosk's word (a key of its health document): cut long ones
# One store transaction: a group commit of packets or of fleet documents (milliseconds on SQLite
# with synchronous=FULL on an SSD; seconds mean the disk or the database is struggling).
STORE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class FleetStore(Protocol):
    """What render_metrics reads (central.store.CentralStore has both)."""

    def fleet(self, kiosk: str | None = None, *, backlog_problem_hours: float = 24.0) -> list[FleetRow]: ...

    def totals(self) -> dict[str, int]: ...


class CentreMetrics:
    """The centre process's own counters, on a registry of their own (not the global one).

    The consumer calls ``count`` and ``observe_store`` from its thread; a scrape reads them from
    another: prometheus_client's metrics are safe for that.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.packets = Counter(
            "ektp_central_packets",
            "Packets the consumer finished with, by what became of each (ingest.py, Outcomes)",
            ["status"],
            registry=r,
        )
        self.acks = Counter(
            "ektp_central_acks_published", "Signed ack messages published to kiosks", registry=r
        )
        self.quarantined = Counter(
            "ektp_central_quarantined",
            "Packets the consumer judged rejected or conflict, the outcomes the quarantine is for"
            " (ektp_central_quarantine_rows counts what it holds)",
            registry=r,
        )
        self.documents = Counter(
            "ektp_central_fleet_documents",
            "Health and status documents recorded in the store",
            ["kind"],
            registry=r,
        )
        self.bad_messages = Counter(
            "ektp_central_bad_messages",
            "Messages ignored as unreadable (bad topic, bad chunk, bad JSON)",
            registry=r,
        )
        self.store_errors = Counter(
            "ektp_central_store_errors",
            "Store transactions that failed (each is retried; the kiosks send again)",
            registry=r,
        )
        self.store_seconds = Histogram(
            "ektp_central_store_seconds",
            "Time of one store transaction: a batch of packets, or of fleet documents",
            ["operation"],
            buckets=STORE_BUCKETS_S,
            registry=r,
        )
        # every series from the start, at 0: rate() and alerts see a series before its first event
        for status in PACKET_STATUSES:
            self.packets.labels(status)
        for kind in DOCUMENT_KINDS:
            self.documents.labels(kind)
        for operation in STORE_OPERATIONS:
            self.store_seconds.labels(operation)
        self._counts: dict[str, Callable[[int], None]] = {
            **{status: self._packet_counter(status) for status in PACKET_STATUSES},
            "acks": self.acks.inc,
            **{kind: self.documents.labels(kind).inc for kind in DOCUMENT_KINDS},
            "bad_message": self.bad_messages.inc,
            "store_error": self.store_errors.inc,
        }

    def _packet_counter(self, status: str) -> Callable[[int], None]:
        child = self.packets.labels(status)
        if status not in QUARANTINED_STATUSES:
            return child.inc

        def inc(n: int) -> None:
            child.inc(n)
            self.quarantined.inc(n)

        return inc

    def count(self, what: str, n: int = 1) -> None:
        """Count ``n`` events of ``what``: a packet status (stored, duplicate, rejected, damaged,
        conflict), acks, health, status, bad_message or store_error.

        :raises ValueError: another name, or n below 0 (a caller's mistake, not the kiosks')
        """
        try:
            inc = self._counts[what]
        except KeyError:
            raise ValueError(f"no centre metric counts {what!r}: one of {', '.join(self._counts)}") from None
        if n < 0:
            raise ValueError(f"count({what!r}, {n}): a count cannot go down")
        if n:
            inc(n)

    def observe_store(self, operation: str, seconds: float) -> None:
        """One store transaction of ``operation`` ("packets" or "fleet") took ``seconds``.

        :raises ValueError: another operation
        """
        if operation not in STORE_OPERATIONS:
            raise ValueError(f"no store operation {operation!r}: one of {', '.join(STORE_OPERATIONS)}")
        self.store_seconds.labels(operation).observe(seconds)


def render_metrics(
    store: FleetStore, centre: CentreMetrics | None, *, backlog_problem_hours: float = 24.0
) -> tuple[bytes, str]:
    """The /metrics body and its content type: the fleet read from ``store`` now, the store's
    totals, and ``centre``'s counters when given. ``store`` must belong to the calling thread."""
    started = time.perf_counter()
    rows = store.fleet(backlog_problem_hours=backlog_problem_hours)
    totals = store.totals()
    read_s = time.perf_counter() - started
    out = kiosk_lines(rows, datetime.now(UTC))
    out += total_lines(totals, read_s)
    # "replace": a device name is kiosk input, and JSON lets it hold a lone surrogate
    body = "".join(out).encode("utf-8", "replace")
    if centre is not None:
        body += generate_latest(WithoutCreated(centre.registry))
    return body, CONTENT_TYPE


class WithoutCreated:
    """A registry's metrics without the ``*_created`` samples: in the text format each becomes a
    gauge series of its own holding the process's start time, which no rule here reads."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():  # fresh Metric objects at each call
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


# ----------------------------------------------------------------------------- the text format

KIOSK_GAUGES: tuple[tuple[str, str], ...] = (
    ("online", "1 when the kiosk's last applied status is online, 0 offline; absent if never heard"),
    (
        "status_age_seconds",
        "Seconds since the kiosk's status was applied (centre's clock): online or offline since",
    ),
    ("last_health_age_seconds", "Seconds since the kiosk's last health snapshot arrived (centre's clock)"),
    ("backlog_packets", "Packets waiting on the kiosk to be delivered (its last health snapshot)"),
    ("backlog_bytes", "Bytes of the packets waiting on the kiosk (its last health snapshot)"),
    (
        "backlog_oldest_age_seconds",
        "Age of the oldest packet waiting on the kiosk (its last health snapshot)",
    ),
    ("clock_synchronised", "1 when the kiosk's clock is synchronised, 0 not (its last health snapshot)"),
    ("rejected_packets", "Packets the kiosk holds as rejected by the centre (its last health snapshot)"),
    ("damaged_packets", "Packets the kiosk found damaged in its own store (its last health snapshot)"),
    ("seq_gaps", "Seqs missing at the centre below the kiosk's highest stored seq"),
    ("stored_packets", "Packets of the kiosk stored centrally (real residents; synthetic ones not counted)"),
    ("problems", "Reasons the fleet view lists for someone to act on the kiosk (0: none)"),
)
DEVICE_STATE_HELP = (
    "1 for each device's current state in the kiosk's last health snapshot (one series per device)"
)
TOTAL_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("kiosks", "kiosks", "Kiosks registered (with a public key) in the central store"),
    ("packets", "stored_packets", "Packets in the central store, synthetic ones included"),
    (
        "synthetic",
        "stored_synthetic_packets",
        "Synthetic packets in the central store (simulated kits' test residents)",
    ),
    ("quarantine_rows", "quarantine_rows", "Inputs held in the quarantine for a person to look at"),
    ("quarantine_bytes", "quarantine_bytes", "Bytes held in the quarantine"),
)


def kiosk_lines(rows: Iterable[FleetRow], now: datetime) -> list[str]:
    """The per-kiosk gauges in the text format, one family after another.

    Values go in with ``str`` formatting: the rows hold ints and finite floats (the store takes
    JSON of finite numbers only), whose ``str`` is the text format's number.
    """
    lines: dict[str, list[str]] = {name: [] for name, _ in KIOSK_GAUGES}
    devices: list[str] = []
    fields = [(name, lines[name].append) for name, _ in KIOSK_GAUGES]
    for row in rows:
        labels = f'kiosk="{label_value(row["kiosk"])}",region="{row["region"] or ""}"'
        online, synced = row["online"], row["clock_synchronised"]
        values = (  # in KIOSK_GAUGES order
            None if online is None else int(online),
            _age_s(row["status_ts"], now),
            row["health_age_s"],
            row["backlog"],
            row["backlog_bytes"],
            row["oldest_pending_age_s"],
            None if synced is None else int(synced),
            row["rejected"],
            row["damaged"],
            sum(end - start + 1 for start, end in row["gaps"]) if row["gaps"] else 0,
            row["stored"],
            len(row["problems"]),
        )
        for (name, append), value in zip(fields, values, strict=True):
            if value is not None:
                append(f"ektp_kiosk_{name}{{{labels}}} {value}\n")
        for device, view in row["devices"].items():
            devices.append(
                f'ektp_kiosk_device_state{{{labels},device="{label_value(device[:MAX_DEVICE_LABEL])}",'
                f'state="{view["state"]}"}} 1\n'
            )
    out: list[str] = []
    for name, help_text in KIOSK_GAUGES:
        out += _header(f"ektp_kiosk_{name}", help_text)
        out += lines[name]
    out += _header("ektp_kiosk_device_state", DEVICE_STATE_HELP)
    out += devices
    return out


def total_lines(totals: dict[str, int], read_s: float) -> list[str]:
    """The store's totals, and how long this scrape took to read the fleet."""
    out: list[str] = []
    for key, name, help_text in TOTAL_GAUGES:
        if key in totals:
            out += _header(f"ektp_central_{name}", help_text)
            out.append(f"ektp_central_{name} {int(totals[key])}\n")
    out += _header(
        "ektp_central_fleet_read_seconds", "Time this scrape took to read the fleet from the store"
    )
    out.append(f"ektp_central_fleet_read_seconds {read_s:.6f}\n")
    return out


def label_value(text: str) -> str:
    """``text`` as a label value of the text format: backslash, double quote and newline escaped."""
    if "\\" in text or '"' in text or "\n" in text:
        return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return text


def _header(name: str, help_text: str) -> list[str]:
    return [f"# HELP {name} {help_text}\n", f"# TYPE {name} gauge\n"]


def _age_s(text: str | None, now: datetime) -> float | None:
    """Seconds from a store time (RFC 3339 UTC) to ``now``, or None."""
    if not text:
        return None
    try:
        then = datetime.fromisoformat(text)
    except ValueError:
        return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return max(0.0, round((now - then).total_seconds(), 1))
