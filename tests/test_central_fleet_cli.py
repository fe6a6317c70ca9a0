"""`ektp-central fleet`, `kiosk show` and `packets --since/--limit` as an operator runs them: the
console script as a subprocess on a real store filled through the store's own API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from central.store import open_store
from tests import centralkit
from tests.test_central_cli import Centre, make_centre
from wire.packet import read_header


def health(kiosk: str, *, iris: str = "ok", age_h: float = 0.1, pending: int = 3) -> dict[str, object]:
    return {
        "kiosk_id": kiosk,
        "ts": "2026-12-01T08:00:00Z",
        "devices": {
            "fingerprint": {"state": "ok", "detail": ""},
            "signature": {"state": "degraded", "detail": "pen battery low", "hint": "charge the pen"},
            "iris": {
                "state": iris,
                "detail": "" if iris == "ok" else "no answer on USB 1234:5678",
                "hint": ""
                if iris == "ok"
                else "reseat the iris camera's USB cable, then `ektp-agent diag iris`",
            },
            "camera": {"state": "ok", "detail": ""},
        },
        "queue": {
            "pending": pending,
            "pending_bytes": pending * 300_000,
            "oldest_pending_age_s": age_h * 3600,
        },
        "host": {"disk_free_bytes": 12_000_000_000, "cpu_temp_c": 51.2, "clock_synchronised": True},
        "link": {"connected": True, "reconnects": 1, "refused_pubacks": 0},
    }


@pytest.fixture
def centre(tmp_path: Path) -> Centre:
    """Three kiosks: one well (Bandung), one with a faulty iris camera (Bandung), one offline
    with a two-day backlog (Jakarta)."""
    c = make_centre(tmp_path, "data/central.db")
    (tmp_path / "data").mkdir()
    with open_store(str(tmp_path / "data" / "central.db")) as store:
        store.record_fleet_docs(
            [
                ("320715-01", "status", {"state": "online", "connection": 1}),
                ("320715-01", "health", health("320715-01")),
                ("320716-02", "status", {"state": "online", "connection": 1}),
                ("320716-02", "health", health("320716-02", iris="fault")),
                ("317101-03", "status", {"state": "offline", "connection": 4}),
                ("317101-03", "health", health("317101-03", age_h=49, pending=400)),
            ]
        )
    return c


def test_fleet_lists_problems_with_detail_and_hint_and_exits_1(centre: Centre) -> None:
    done = centre.run("fleet")
    assert done.returncode == 1, done.stderr
    out = done.stdout
    assert "OFFLINE" in out and "iris=fault" in out and "signature=degraded" in out
    assert "iris fault: no answer on USB 1234:5678" in out
    assert "hint: reseat the iris camera's USB cable" in out
    assert "signature degraded: pen battery low" in out and "hint: charge the pen" in out
    assert "problem: offline since" in out
    assert "backlog: oldest undelivered packet 49.0 h old" in out
    assert "3 kiosks listed, 2 need attention" in done.stderr  # the summary goes to stderr in a pipe


def test_fleet_filters_and_exit_0_when_the_listed_kiosks_are_well(centre: Centre) -> None:
    assert [r["kiosk"] for r in centre.json("fleet", "--offline", code=1)] == ["317101-03"]
    assert [r["kiosk"] for r in centre.json("fleet", "--faulty", code=1)] == ["320716-02"]
    assert [r["kiosk"] for r in centre.json("fleet", "--region", "32", code=1)] == ["320715-01", "320716-02"]
    assert [r["kiosk"] for r in centre.json("fleet", "--region", "320715", code=0)] == ["320715-01"]
    assert [r["kiosk"] for r in centre.json("fleet", "--backlog-hours", "24", code=1)] == ["317101-03"]
    assert centre.json("fleet", "--region", "11", code=0) == []
    assert centre.run("fleet", "--region", "320715").returncode == 0
    bad = centre.run("fleet", "--region", "3207x")
    assert bad.returncode == 2 and "2 digits (province" in bad.stderr


def test_fleet_json_row_says_last_seen_by_the_centres_clock(centre: Centre) -> None:
    rows = {r["kiosk"]: r for r in centre.json("fleet", code=1)}
    row = rows["320715-01"]
    assert row["last_health_ts"] == "2026-12-01T08:00:00Z"  # the kiosk's clock, as it sent it
    seen = datetime.fromisoformat(row["last_seen"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - seen).total_seconds()) < 120  # the centre's clock
    assert row["problems"] == [] and row["degraded"] == ["signature"]
    assert rows["320716-02"]["problems"] == ["iris fault: no answer on USB 1234:5678"]


def test_kiosk_show_text_json_and_unknown(centre: Centre, tmp_path: Path) -> None:
    kiosk = centralkit.kiosk("320715-01", centralkit.central_keys(tmp_path / "k"))
    with open_store(str(tmp_path / "data" / "central.db")) as store:
        store.add_kiosk(kiosk.kiosk_id, kiosk.public_pem)
        items = []
        for seq in range(1, 4):
            data = kiosk.seal(seq).data
            items.append((read_header(data), data, "mqtt"))
        store.store_packets(items)
    done = centre.run("kiosk", "show", "320715-01")
    assert done.returncode == 0, done.stderr
    assert (
        "online since" in done.stdout and "signature" in done.stdout and "hint: charge the pen" in done.stdout
    )
    assert "newest packets (3)" in done.stdout
    doc = centre.json("kiosk", "show", "320715-01")
    assert doc["kiosk"]["stored"] == 3 and [p["seq"] for p in doc["packets"]] == [1, 2, 3]
    assert doc["health"]["queue"]["pending"] == 3 and doc["quarantine"] == []
    assert "data" not in doc["packets"][0]  # never content
    assert centre.run("kiosk", "show", "320716-02").returncode == 1  # its iris is in fault
    unknown = centre.run("kiosk", "show", "320799-99")
    assert unknown.returncode == 1 and "knows nothing of kiosk 320799-99" in unknown.stderr
    assert centre.run("kiosk", "show", "../etc").returncode == 2


def test_packets_since_and_limit(centre: Centre, tmp_path: Path) -> None:
    kiosk = centralkit.kiosk("320715-01", centralkit.central_keys(tmp_path / "k"))
    with open_store(str(tmp_path / "data" / "central.db")) as store:
        store.add_kiosk(kiosk.kiosk_id, kiosk.public_pem)
        for seq in range(1, 5):
            data = kiosk.seal(seq).data
            store.store_packets([(read_header(data), data, "mqtt")])
    assert [p["seq"] for p in centre.json("packets", "--limit", "2")] == [3, 4]
    assert len(centre.json("packets", "--since", "10m")) == 4
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert centre.json("packets", "--since", future) == []
    bad = centre.run("packets", "--since", "last tuesday")
    assert bad.returncode == 2 and "RFC 3339" in bad.stderr and "30m" in bad.stderr
    assert centre.run("packets", "--limit", "0").returncode == 2
