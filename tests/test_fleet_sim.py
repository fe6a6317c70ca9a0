"""The fleet simulator (`ektp-sim fleet`, hw_sim.fleet): its kiosks publish what real ones do.

In process: kiosk ids from region codes, the health document against the agent's own
(HealthReporter.snapshot) and against what the centre reads of it (central.fleet.apply_health),
the fault rate. End to end, as a user runs it: 50 kiosks every second on a real Mosquitto into
a real `ektp-central run` whose store has their keys; every kiosk shows online with its health,
faults show with their hints, a trickle of packets is stored as synthetic, and a clean stop
says offline for every kiosk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agent.health import HealthReporter
from agent.link.stats import LinkStats
from agent.outbox import OutboxStats
from agent.service import queue_json
from central.fleet import DEVICE_STATES, apply_health, default_hint, empty_row
from central.store import open_store
from hw_sim.fleet import (
    DEFAULT_REGIONS,
    FAULT_TICKS,
    FAULTS,
    FleetOptions,
    FleetSimulator,
    SimKiosk,
    health_doc,
    kiosk_ids,
)
from tests.agentkit import script
from tests.centralkit import PG_URL
from tests.linkkit import Watcher, wait_for
from tests.netkit import Broker, free_port
from wire.keys import create_central_keys, public_path

KIOSKS = 50
REPO = Path(__file__).resolve().parent.parent
FAULT_HINTS = {(f.device, f.hint) for f in FAULTS}


def key_tree(doc: Any, depth: int) -> Any:
    """The keys of ``doc`` down to ``depth`` levels (the shape, not the values)."""
    if not isinstance(doc, dict) or depth == 0:
        return None
    return {k: key_tree(v, depth - 1) for k, v in doc.items()}


# ----------------------------------------------------------------------------- in process


def test_kiosk_ids_take_the_region_codes_in_turn() -> None:
    assert kiosk_ids(5, ["320715", "720801"]) == [
        "320715-0001",
        "720801-0001",
        "320715-0002",
        "720801-0002",
        "320715-0003",
    ]
    ids = kiosk_ids(30_000, ["320715"])
    assert ids[-1] == "320715-30000" and ids[0] == "320715-00001" and len(set(ids)) == 30_000
    with pytest.raises(ValueError, match="6 digits"):
        FleetSimulator(FleetOptions(kiosks=1, regions=("32071",)))


def test_health_is_the_agents_document_and_the_centre_reads_it(tmp_path: Path) -> None:
    """Same keys as HealthReporter.snapshot's at every level (devices add the hint the fleet view
    shows); every figure the centre's fleet row takes from a health document is there."""
    agent_doc = HealthReporter(
        kiosk_id="320715-0001",
        data_dir=tmp_path,
        outbox_path=tmp_path / "outbox.db",
        devices=lambda: {
            n: {"state": "ok", "detail": ""} for n in ("fingerprint", "signature", "iris", "camera")
        },
    ).snapshot(
        queue=queue_json(OutboxStats(0, 0, 0, 0, 0, None, 0, 0, False, 8_000_000_000)),
        link=LinkStats().to_json(),
        total=0,
    )
    k = SimKiosk("320715-0001", 0, 0.0, 0)
    k.fault = next(f for f in FAULTS if f.state == "fault")
    doc = json.loads(
        json.dumps(
            health_doc(
                k, link=LinkStats(connected=True), now=time.monotonic(), wall=time.time(), temp_noise=0.0
            )
        )
    )

    shape, agent_shape = key_tree(doc, 3), key_tree(agent_doc, 3)
    for name in shape["devices"]:
        assert shape["devices"][name] == {"state": None, "detail": None, "hint": None}
        agent_shape["devices"][name] = {**agent_shape["devices"][name], "hint": None}
    assert shape == agent_shape
    assert doc["ts"].endswith("Z") and len(doc["ts"]) == len("2026-12-01T10:00:00.123Z")

    row = empty_row("320715-0001")
    apply_health(row, doc)
    for column in (
        "backlog",
        "backlog_bytes",
        "rejected",
        "damaged",
        "clock_synchronised",
        "disk_free_bytes",
        "cpu_temp_c",
        "reconnects",
        "refused_pubacks",
    ):
        assert row[column] is not None, column  # type: ignore[literal-required]
    assert set(row["devices"]) == {"fingerprint", "signature", "iris", "camera"}
    assert row["faulty"] == [k.fault.device]
    assert row["devices"][k.fault.device]["hint"] == k.fault.hint != default_hint(k.fault.device)
    assert [p["code"] for p in row["kiosk_problems"]] == ["device-fault"]


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5])
def test_the_fault_rate_is_the_fraction_in_fault(rate: float) -> None:
    sim = FleetSimulator(FleetOptions(kiosks=4000, fault_rate=rate, seed=5))
    sim.prepare()
    fractions = []
    for _ in range(3 * FAULT_TICKS[1]):
        for k in sim.kiosks:
            sim._age_fault(k)
        fractions.append(sum(k.fault is not None for k in sim.kiosks) / len(sim.kiosks))
    assert max(fractions) <= rate + 0.03 and min(fractions) >= rate - 0.03, fractions
    if rate:
        states = Counter(k.fault.state for k in sim.kiosks if k.fault)
        assert set(states) == {"fault", "degraded"}, states


