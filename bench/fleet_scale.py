"""Fleet scale: N simulated kiosks publishing health every 30 s into ONE centre process on
PostgreSQL, at 1,000 and then 10,000 kiosks, and the health history's size after a week.

Each scale runs on parts of its own: a fresh PostgreSQL database (``ektp_bench_<pid>_<n>``
on the server of $EKTP_TEST_PG, default postgresql://postgres@127.0.0.1:5432/test, dropped
at the end), a Mosquitto on a free loopback port (no limit on queued messages: the centre's
session must not lose health while it catches up), `ektp-central run` as a child with its
web view on a free loopback port, and `ektp-sim fleet` (hw_sim.fleet) with every kiosk's key
registered in the store, 2 % of kiosks in fault at any moment and a trickle of packets.

After a warm-up (every kiosk's first status and health stored), a steady window of
``--duration`` seconds measures:

- health lag: for every health document published in the window, the centre's store time
  (``kiosk_health.received_at``, stamped by the consumer when it records the batch, the
  commit a few ms after) minus the simulator's publish time (its ``ts``, milliseconds; the
  same host clock). A reader polls the table every SAMPLE_S, so it sees every document
  (each row lives one interval) and also gives "visible": the first poll that saw it minus
  ``ts``, which includes the commit and is an upper bound by up to SAMPLE_S.
- CPU: the centre process's user + system time over the window (/proc/PID/stat) in cores,
  and, beside it, that of its PostgreSQL backends (their process titles name the database),
  the broker and the simulator. No page is fetched during the window.
- after the window, with the fleet still publishing: the fleet page ``/`` and ``/metrics``,
  each fetched PAGE_FETCHES times, SAMPLE_GAP_S apart so that the web view's fleet cache
  (half of ``[web] refresh_s``, set to 2 here) never answers: every fetch reads the store
  and renders.

The week: a fresh database, ``--week-kiosks`` kiosks' health documents recorded with the
store's own methods on a moved clock (store.record_fleet_docs(..., now=t), and
store.compact_health_history(detail_hours, retention_days, now=t) every simulated hour, as
the consumer runs it): one document per kiosk per 5-minute step for the last
``[store] health_detail_hours``, one per hour before that (a step's row is the same row
whatever number of documents it merges, so the table sizes are those of a document every
30 s). Rows and bytes per table are counted; per kiosk they are constant, so the figure for
10,000 kiosks is scaled from them when fewer were simulated (said so in the output).

    .venv/bin/python bench/fleet_scale.py                    # 1,000 then 10,000 kiosks, 120 s each
    .venv/bin/python bench/fleet_scale.py --kiosks 10000 --duration 300
    .venv/bin/python bench/fleet_scale.py --quick            # 200 kiosks every 2 s, a bounded check

Goals (issue 12): lag p99 <= 5 s, the centre <= 1 core, the page <= 1 s and /metrics <= 1 s
at 10,000 kiosks. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from agent.link.stats import LinkStats
from central.config import DEFAULT_HEALTH_DETAIL_HOURS, DEFAULT_HEALTH_RETENTION_DAYS
from central.store import open_store
from hw_sim.fleet import FleetOptions, FleetSimulator, health_doc, kiosk_key_path
from tests.agentkit import script
from tests.netkit import Broker, free_port, wait_port
from wire.keys import create_central_keys, public_path

PG_URL = os.environ.get("EKTP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
GOALS = {"lag_p99_s": 5.0, "centre_cores": 1.0, "page_s": 1.0, "metrics_s": 1.0}
SAMPLE_S = 1.0  # how often the lag reader polls kiosk_health
PAGE_FETCHES = 5
WEB_REFRESH_S = 2  # [web] refresh_s: the web view keeps its fleet reading half of it
SAMPLE_GAP_S = 1.2  # between page fetches: longer than that cache, so every fetch reads the store
FAULT_RATE = 0.02
WARMUP_EXTRA_S = 60.0  # the warm-up waits one interval and at most this much more
BROKER_LIMITS = "max_queued_messages 0\nmax_inflight_messages 0\n"  # 0: no maximum
CLK_TCK = os.sysconf("SC_CLK_TCK")
FLEET_BATCH = 1000  # documents per record_fleet_docs call in the week (the consumer's batch)


# ----------------------------------------------------------------------------- PostgreSQL


def db_url(name: str) -> str:
    """$EKTP_TEST_PG with its database replaced by ``name``."""
    parts = urlsplit(PG_URL)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextlib.contextmanager
def fresh_database(name: str) -> Any:
    """A new database ``name`` on the server, dropped (with its connections) on the way out."""
    with psycopg.connect(PG_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield db_url(name)
    finally:
        with psycopg.connect(PG_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def table_sizes(url: str, tables: list[str]) -> tuple[dict[str, dict[str, int]], int]:
    """Rows and bytes (table, indexes and TOAST: pg_total_relation_size) of each table after VACUUM
    FULL (the live data: the dead row versions of a replay faster than autovacuum are not kept),
    and the bytes of the database beside them (catalogs, empty tables)."""
    out = {}
    with psycopg.connect(url, autocommit=True) as pg:
        for t in tables:
            pg.execute(f"VACUUM FULL ANALYZE {t}")
            (rows,) = pg.execute(f"SELECT count(*) FROM {t}").fetchone() or (0,)
            (size,) = pg.execute("SELECT pg_total_relation_size(%s)", [t]).fetchone() or (0,)
            out[t] = {"rows": int(rows), "bytes": int(size)}
        (db_bytes,) = pg.execute("SELECT pg_database_size(current_database())").fetchone() or (0,)
    return out, int(db_bytes) - sum(v["bytes"] for v in out.values())


# ----------------------------------------------------------------------------- processes and CPU


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def backends_of(database: str) -> list[int]:
    """The PostgreSQL backends serving ``database`` (their process title names it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title.startswith("postgres:") and f" {database} " in f"{title} ":
            pids.append(int(entry.name))
    return pids


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait(10)


# ----------------------------------------------------------------------------- one scale


def parse_ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 3)


