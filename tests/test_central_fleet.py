"""The fleet's tables: batched status and health, the bounded health history, the problems a
row names, deliveries over time and packets since a time. Real SQLite files and the local
PostgreSQL (centralkit.BACKENDS)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from central.fleet import apply_health, empty_row, region_of
from central.store import SCHEMA_VERSION, CentralStore, StoreInputError, open_store
from central.store_fleet import HOUR_S, STEP_S
from tests import centralkit
from tests.centralkit import Kiosk
from wire.packet import read_header

T0 = datetime(2026, 11, 30, 0, 0, 0, tzinfo=UTC)  # a whole hour: steps and hours start on it


@pytest.fixture(params=centralkit.BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CentralStore]:
    for url in centralkit.store_url(request.param, tmp_path):
        with open_store(url) as s:
            yield s


@pytest.fixture
def kiosk(tmp_path: Path) -> Kiosk:
    return centralkit.kiosk("320715-01", centralkit.central_keys(tmp_path))


def health(pending: int, *, iris: str = "ok", detail: str = "", age: float = 60.0) -> dict[str, object]:
    return {
        "kiosk_id": "320715-01",
        "ts": "2026-11-30T00:00:00Z",
        "devices": {
            "fingerprint": {"state": "ok", "detail": ""},
            "signature": {"state": "ok", "detail": ""},
            "iris": {"state": iris, "detail": detail, "hint": "reseat the iris camera's USB cable"},
            "camera": {"state": "absent", "detail": "not yet tested"},
        },
        "queue": {"pending": pending, "pending_bytes": pending * 1000, "oldest_pending_age_s": age},
        "host": {"disk_free_bytes": 5_000_000_000, "cpu_temp_c": 48.5, "clock_synchronised": False},
        "link": {"connected": True, "reconnects": 2, "refused_pubacks": 3},
        "problems": [{"code": "store-full", "message": "store full: get the link back"}],
    }


def test_a_step_keeps_the_highest_backlog_and_the_worst_device_state(store: CentralStore) -> None:
    k = "320715-01"
    store.record_fleet_docs([(k, "health", health(5))], now=T0 + timedelta(seconds=10))
    store.record_fleet_docs(
        [(k, "health", health(9, iris="fault", detail="no answer"))], now=T0 + timedelta(seconds=40)
    )
    store.record_fleet_docs([(k, "health", health(2))], now=T0 + timedelta(seconds=70))  # same 5-minute step
    store.record_fleet_docs(
        [(k, "health", health(1))], now=T0 + timedelta(seconds=STEP_S + 5)
    )  # the next step
    points = store.health_history(k, T0.timestamp())
    assert [(p["bucket"], p["span_s"], p["samples"], p["backlog"]) for p in points] == [
        (int(T0.timestamp()), STEP_S, 3, 9),
        (int(T0.timestamp()) + STEP_S, STEP_S, 1, 1),
    ]
    assert points[0]["devices"] == {
        "fingerprint": "ok",
        "signature": "ok",
        "iris": "fault",
        "camera": "untested",
    }
    assert points[1]["devices"]["iris"] == "ok"
    assert points[0]["backlog_bytes"] == 9000 and points[0]["oldest_pending_age_s"] == 60.0


def test_old_steps_fold_into_hours_once_and_old_hours_are_deleted(store: CentralStore) -> None:
    k = "320715-01"
    for minute in range(0, 120, 5):  # two hours of 5-minute steps, a fault in the first hour only
        iris = "fault" if minute == 20 else "ok"
        store.record_fleet_docs(
            [(k, "health", health(minute, iris=iris))], now=T0 + timedelta(minutes=minute)
        )
    assert store.history_rows() == {"health_steps": 24, "health_hours": 0}

    later = T0 + timedelta(hours=2, minutes=30)
    done = store.compact_health_history(1, 31, now=later)  # keep 1 hour of steps: the first hour folds
    assert done == {"folded": 12, "hours_written": 1, "deleted": 0}
    assert store.compact_health_history(1, 31, now=later)["folded"] == 0  # folded once only
    points = store.health_history(k, T0.timestamp())
    hour, *steps = points
    assert (hour["bucket"], hour["span_s"], hour["samples"], hour["backlog"]) == (
        int(T0.timestamp()),
        HOUR_S,
        12,
        55,
    )
    assert hour["devices"]["iris"] == "fault"  # a fault of one step still shows in its hour
    assert [p["span_s"] for p in steps] == [STEP_S] * 12

    gone = store.compact_health_history(1, 1, now=T0 + timedelta(days=1, minutes=30))
    assert gone == {
        "folded": 12,
        "hours_written": 1,
        "deleted": 1,
    }  # the second hour folds; the first is past a day
    assert [p["bucket"] for p in store.health_history(k, T0.timestamp())] == [int(T0.timestamp()) + HOUR_S]


def test_a_batch_applies_statuses_in_order_and_refuses_a_bad_document_whole(store: CentralStore) -> None:
    k = "320715-01"
    applied = store.record_fleet_docs(
        [
            (k, "status", {"state": "online", "connection": 2}),
            (k, "status", {"state": "offline", "connection": 1}),  # a late Will of an older connection
            (k, "health", health(3)),
        ]
    )
    assert applied == [True, False, True]
    assert store.status(k)["state"] == "online"  # type: ignore[index]
    with pytest.raises(StoreInputError, match="320715-02"):
        store.record_fleet_docs([(k, "health", health(4)), ("320715-02", "status", {"state": "asleep"})])
    assert store.health(k)["queue"]["pending"] == 3  # type: ignore[index]  # nothing of the bad batch


def test_fleet_row_reads_the_snapshot_and_names_the_problems(store: CentralStore) -> None:
    k = "320715-01"
    store.record_fleet_docs([(k, "status", {"state": "offline", "connection": 1})])
    store.record_fleet_docs([(k, "health", health(7, iris="fault", detail="no answer", age=30 * 3600.0))])
    (row,) = store.fleet(k, backlog_problem_hours=24)
    assert row["devices"]["iris"] == {
        "state": "fault",
        "detail": "no answer",
        "hint": "reseat the iris camera's USB cable",
    }
    assert row["devices"]["camera"]["state"] == "untested" and "camera" not in row["faulty"]
    assert (row["disk_free_bytes"], row["cpu_temp_c"], row["clock_synchronised"]) == (
        5_000_000_000,
        48.5,
        False,
    )
    assert (row["reconnects"], row["refused_pubacks"], row["backlog_bytes"]) == (2, 3, 7000)
    assert row["problems"] == [
        f"offline since {row['status_ts']}",
        "iris fault: no answer",
        "backlog: oldest undelivered packet 30.0 h old (limit 24 h)",
        "store full: get the link back",
    ]
    assert store.fleet(k, backlog_problem_hours=48)[0]["problems"][2] == "store full: get the link back"
    assert store.fleet("320715-99") == []


def test_a_hostile_health_document_reads_as_unknowns() -> None:
    row = empty_row("320715-01")
    apply_health(
        row,
        {
            "devices": {"iris": {"state": "on fire", "detail": 7, "hint": ["x"]}, "x": "y"},
            "queue": {"pending": True, "pending_bytes": "lots", "oldest_pending_age_s": None},
            "host": {"clock_synchronised": "yes", "cpu_temp_c": "hot"},
            "link": [],
            "problems": ["not a finding", {"code": 1, "message": "<script>"}],
        },
    )
    assert row["devices"] == {
        "iris": {"state": "absent", "detail": "", "hint": row["devices"]["iris"]["hint"]}
    }
    assert row["backlog"] is None and row["backlog_bytes"] is None and row["cpu_temp_c"] is None
    assert row["clock_synchronised"] is None and row["refused_pubacks"] is None
    assert row["kiosk_problems"] == [{"code": "", "message": "<script>"}]  # kept as text; pages escape it


def test_region_is_the_ids_first_six_digits() -> None:
    assert region_of("320715-01") == "320715"
    assert region_of("3207-01") is None and region_of("kiosk-a") is None


def test_deliveries_and_packets_since_and_limit(store: CentralStore, kiosk: Kiosk) -> None:
    store.add_kiosk(kiosk.kiosk_id, kiosk.public_pem)
    items = []
    for seq in range(1, 6):
        data = kiosk.seal(seq).data
        items.append((read_header(data), data, "mqtt"))
    store.store_packets(items)
    later = kiosk.seal(6).data
    store.store_packets([(read_header(later), later, "mqtt")])  # received after the first five
    rows = store.packets(kiosk.kiosk_id)
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["seq"] for r in store.packets(limit=1)] == [6]
    assert len(store.packets(kiosk.kiosk_id, limit=3)) == 3
    newest = rows[-1]["received_at"]
    assert all(r["received_at"] >= newest for r in store.packets(since=newest))
    assert 6 in [r["seq"] for r in store.packets(since=newest)]
    with pytest.raises(StoreInputError, match="RFC 3339"):
        store.packets(since="yesterday")
    with pytest.raises(StoreInputError, match="limit"):
        store.packets(limit=0)
    steps = store.deliveries(kiosk.kiosk_id, T0.timestamp(), 3600)
    assert sum(s["packets"] for s in steps) == 6
    assert sum(s["bytes"] for s in steps) == sum(r["bytes"] for r in rows)
    assert store.deliveries(kiosk.kiosk_id, datetime.now(UTC).timestamp() + 60, 3600) == []


def test_totals_count_the_whole_store(store: CentralStore, kiosk: Kiosk) -> None:
    store.add_kiosk(kiosk.kiosk_id, kiosk.public_pem)
    data = kiosk.seal(1).data
    store.store_packets([(read_header(data), data, "mqtt")])
    store.quarantine(b"junk", kiosk_hint="320715-01", reason="damaged: not a packet", source="import")
    assert store.totals() == {
        "kiosks": 1,
        "packets": 1,
        "synthetic": 0,
        "quarantine_rows": 1,
        "quarantine_bytes": 4,
    }


def test_history_survives_a_reopen_at_this_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "central.db"
    with open_store(str(path)) as s:
        s.record_fleet_docs([("320715-01", "health", health(1))], now=T0)
        assert s.schema_version() == SCHEMA_VERSION >= 4
    with open_store(str(path)) as s:
        assert len(s.health_history("320715-01", T0.timestamp())) == 1
        assert json.loads(json.dumps(s.fleet()))[0]["backlog"] == 1


def test_a_reading_parses_again_only_what_changed_and_shows_every_change(store: CentralStore) -> None:
    docs = [(f"320715-{i:02d}", "health", health(i)) for i in range(1, 6)]
    store.record_fleet_docs(docs)
    first = {r["kiosk"]: r for r in store.fleet()}
    assert first["320715-03"]["backlog"] == 3
    first["320715-02"]["faulty"].append("mutated by a caller")  # rows are the caller's own
    store.record_fleet_docs([("320715-03", "health", health(42, iris="fault", detail="gone"))])
    store.record_fleet_docs([("320715-06", "health", health(6))])  # a new kiosk
    second = {r["kiosk"]: r for r in store.fleet()}
    assert second["320715-03"]["backlog"] == 42 and second["320715-03"]["faulty"] == ["iris"]
    assert second["320715-06"]["backlog"] == 6 and second["320715-01"]["backlog"] == 1
    assert second["320715-02"]["faulty"] == [] and second["320715-02"]["devices"]["iris"]["state"] == "ok"
    assert store.fleet("320715-03")[0]["backlog"] == 42  # one kiosk's reading: always fresh