# ----------------------------------------------------------------------------- against a broker and a centre


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait(10)


def test_a_fleet_reaches_the_centre_as_kiosks_do(tmp_path: Path, broker: Broker) -> None:
    central_key, db, keys = tmp_path / "central.key", tmp_path / "central.db", tmp_path / "fleet-keys"
    create_central_keys(central_key)
    conf = tmp_path / "central.toml"
    conf.write_text(
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n[store]\nurl = "{db}"\n'
        f'[keys]\ncentral_private_key = "{central_key}"\n'
    )
    sim = script("ektp-sim")
    p = subprocess.run(
        [sim, "fleet", "--kiosks", str(KIOSKS), "--keys-dir", str(keys), "--keys-only"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    listing = [line.split() for line in (keys / "kiosks.txt").read_text().splitlines()]
    assert len(listing) == KIOSKS
    ids = [kiosk for kiosk, _ in listing]
    # one kiosk registered as an operator does, the others straight into the store (49 processes are slow)
    p = subprocess.run(
        [
            script("ektp-central"),
            "--config",
            str(conf),
            "kiosk",
            "add",
            ids[0],
            "--public-key",
            listing[0][1],
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    with open_store(str(db)) as store:
        for kiosk, pub in listing[1:]:
            store.add_kiosk(kiosk, Path(pub).read_bytes())

    centre = spawn([script("ektp-central"), "--config", str(conf), "run"], tmp_path / "central.log")
    fleet: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: "consuming $share/" in (tmp_path / "central.log").read_text(), 15, "the centre")
        out = tmp_path / "fleet.out"
        with open(out, "wb") as stdout, open(tmp_path / "fleet.log", "wb") as stderr:
            fleet = subprocess.Popen(
                [
                    sim,
                    "fleet",
                    "--kiosks",
                    str(KIOSKS),
                    "--broker",
                    f"127.0.0.1:{broker.port}",
                    "--interval",
                    "1",
                    "--keys-dir",
                    str(keys),
                    "--central-public-key",
                    str(public_path(central_key)),
                    "--fault-rate",
                    "0.2",
                    "--packets-per-hour",
                    "7200",
                    "--seed",
                    "3",
                    "--json",
                ],
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        reader = open_store(str(db))
        try:

            def arrived() -> bool:
                rows = reader.fleet()
                return (
                    len(rows) == KIOSKS
                    and all(r["online"] and r["health_received_at"] for r in rows)
                    and len([r for r in reader.packets() if r["kiosk"] in ids]) >= 3
                )

            wait_for(arrived, 20, "every kiosk online with its health, and three packets", step=0.3)
            rows = reader.fleet()
            for r in rows:
                assert r["registered"] and set(r["devices"]) == {"fingerprint", "signature", "iris", "camera"}
                assert all(d["state"] in DEVICE_STATES for d in r["devices"].values()), r["devices"]
                doc = reader.health(r["kiosk"])
                assert doc is not None and doc["kiosk_id"] == r["kiosk"]
                row = empty_row(r["kiosk"])
                apply_health(row, doc)
                for column in (
                    "backlog",
                    "backlog_bytes",
                    "rejected",
                    "damaged",
                    "clock_synchronised",
                    "disk_free_bytes",
                    "cpu_temp_c",
                    "reconnects",
                    "refused_pubacks",
                ):
                    assert row[column] is not None, (column, doc)  # type: ignore[literal-required]
            troubled = [(n, d) for r in rows for n, d in r["devices"].items() if d["state"] != "ok"]
            assert troubled, "a fault rate of 0.2 over 50 kiosks shows faults"
            assert all((n, d["hint"]) in FAULT_HINTS for n, d in troubled), troubled
            assert {d["state"] for _, d in troubled} <= {"fault", "degraded"}

            packets = reader.packets()
            assert packets and all(p["synthetic"] for p in packets), packets
            by_kiosk: dict[str, list[int]] = {}
            for p in packets:
                by_kiosk.setdefault(p["kiosk"], []).append(p["seq"])
            assert all(sorted(s) == list(range(1, len(s) + 1)) for s in by_kiosk.values()), by_kiosk
        finally:
            reader.close()

        assert stop(fleet) == 0, (tmp_path / "fleet.log").read_text()
        report = json.loads(out.read_text().strip().splitlines()[-1])
        assert report["errors"] == 0 and report["rejected"] == 0, report
        assert report["stored"] >= 3 and report["health"] >= KIOSKS and report["status"] == 2 * KIOSKS, report

        with open_store(str(db)) as store:
            wait_for(lambda: all(r["online"] is False for r in store.fleet()), 10, "every kiosk offline")
            # stored and acked, or stored with the ack still on its way at the stop
            assert report["stored"] <= len(store.packets()) <= report["packets"], report
    finally:
        if fleet is not None:
            stop(fleet)
        stop(centre)


def test_after_a_broker_restart_every_kiosk_says_online_again(tmp_path: Path, broker: Broker) -> None:
    """The broker forgets the retained statuses (no persistence); the pool reconnects and each
    kiosk says online again, with a higher connection counter, so the centre takes it."""
    kiosks = 20
    watcher = Watcher(broker.port, "ektp/v1/+/status")
    fleet = spawn(
        [
            script("ektp-sim"),
            "fleet",
            "--kiosks",
            str(kiosks),
            "--broker",
            f"127.0.0.1:{broker.port}",
            "--interval",
            "1",
            "--json",
        ],
        tmp_path / "fleet.log",
    )
    try:
        ids = kiosk_ids(kiosks, DEFAULT_REGIONS)

        def online(counter: Callable[[int], bool]) -> bool:
            last = [watcher.statuses(k) for k in ids]
            return all(s and s[-1]["state"] == "online" and counter(s[-1]["connection"]) for s in last)

        wait_for(lambda: online(lambda c: True), 15, "every kiosk online")
        first = watcher.statuses(ids[0])[-1]["connection"]
        broker.restart()
        wait_for(lambda: online(lambda c: c == first + 1), 30, "every kiosk online again, connection + 1")
        assert stop(fleet) == 0
        assert all(watcher.statuses(k)[-1]["state"] == "offline" for k in ids)
        log = (tmp_path / "fleet.log").read_text()
        assert "connection 0 to the broker lost" in log and "is back" in log, log
    finally:
        stop(fleet)
        watcher.close()


def test_fleet_needs_a_broker_that_answers(tmp_path: Path) -> None:
    p = subprocess.run(
        [script("ektp-sim"), "fleet", "--kiosks", "2", "--broker", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1 and "cannot connect to the broker" in p.stderr, p.stderr
    p = subprocess.run(
        [script("ektp-sim"), "fleet", "--kiosks", "2"], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2 and "--broker" in p.stderr, p.stderr


def test_a_broker_that_refuses_the_connection_is_named(tmp_path: Path) -> None:
    closed = Broker(tmp_path / "broker", extra_config="allow_anonymous false")
    closed.start()
    try:
        p = subprocess.run(
            [script("ektp-sim"), "fleet", "--kiosks", "2", "--broker", f"127.0.0.1:{closed.port}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        closed.stop()
    assert p.returncode == 1 and "did not take the connection: Not authorized" in p.stderr, p.stderr


def test_the_device_commands_still_need_a_dir() -> None:
    env = {k: v for k, v in os.environ.items() if k != "EKTP_SIM_DIR"}
    p = subprocess.run([script("ektp-sim"), "status"], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 2 and "--dir" in p.stderr, p.stderr


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_scale_bench_runs_bounded() -> None:
    """bench/fleet_scale.py --quick: 200 kiosks into a centre on PostgreSQL, then a week of 20
    kiosks' history. Its times are the bench's business; here: it ran, every health document
    of the window reached the store, the pages answered, and the week's history holds one row
    per 5-minute step for [store] health_detail_hours and one per hour before that."""
    try:
        psycopg.connect(PG_URL, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        if os.environ.get("EKTP_REQUIRE_PG") == "1":
            pytest.fail(f"PostgreSQL at {PG_URL} is unreachable: {exc}")
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable: {exc}")
    p = subprocess.run(
        [sys.executable, "bench/fleet_scale.py", "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    (scale,) = summary["scales"]
    assert scale["health_seen"] >= 0.95 * scale["health_expected"], scale
    assert scale["simulator"]["errors"] == 0 and scale["packets_stored"] > 0, scale
    for page in ("page", "metrics", "kiosk_page"):
        assert scale[page]["status"] == [200] and scale[page]["bytes"] > 0, scale[page]
    assert scale["exits"] == {"simulator": 0, "centre": 0}, scale
    week = summary["week"]
    kiosks, detail = week["kiosks"], week["detail_hours"]
    assert week["sizes"]["health_steps"]["rows"] == kiosks * detail * 12, week
    assert week["sizes"]["health_hours"]["rows"] == kiosks * (7 * 24 - detail), week
    assert week["sizes"]["kiosk_health"]["rows"] == kiosks, week