@dataclass
class LagReader:
    """Polls kiosk_health; each health document published from ``since`` until ``until`` is counted once."""

    since: float
    until: float = float("inf")
    seen: set[tuple[str, str]] = field(default_factory=set)
    entries: list[tuple[float, float, float]] = field(default_factory=list)  # published, recorded, visible

    def poll(self, pg: psycopg.Connection[Any]) -> None:
        started = time.time()  # the query's snapshot is taken after this: visible by then at the latest
        for kiosk, ts, received_at in pg.execute("SELECT kiosk, ts, received_at FROM kiosk_health"):
            if (kiosk, ts) in self.seen:
                continue
            published = parse_ts(ts)
            if not self.since <= published < self.until:
                continue
            self.seen.add((kiosk, ts))
            self.entries.append((published, parse_ts(received_at) - published, started - published))


def fetch(url: str, centre_pid: int) -> tuple[float, int, int, float]:
    """(seconds to the last byte, HTTP status, bytes, the centre's CPU seconds meanwhile: the render's
    own and the consumer's share of that time, which the machine's other load does not inflate)."""
    cpu = cpu_s(centre_pid)
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=120) as r:
            body = r.read()
            status = r.status
    except urllib.error.HTTPError as exc:  # a page that fails is a figure too (its log says why)
        body, status = exc.read(), exc.code
    return time.perf_counter() - started, status, len(body), cpu_s(centre_pid) - cpu


