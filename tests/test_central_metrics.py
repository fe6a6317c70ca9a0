"""/metrics of the centre (central.metrics): a real store (SQLite, and PostgreSQL when reachable)
filled through its API with health documents as a kiosk's agent builds them, rendered, and read
back with prometheus_client's own parser; and the centre's counters (CentreMetrics)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from agent.health import DEVICE_NAMES, HealthReporter
from central.fleet import FleetRow, apply_health, empty_row
from central.metrics import CONTENT_TYPE, MAX_DEVICE_LABEL, CentreMetrics, label_value, render_metrics
from central.store import CentralStore, open_store
from tests import centralkit
from tests.centralkit import Kiosk
from tests.factories import SMALL_NIK
from wire.packet import read_header

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
LABEL_NAMES = {"kiosk", "region", "device", "state", "status", "kind", "operation", "le"}


@pytest.fixture(params=centralkit.BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CentralStore]:
    for url in centralkit.store_url(request.param, tmp_path):
        with open_store(url) as s:
            yield s


@pytest.fixture
def kiosk(tmp_path: Path) -> Kiosk:
    return centralkit.kiosk("320715-01", centralkit.central_keys(tmp_path))


def health_doc(
    kiosk_id: str, tmp_path: Path, devices: dict[str, dict[str, str]], **queue: Any
) -> dict[str, Any]:
    """A health document as the kiosk's agent builds it (agent.health.HealthReporter): the
    devices not named are ok."""
    tested = {name: {"state": "ok", "detail": ""} for name in DEVICE_NAMES} | devices
    reporter = HealthReporter(
        kiosk_id=kiosk_id, data_dir=tmp_path, outbox_path=tmp_path / "outbox.db", devices=lambda: tested
    )
    return reporter.snapshot(
        queue={
            "pending": 0,
            "pending_bytes": 0,
            "oldest_pending_age_s": None,
            "rejected": 0,
            "damaged": 0,
            **queue,
        },
        link={"connected": True, "reconnects": 1},
        total=40,
    )


def scrape(store: Any, centre: CentreMetrics | None = None) -> Samples:
    body, content_type = render_metrics(store, centre)
    assert content_type == CONTENT_TYPE
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"{key} twice"
            samples[key] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def of_kiosk(samples: Samples, kiosk: str) -> dict[str, float]:
    """The kiosk's gauges without device states: {name: value}."""
    return {
        name: v
        for (name, labels), v in samples.items()
        if ("kiosk", kiosk) in labels and name != "ektp_kiosk_device_state"
    }


# ----------------------------------------------------------------------------- the fleet's gauges


