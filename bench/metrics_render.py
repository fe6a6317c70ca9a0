"""/metrics rendering (central.metrics.render_metrics) for a synthetic fleet, against baselines
in the same run.

The fleet rows are built in memory (central.fleet.apply_health on health documents shaped like
a kiosk's), and the store hands them back as they are: this measures the rendering, not the
store's query (bench/fleet_scale.py measures /metrics end to end on a real store). Baselines:
json.dumps of the same rows (what `ektp-central fleet --json` costs to write), and
prometheus_client's generate_latest over the same gauges built as metric families (the way
central.metrics does not take). Each figure is the median of --repeat runs. The last line
printed is a JSON object of the figures. Goal: render <= 1 s at 10,000 kiosks.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily

from central.fleet import FleetRow, apply_health, empty_row, judge
from central.metrics import KIOSK_GAUGES, CentreMetrics, render_metrics

DEVICES = ("fingerprint", "signature", "iris", "camera")


def synthetic_fleet(n: int, seed: int = 12) -> list[FleetRow]:
    """``n`` kiosks, a few offline, faulty, behind or with gaps, as store.fleet() returns them."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    rows = []
    for i in range(n):
        kiosk = f"{320700 + i // 100:06d}-{i % 100:02d}"
        row = empty_row(kiosk)
        row["registered"] = True
        row["online"] = rng.random() > 0.05
        row["status_ts"] = (now - timedelta(seconds=rng.uniform(0, 86400))).isoformat()
        row["health_received_at"] = (now - timedelta(seconds=rng.uniform(0, 60))).isoformat()
        row["health_age_s"] = rng.uniform(0, 60)
        row["last_seen"] = row["health_received_at"]
        states = [rng.choice(("ok",) * 30 + ("degraded", "fault")) for _ in DEVICES]
        apply_health(
            row,
            {
                "devices": {
                    d: {"state": s, "detail": "" if s == "ok" else "no answer on USB 1234:5678"}
                    for d, s in zip(DEVICES, states, strict=True)
                },
                "queue": {
                    "pending": rng.randrange(0, 50),
                    "pending_bytes": rng.randrange(0, 20_000_000),
                    "oldest_pending_age_s": rng.uniform(0, 100_000),
                    "rejected": 0,
                    "damaged": 0,
                },
                "host": {"clock_synchronised": rng.random() > 0.01, "disk_free_bytes": 12_000_000_000},
                "link": {"reconnects": rng.randrange(0, 5)},
            },
        )
        row["stored"] = rng.randrange(0, 5000)
        row["last_seq"] = row["stored"] or None
        if rng.random() < 0.02:
            row["gaps"] = [[3, 5]]
        row["problems"] = judge(row, 24.0)
        rows.append(row)
    return rows


class ListStore:
    """A store that hands back the rows it was given (render_metrics reads fleet and totals)."""

    def __init__(self, rows: list[FleetRow]) -> None:
        self.rows = rows

    def fleet(self, kiosk: str | None = None, *, backlog_problem_hours: float = 24.0) -> list[FleetRow]:
        return self.rows

    def totals(self) -> dict[str, int]:
        return {
            "kiosks": len(self.rows),
            "packets": sum(r["stored"] for r in self.rows),
            "synthetic": 0,
            "quarantine_rows": 0,
            "quarantine_bytes": 0,
        }


class FamilyCollector:
    """The same per-kiosk gauges as prometheus_client metric families (the baseline)."""

    def __init__(self, rows: list[FleetRow]) -> None:
        self.rows = rows

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {
            name: GaugeMetricFamily(f"ektp_kiosk_{name}", help_text, labels=["kiosk", "region"])
            for name, help_text in KIOSK_GAUGES
        }
        device = GaugeMetricFamily(
            "ektp_kiosk_device_state", "state", labels=["kiosk", "region", "device", "state"]
        )
        for r in self.rows:
            labels = [r["kiosk"], r["region"] or ""]
            values = {
                "online": r["online"],
                "status_age_seconds": r["health_age_s"],
                "last_health_age_seconds": r["health_age_s"],
                "backlog_packets": r["backlog"],
                "backlog_bytes": r["backlog_bytes"],
                "backlog_oldest_age_seconds": r["oldest_pending_age_s"],
                "clock_synchronised": r["clock_synchronised"],
                "rejected_packets": r["rejected"],
                "damaged_packets": r["damaged"],
                "seq_gaps": len(r["gaps"]),
                "stored_packets": r["stored"],
                "problems": len(r["problems"]),
            }
            for name, value in values.items():
                if value is not None:
                    families[name].add_metric(labels, float(value))
            for name, view in r["devices"].items():
                device.add_metric([*labels, name, view["state"]], 1.0)
        yield from families.values()
        yield device


def median_s(step: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kiosks", type=int, nargs="+", default=[1000, 10000], help="fleet sizes (default 1000 10000)"
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="runs per figure, the median is kept (default 5)"
    )
    args = parser.parse_args()

    centre = CentreMetrics()
    for what in ("stored", "acks", "health", "status"):
        centre.count(what, 1000)
    centre.observe_store("packets", 0.004)
    figures: dict[str, object] = {}
    for n in args.kiosks:
        rows = synthetic_fleet(n)
        store = ListStore(rows)
        body, _ = render_metrics(store, centre)
        render_s = median_s(lambda store=store: render_metrics(store, centre), args.repeat)
        json_s = median_s(lambda rows=rows: json.dumps(rows), args.repeat)
        families_s = median_s(lambda rows=rows: generate_latest(FamilyCollector(rows)), args.repeat)
        figures[str(n)] = {
            "render_s": round(render_s, 4),
            "json_dumps_s": round(json_s, 4),
            "ratio_to_json": round(render_s / json_s, 2),
            "generate_latest_s": round(families_s, 4),
            "body_bytes": len(body),
            "samples": sum(1 for line in body.splitlines() if line and not line.startswith(b"#")),
        }
        print(
            f"{n:>6} kiosks: render {render_s * 1000:7.1f} ms ({len(body) / 1e6:.1f} MB), json.dumps of the rows "
            f"{json_s * 1000:7.1f} ms (ratio {render_s / json_s:.2f}), generate_latest of the same gauges "
            f"{families_s * 1000:7.1f} ms",
            flush=True,
        )
    if len(args.kiosks) > 1:
        small, large = str(min(args.kiosks)), str(max(args.kiosks))
        growth = figures[large]["render_s"] / figures[small]["render_s"]  # type: ignore[index]
        figures["growth"] = {"from": int(small), "to": int(large), "render_time_x": round(growth, 1)}
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