def run_scale(n: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    begun = time.monotonic()

    def say(text: str) -> None:
        print(f"[{n} kiosks, {time.monotonic() - begun:5.1f} s] {text}", file=sys.stderr, flush=True)

    name = f"ektp_bench_{os.getpid()}_{n}"
    root = work / f"scale-{n}"
    root.mkdir()
    with fresh_database(name) as url:
        broker = Broker(root / "broker", extra_config=BROKER_LIMITS)
        broker.start()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            central_key = root / "central.key"
            create_central_keys(central_key)
            keys = root / "fleet-keys"
            subprocess.run(
                [script("ektp-sim"), "fleet", "--kiosks", str(n), "--keys-dir", str(keys), "--keys-only"],
                check=True,
                capture_output=True,
                timeout=600,
            )
            ids = [line.split()[0] for line in (keys / "kiosks.txt").read_text().splitlines()]
            started = time.monotonic()
            with open_store(url) as store:
                for kiosk in ids:
                    store.add_kiosk(kiosk, public_path(kiosk_key_path(keys, kiosk)).read_bytes())
            say(f"{n} kiosk keys registered in {time.monotonic() - started:.1f} s")
            web_port = free_port()
            conf = root / "central.toml"
            conf.write_text(
                f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n[store]\nurl = "{url}"\n'
                f'[keys]\ncentral_private_key = "{central_key}"\n[web]\nlisten = "127.0.0.1:{web_port}"\n'
                f"refresh_s = {WEB_REFRESH_S}\n"
            )
            with open(root / "central.log", "wb") as log:
                centre = subprocess.Popen(
                    [script("ektp-central"), "--config", str(conf), "run"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            procs.append(centre)
            wait_port(web_port, 60)
            say("the centre serves its web view")
            deadline = time.monotonic() + 60
            while "consuming $share/" not in (root / "central.log").read_text(errors="replace"):
                if centre.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the centre did not start: {(root / 'central.log').read_text()[-3000:]}"
                    )
                time.sleep(0.2)
            with open(root / "fleet.out", "wb") as out, open(root / "fleet.log", "wb") as err:
                fleet = subprocess.Popen(
                    [
                        script("ektp-sim"),
                        "fleet",
                        "--kiosks",
                        str(n),
                        "--broker",
                        f"127.0.0.1:{broker.port}",
                        "--interval",
                        str(args.interval),
                        "--keys-dir",
                        str(keys),
                        "--central-public-key",
                        str(public_path(central_key)),
                        "--fault-rate",
                        str(FAULT_RATE),
                        "--packets-per-hour",
                        str(args.packets_per_hour),
                        "--json",
                    ],
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
            procs.append(fleet)
            say("the centre consumes; the fleet starts")
            with psycopg.connect(url, autocommit=True) as pg:
                deadline = time.monotonic() + args.interval + WARMUP_EXTRA_S
                while True:
                    (healths,) = pg.execute("SELECT count(*) FROM kiosk_health").fetchone() or (0,)
                    if healths >= n:
                        break
                    if time.monotonic() > deadline or fleet.poll() is not None:
                        raise RuntimeError(f"warm-up: {healths} of {n} kiosks' health stored")
                    time.sleep(1.0)
                say(f"warm-up done: every kiosk's health stored; steady window of {args.duration:.0f} s")
                window_start = time.time()
                lag = LagReader(since=window_start)
                backends = backends_of(name)
                cpu0 = {
                    "centre": cpu_s(centre.pid),
                    "postgres": sum(cpu_s(p) for p in backends),
                    "broker": cpu_s(broker.proc.pid) if broker.proc else 0.0,
                    "simulator": cpu_s(fleet.pid),
                }
                t0 = time.monotonic()
                while time.monotonic() - t0 < args.duration:
                    lag.poll(pg)
                    time.sleep(max(0.0, SAMPLE_S - (time.monotonic() - t0) % SAMPLE_S))
                elapsed = time.monotonic() - t0
                cpu1 = {
                    "centre": cpu_s(centre.pid),
                    "postgres": sum(cpu_s(p) for p in backends),
                    "broker": cpu_s(broker.proc.pid) if broker.proc else 0.0,
                    "simulator": cpu_s(fleet.pid),
                }
                window_end = lag.until = time.time()
                # the documents of the window's last moments: until three polls in a row find none
                quiet, deadline = 0, time.monotonic() + args.interval + 30
                while quiet < 3 and time.monotonic() < deadline:
                    before = len(lag.entries)
                    time.sleep(SAMPLE_S)
                    lag.poll(pg)
                    quiet = quiet + 1 if len(lag.entries) == before else 0
            expected = round(n * (window_end - window_start) / args.interval)
            recorded = [r for _, r, _ in lag.entries]
            visible = [v for _, _, v in lag.entries]
            cores = {k: round((cpu1[k] - cpu0[k]) / elapsed, 3) for k in cpu0}
            say(f"lag p99 {pct(recorded, 0.99)} s, centre {cores['centre']} cores; fetching the pages")
            base = f"http://127.0.0.1:{web_port}"
            pages: dict[str, list[tuple[float, int, int, float]]] = {
                "/": [],
                "/metrics": [],
                f"/kiosk/{ids[0]}": [],
            }
            load_window = os.getloadavg()[0]
            for _ in range(args.page_fetches):
                for path in pages:
                    time.sleep(SAMPLE_GAP_S)
                    pages[path].append(fetch(base + path, centre.pid))
            load_pages = os.getloadavg()[0]
            if any(status != 200 for fetched in pages.values() for _, status, _, _ in fetched):
                log_text = (root / "central.log").read_text(errors="replace")
                say(f"a page failed; the centre's log ends:\n{log_text[-4000:]}")
            say("pages fetched; stopping the fleet and the centre")
            sim_exit = stop_process(fleet)
            centre_exit = stop_process(centre)
            say("stopped")
            fleet_report = json.loads((root / "fleet.out").read_text().strip().splitlines()[-1] or "{}")
            with psycopg.connect(url) as pg:
                (stored,) = pg.execute("SELECT count(*) FROM packets").fetchone() or (0,)

            def page(path: str) -> dict[str, Any]:
                times = [t for t, _, _, _ in pages[path]]
                return {
                    "median_s": round(statistics.median(times), 3),
                    "max_s": round(max(times), 3),
                    "centre_cpu_s": round(statistics.median(c for _, _, _, c in pages[path]), 3),
                    "status": sorted({s for _, s, _, _ in pages[path]}),
                    "bytes": pages[path][-1][2],
                }

            return {
                "kiosks": n,
                "interval_s": args.interval,
                "window_s": round(elapsed, 1),
                "health_expected": expected,
                "health_seen": len(recorded),
                "lag_recorded_p50_s": pct(recorded, 0.5),
                "lag_recorded_p99_s": pct(recorded, 0.99),
                "lag_recorded_max_s": round(max(recorded), 3) if recorded else None,
                "lag_visible_p50_s": pct(visible, 0.5),
                "lag_visible_p99_s": pct(visible, 0.99),
                "cores": cores,
                "page": page("/"),
                "metrics": page("/metrics"),
                "kiosk_page": page(f"/kiosk/{ids[0]}"),
                "packets_stored": int(stored),
                "simulator": {
                    k: fleet_report.get(k)
                    for k in (
                        "published",
                        "errors",
                        "error_kinds",
                        "lag_p99_s",
                        "lag_max_s",
                        "behind",
                        "stored",
                    )
                },
                "exits": {"simulator": sim_exit, "centre": centre_exit},
                # the machine's 1-minute load (2 vCPU here): other work slows the renders' wall time
                "load_1m": {"window_end": round(load_window, 2), "after_pages": round(load_pages, 2)},
            }
        finally:
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    stop_process(p)
            broker.stop()


# ----------------------------------------------------------------------------- the week


def run_week(kiosks: int, detail_hours: int, retention_days: int, work: Path) -> dict[str, Any]:
    """The health history after seven simulated days of ``kiosks`` kiosks (module docstring)."""
    sim = FleetSimulator(FleetOptions(kiosks=kiosks, fault_rate=FAULT_RATE, seed=7))
    sim.prepare()
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=7)
    detail_from = end - timedelta(hours=detail_hours)
    moments: list[datetime] = []
    t = start
    while t < end:  # an hour's first step before the detail window, every step within it
        moments.append(t + timedelta(seconds=30))
        t += timedelta(minutes=5) if t >= detail_from else timedelta(hours=1)
    name = f"ektp_bench_{os.getpid()}_week"
    started = time.monotonic()
    documents = 0
    with fresh_database(name) as url:
        with open_store(url) as store:
            last_compaction = start
            for i, moment in enumerate(moments):
                docs = []
                for k in sim.kiosks:
                    sim._age_fault(k)
                    doc = health_doc(
                        k,
                        link=LinkStats(connected=True),
                        now=time.monotonic(),
                        wall=moment.timestamp(),
                        temp_noise=0.0,
                    )
                    docs.append((k.kiosk_id, "health", doc))
                for b in range(0, len(docs), FLEET_BATCH):
                    store.record_fleet_docs(docs[b : b + FLEET_BATCH], now=moment)
                documents += len(docs)
                if moment - last_compaction >= timedelta(hours=1) or i == len(moments) - 1:
                    store.compact_health_history(detail_hours, retention_days, now=moment)
                    last_compaction = moment
                if i % 24 == 0:
                    print(
                        f"[week] {moment:%Y-%m-%d %H:%M} {documents} documents", file=sys.stderr, flush=True
                    )
            store.compact_health_history(detail_hours, retention_days, now=end)
        sizes, rest = table_sizes(url, ["health_steps", "health_hours", "kiosk_health"])
    at_10k = {t: {k: round(v * 10_000 / kiosks) for k, v in s.items()} for t, s in sizes.items()}
    for table in (sizes, at_10k):
        table["database"] = {
            "rows": sum(v["rows"] for v in table.values()),
            "bytes": rest + sum(v["bytes"] for v in table.values()),
        }
    return {
        "kiosks": kiosks,
        "days": 7,
        "detail_hours": detail_hours,
        "retention_days": retention_days,
        "documents_recorded": documents,
        "seconds": round(time.monotonic() - started, 1),
        "sizes": sizes,
        "at_10000_kiosks": at_10k,
        "scaled": kiosks != 10_000,
    }


# ----------------------------------------------------------------------------- report


def mark(value: float | None, goal: float) -> str:
    if value is None or value != value:
        return "?"
    return "met" if value <= goal else "MISSED"


def report(scales: list[dict[str, Any]], week: dict[str, Any] | None) -> None:
    print(
        "\nFleet scale: one centre process (ektp-central run) on PostgreSQL, health every "
        f"{scales[0]['interval_s'] if scales else '?'} s"
    )
    head = f"{'':34}" + "".join(f"{s['kiosks']:>14,}" for s in scales) + "   goal"
    print(head)
    rows = [
        ("health lag p50 (s)", lambda s: s["lag_recorded_p50_s"], None),
        ("health lag p99 (s)", lambda s: s["lag_recorded_p99_s"], GOALS["lag_p99_s"]),
        ("health lag max (s)", lambda s: s["lag_recorded_max_s"], None),
        ("visible to a reader p99 (s)", lambda s: s["lag_visible_p99_s"], None),
        ("health seen / expected", lambda s: f"{s['health_seen']}/{s['health_expected']}", None),
        ("centre CPU (cores)", lambda s: s["cores"]["centre"], GOALS["centre_cores"]),
        ("its PostgreSQL backends (cores)", lambda s: s["cores"]["postgres"], None),
        ("broker (cores)", lambda s: s["cores"]["broker"], None),
        ("simulator (cores)", lambda s: s["cores"]["simulator"], None),
        ("fleet page / median (s)", lambda s: s["page"]["median_s"], GOALS["page_s"]),
        ("fleet page / max (s)", lambda s: s["page"]["max_s"], GOALS["page_s"]),
        ("fleet page: centre CPU (s)", lambda s: s["page"]["centre_cpu_s"], None),
        ("fleet page size (bytes)", lambda s: s["page"]["bytes"], None),
        ("/metrics median (s)", lambda s: s["metrics"]["median_s"], GOALS["metrics_s"]),
        ("/metrics max (s)", lambda s: s["metrics"]["max_s"], GOALS["metrics_s"]),
        ("/metrics: centre CPU (s)", lambda s: s["metrics"]["centre_cpu_s"], None),
        ("/metrics size (bytes)", lambda s: s["metrics"]["bytes"], None),
        ("kiosk page median (s)", lambda s: s["kiosk_page"]["median_s"], None),
        ("simulator schedule lag p99 (s)", lambda s: s["simulator"]["lag_p99_s"], None),
        ("simulator errors", lambda s: s["simulator"]["errors"], None),
        ("packets stored", lambda s: s["packets_stored"], None),
        ("machine load (1 min) after pages", lambda s: s["load_1m"]["after_pages"], None),
    ]
    for label, get, goal in rows:
        cells = "".join(f"{get(s)!s:>14}" for s in scales)
        verdict = ""
        if goal is not None and scales:
            verdict = f"   <= {goal:g}: " + ", ".join(mark(get(s), goal) for s in scales)
        print(f"{label:34}{cells}{verdict}")
    if len(scales) >= 2:
        a, b = scales[0], scales[-1]
        factor = b["kiosks"] / a["kiosks"]
        print(f"\ngrowth from {a['kiosks']:,} to {b['kiosks']:,} kiosks (x{factor:g}):")
        for label, get in (
            ("centre CPU", lambda s: s["cores"]["centre"]),
            ("fleet page", lambda s: s["page"]["median_s"]),
            ("/metrics", lambda s: s["metrics"]["median_s"]),
            ("health lag p99", lambda s: s["lag_recorded_p99_s"]),
        ):
            lo, hi = get(a), get(b)
            print(f"  {label:16} {lo} -> {hi}" + (f"  (x{hi / lo:.1f})" if lo else ""))
    if week:
        print(
            f"\nhealth history after {week['days']} simulated days ({week['kiosks']:,} kiosks, "
            f"[store] health_detail_hours = {week['detail_hours']}, health_retention_days = "
            f"{week['retention_days']}; {week['documents_recorded']:,} documents in {week['seconds']} s):"
        )
        scaled = " (scaled from the kiosks simulated)" if week["scaled"] else ""
        print(f"  {'table':16}{'rows':>14}{'MB':>10}   at 10,000 kiosks{scaled}: rows, MB")
        for t, s in week["sizes"].items():
            big = week["at_10000_kiosks"][t]
            print(
                f"  {t:16}{s['rows']:>14,}{s['bytes'] / 1e6:>10.1f}   {big['rows']:>14,}{big['bytes'] / 1e6:>10.1f}"
            )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kiosks", default="1000,10000", help="scales, comma-separated (default 1000,10000)")
    ap.add_argument("--duration", type=float, default=120.0, help="steady window per scale, s (default 120)")
    ap.add_argument("--interval", type=float, default=30.0, help="health interval, s (default 30)")
    ap.add_argument(
        "--packets-per-hour",
        type=float,
        default=600.0,
        help="packets across the fleet per hour (default 600)",
    )
    ap.add_argument("--week-kiosks", type=int, default=1000, help="kiosks of the simulated week (0: none)")
    ap.add_argument(
        "--quick", action="store_true", help="bounded: 200 kiosks every 2 s, a 6 s window, a week of 10"
    )
    ap.add_argument("--page-fetches", type=int, default=PAGE_FETCHES, help="fetches of each page (default 5)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    if args.quick:
        args.kiosks, args.duration, args.interval, args.week_kiosks = "200", 6.0, 2.0, 10
        args.packets_per_hour, args.page_fetches = 3600.0, 1
    scales = [int(x) for x in str(args.kiosks).split(",") if x.strip()]
    work = Path(tempfile.mkdtemp(prefix="ektp-fleet-scale-"))
    try:
        results = [run_scale(n, args, work) for n in scales]
        week = (
            run_week(args.week_kiosks, DEFAULT_HEALTH_DETAIL_HOURS, DEFAULT_HEALTH_RETENTION_DAYS, work)
            if args.week_kiosks
            else None
        )
    finally:
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(results, week)
    last = results[-1] if results else {}
    summary = {
        "scales": results,
        "week": week,
        "goals": GOALS,
        "goals_met": bool(results)
        and all(
            s["lag_recorded_p99_s"] <= GOALS["lag_p99_s"]
            and s["cores"]["centre"] <= GOALS["centre_cores"]
            and s["page"]["max_s"] <= GOALS["page_s"]
            and s["metrics"]["max_s"] <= GOALS["metrics_s"]
            for s in [last]
        ),
    }
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