def test_fleet_gauges_from_a_real_store(store: CentralStore, kiosk: Kiosk, tmp_path: Path) -> None:
    store.add_kiosk(kiosk.kiosk_id, kiosk.public_pem)
    store.store_packets([(read_header(d := kiosk.seal(seq).data), d, "mqtt") for seq in (1, 2, 5)])
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    store.record_fleet_docs(
        [
            (kiosk.kiosk_id, "status", {"state": "online", "connection": 3}),
            (
                kiosk.kiosk_id,
                "health",
                health_doc(
                    kiosk.kiosk_id,
                    tmp_path,
                    {
                        "fingerprint": {"state": "ok", "detail": ""},
                        "signature": {"state": "degraded", "detail": "pen worn"},
                        "iris": {"state": "fault", "detail": "no answer on USB 1234:5678"},
                        "camera": {"state": "ok", "detail": ""},
                    },
                    pending=7,
                    pending_bytes=2_800_000,
                    oldest_pending_age_s=90_000.5,
                    rejected=2,
                ),
            ),
            # another kiosk: online, then its Last Will two hours ago
            ("320715-02", "status", {"state": "online", "connection": 1}),
            ("320715-02", "status", {"state": "offline", "connection": 1}),
        ],
        now=two_hours_ago,
    )
    # the first kiosk's health again, now: its clock unsynchronised
    doc = health_doc(kiosk.kiosk_id, tmp_path, {"iris": {"state": "fault", "detail": "no answer"}}, pending=7)
    doc["host"]["clock_synchronised"] = False
    store.record_fleet_docs([(kiosk.kiosk_id, "health", doc)])
    store.add_kiosk("999-never-heard", centralkit.kiosk("999-never-heard", kiosk.central).public_pem)

    samples = scrape(store)

    first = of_kiosk(samples, kiosk.kiosk_id)
    assert first.pop("ektp_kiosk_status_age_seconds") == pytest.approx(7200, abs=120)
    assert first.pop("ektp_kiosk_last_health_age_seconds") < 60
    assert first == {
        "ektp_kiosk_online": 1,
        "ektp_kiosk_backlog_packets": 7,
        "ektp_kiosk_backlog_bytes": 0,
        "ektp_kiosk_clock_synchronised": 0,
        "ektp_kiosk_rejected_packets": 0,
        "ektp_kiosk_damaged_packets": 0,
        "ektp_kiosk_seq_gaps": 2,  # 3 and 4
        "ektp_kiosk_stored_packets": 3,
        "ektp_kiosk_problems": 1,  # the iris
    }
    states = {
        dict(labels)["device"]: dict(labels)["state"]
        for (name, labels), v in samples.items()
        if name == "ektp_kiosk_device_state" and ("kiosk", kiosk.kiosk_id) in labels and v == 1
    }
    assert states == {"iris": "fault", "fingerprint": "ok", "signature": "ok", "camera": "ok"}
    assert value(samples, "ektp_kiosk_online", kiosk=kiosk.kiosk_id, region="320715") == 1

    offline = of_kiosk(samples, "320715-02")
    assert offline.pop("ektp_kiosk_status_age_seconds") == pytest.approx(7200, abs=120)
    assert offline == {
        "ektp_kiosk_online": 0,
        "ektp_kiosk_seq_gaps": 0,
        "ektp_kiosk_stored_packets": 0,
        "ektp_kiosk_problems": 1,  # offline
    }

    # registered, never heard: nothing is known, so nothing is claimed (no online 0, no backlog 0)
    assert of_kiosk(samples, "999-never-heard") == {
        "ektp_kiosk_seq_gaps": 0,
        "ektp_kiosk_stored_packets": 0,
        "ektp_kiosk_problems": 0,
    }
    assert value(samples, "ektp_kiosk_seq_gaps", kiosk="999-never-heard", region="") == 0

    assert value(samples, "ektp_central_kiosks") == 2  # registered
    assert value(samples, "ektp_central_stored_packets") == 3
    assert value(samples, "ektp_central_stored_synthetic_packets") == 0
    assert value(samples, "ektp_central_quarantine_rows") == 0
    assert value(samples, "ektp_central_fleet_read_seconds") >= 0  # type: ignore[operator]


def test_backlog_and_faults_from_the_first_snapshot(store: CentralStore, tmp_path: Path) -> None:
    """The first snapshot's backlog figures, device states and rejected count as sent."""
    doc = health_doc(
        "320715-03",
        tmp_path,
        {"iris": {"state": "fault", "detail": "no answer"}, "camera": {"state": "degraded", "detail": "dim"}},
        pending=12,
        pending_bytes=3_600_000,
        oldest_pending_age_s=90_000.5,
        rejected=2,
    )
    store.record_fleet_docs(
        [("320715-03", "status", {"state": "online", "connection": 1}), ("320715-03", "health", doc)]
    )
    samples = scrape(store)
    got = of_kiosk(samples, "320715-03")
    assert got["ektp_kiosk_backlog_packets"] == 12
    assert got["ektp_kiosk_backlog_bytes"] == 3_600_000
    assert got["ektp_kiosk_backlog_oldest_age_seconds"] == 90_000.5
    assert got["ektp_kiosk_rejected_packets"] == 2
    # the iris fault, the backlog over 24 h, the rejected packets
    assert got["ektp_kiosk_problems"] == 3
    fault = {"kiosk": "320715-03", "region": "320715", "device": "iris"}
    assert value(samples, "ektp_kiosk_device_state", **fault, state="fault") == 1
    assert value(samples, "ektp_kiosk_device_state", **fault, state="ok") is None  # one series per device
    assert (
        value(
            samples,
            "ektp_kiosk_device_state",
            kiosk="320715-03",
            region="320715",
            device="camera",
            state="degraded",
        )
        == 1
    )


def test_no_nik_biometrics_or_kiosk_text_reach_metrics(
    store: CentralStore, kiosk: Kiosk, tmp_path: Path
) -> None:
    """Only numbers and ids: a stored packet's resident, a kiosk's detail and problem text stay out."""
    store.add_kiosk(kiosk.kiosk_id, kiosk.public_pem)
    store.store_packets([(read_header(d := kiosk.seal(1).data), d, "mqtt")])
    doc = health_doc(
        kiosk.kiosk_id,
        tmp_path,
        {
            "fingerprint": {
                "state": "fault",
                "detail": f"finger of {SMALL_NIK} smudged-9f3",
                "hint": "Siti Rahmawati",
            }
        },
    )
    doc["problems"].append({"code": "x", "message": f"resident {SMALL_NIK} waits"})
    store.record_fleet_docs([(kiosk.kiosk_id, "health", doc)])
    body, _ = render_metrics(store, CentreMetrics())
    text = body.decode()
    assert SMALL_NIK not in text and "Siti" not in text and "smudged-9f3" not in text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            assert set(s.labels) <= LABEL_NAMES, s
            assert isinstance(s.value, int | float) and math.isfinite(s.value), s


class RowStore:
    """A store of given fleet rows: for what the real store refuses to hold (ids with odd characters)."""

    def __init__(self, rows: list[FleetRow]) -> None:
        self.rows = rows

    def fleet(self, kiosk: str | None = None, *, backlog_problem_hours: float = 24.0) -> list[FleetRow]:
        return self.rows

    def totals(self) -> dict[str, int]:
        return {
            "kiosks": len(self.rows),
            "packets": 0,
            "synthetic": 0,
            "quarantine_rows": 0,
            "quarantine_bytes": 0,
        }


ODD = 'a"b\\c\nd é'


def test_label_values_are_escaped() -> None:
    """The store refuses such kiosk ids; the text format must survive them anyway."""
    row = empty_row(ODD)
    row["online"] = True
    apply_health(row, {"devices": {ODD: {"state": "fault", "detail": ""}}})
    samples = scrape(RowStore([row]))
    assert value(samples, "ektp_kiosk_online", kiosk=ODD, region="") == 1
    assert value(samples, "ektp_kiosk_device_state", kiosk=ODD, region="", device=ODD, state="fault") == 1
    assert label_value(ODD) == 'a\\"b\\\\c\\nd é'


def test_device_names_from_a_real_kiosk_document_are_escaped_and_cut(
    store: CentralStore, tmp_path: Path
) -> None:
    long = "x" * 500
    doc = {"devices": {ODD: {"state": "fault", "detail": ""}, long: {"state": "ok", "detail": ""}}}
    store.record_fleet_docs([("320715-04", "health", doc)])
    samples = scrape(store)
    labels = {"kiosk": "320715-04", "region": "320715"}
    assert value(samples, "ektp_kiosk_device_state", **labels, device=ODD, state="fault") == 1
    assert (
        value(samples, "ektp_kiosk_device_state", **labels, device=long[:MAX_DEVICE_LABEL], state="ok") == 1
    )


def test_a_lone_surrogate_in_a_device_name_does_not_break_the_scrape() -> None:
    """JSON lets a kiosk send "\\ud800" as a key: the body is still UTF-8, the other kiosks still there."""
    odd, plain = empty_row("320715-05"), empty_row("320715-06")
    apply_health(odd, {"devices": {"cam\ud800": {"state": "ok", "detail": ""}}})
    plain["online"] = False
    samples = scrape(RowStore([odd, plain]))
    assert value(samples, "ektp_kiosk_online", kiosk="320715-06", region="320715") == 0
    assert (
        value(
            samples, "ektp_kiosk_device_state", kiosk="320715-05", region="320715", device="cam?", state="ok"
        )
        == 1
    )


# ----------------------------------------------------------------------------- the centre's counters


def test_centre_counters_count_what_the_consumer_reports() -> None:
    centre = CentreMetrics()
    for what, n in [
        ("stored", 5),
        ("stored", 2),
        ("duplicate", 1),
        ("rejected", 2),
        ("damaged", 4),
        ("conflict", 1),
        ("acks", 3),
        ("health", 10),
        ("status", 2),
        ("bad_message", 1),
        ("store_error", 1),
        ("stored", 0),
    ]:
        centre.count(what, n)
    centre.count("acks")
    centre.observe_store("packets", 0.004)
    centre.observe_store("packets", 0.2)
    centre.observe_store("fleet", 3.0)
    samples = scrape(RowStore([]), centre)
    packets = {
        s: value(samples, "ektp_central_packets_total", status=s)
        for s in ("stored", "duplicate", "rejected", "damaged", "conflict")
    }
    assert packets == {"stored": 7, "duplicate": 1, "rejected": 2, "damaged": 4, "conflict": 1}
    # the quarantine takes rejected and conflicting packets; a damaged one from MQTT is not kept
    assert value(samples, "ektp_central_quarantined_total") == 3
    assert value(samples, "ektp_central_acks_published_total") == 4
    assert value(samples, "ektp_central_fleet_documents_total", kind="health") == 10
    assert value(samples, "ektp_central_fleet_documents_total", kind="status") == 2
    assert value(samples, "ektp_central_bad_messages_total") == 1
    assert value(samples, "ektp_central_store_errors_total") == 1
    assert value(samples, "ektp_central_store_seconds_count", operation="packets") == 2
    assert value(samples, "ektp_central_store_seconds_sum", operation="packets") == pytest.approx(0.204)
    assert value(samples, "ektp_central_store_seconds_bucket", operation="packets", le="0.005") == 1
    assert value(samples, "ektp_central_store_seconds_bucket", operation="fleet", le="2.5") == 0
    assert value(samples, "ektp_central_store_seconds_bucket", operation="fleet", le="5.0") == 1


def test_every_centre_series_is_there_from_the_start() -> None:
    samples = scrape(RowStore([]), CentreMetrics())
    for status in ("stored", "duplicate", "rejected", "damaged", "conflict"):
        assert value(samples, "ektp_central_packets_total", status=status) == 0
    for kind in ("health", "status"):
        assert value(samples, "ektp_central_fleet_documents_total", kind=kind) == 0
    for operation in ("packets", "fleet"):
        assert value(samples, "ektp_central_store_seconds_count", operation=operation) == 0
    assert value(samples, "ektp_central_store_errors_total") == 0
    assert not [name for name, _ in samples if name.endswith("_created")]  # start times: noise here


def test_centre_counters_refuse_unknown_names_and_negative_counts() -> None:
    centre = CentreMetrics()
    with pytest.raises(ValueError, match="'storred'"):
        centre.count("storred")
    with pytest.raises(ValueError, match="cannot go down"):
        centre.count("stored", -1)
    with pytest.raises(ValueError, match="'packet'"):
        centre.observe_store("packet", 0.1)
    assert value(scrape(RowStore([]), centre), "ektp_central_packets_total", status="stored") == 0


def test_each_centre_has_its_own_registry_and_none_touches_the_global_one() -> None:
    before = {m.name for m in REGISTRY.collect()}
    one, two = CentreMetrics(), CentreMetrics()
    one.count("stored", 3)
    assert value(scrape(RowStore([]), two), "ektp_central_packets_total", status="stored") == 0
    assert {m.name for m in REGISTRY.collect()} == before


def test_without_a_centre_only_the_fleet_and_the_store_are_rendered() -> None:
    names = {name for name, _ in scrape(RowStore([empty_row("320715-01")]))}
    assert "ektp_kiosk_problems" in names and "ektp_central_kiosks" in names
    assert not any(n.startswith(("ektp_central_packets", "ektp_central_store_seconds")) for n in names)


def test_every_metric_served_is_in_docs_monitoring() -> None:
    row = empty_row("320715-01")
    row.update(online=True, status_ts="2026-11-27T10:00:00.000Z", health_age_s=3.0)
    apply_health(
        row,
        {
            "devices": {"iris": {"state": "fault", "detail": ""}},
            "queue": {
                "pending": 1,
                "pending_bytes": 9,
                "oldest_pending_age_s": 5.0,
                "rejected": 0,
                "damaged": 0,
            },
            "host": {"clock_synchronised": True},
        },
    )
    body, _ = render_metrics(RowStore([row]), CentreMetrics())
    families = {f.name for f in text_string_to_metric_families(body.decode())}
    assert len(families) >= 25
    documented = (Path(__file__).resolve().parent.parent / "docs" / "monitoring.md").read_text()
    for name in families:
        shown = name + "_total" if f"{name}_total " in body.decode() else name
        assert f"`{shown}" in documented, f"docs/monitoring.md does not list {shown}"
