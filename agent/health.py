"""The kiosk's health snapshot (CONTRACT.md "Health JSON"), built from the drivers' last
self-test, the outbox's counters, the link's state and the host.

Building it never touches a device: device states come from the last self-test the
service ran, so a slow or hung peripheral cannot delay health.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent import __version__
from agent.clock import clock_synced

THERMAL_ZONES = Path("/sys/class/thermal")
DEVICE_NAMES = ("fingerprint", "signature", "iris", "camera")


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cpu_temp_c(zones: Path = THERMAL_ZONES) -> float | None:
    """The CPU temperature from the first thermal zone that reads (a Pi has one), None if none."""
    for zone in sorted(zones.glob("thermal_zone*")):
        try:
            return round(int((zone / "temp").read_text().strip()) / 1000.0, 1)
        except (OSError, ValueError):
            continue
    return None


def quarantined_stores(outbox_path: Path) -> list[str]:
    """Damaged outbox files moved aside by a salvage (``outbox.db.corrupt-*``), for a technician to review."""
    pattern = f"{outbox_path.name}.corrupt-*"
    return sorted(str(p) for p in outbox_path.parent.glob(pattern) if not p.name.endswith(("-wal", "-shm")))


def disk_free_bytes(path: Path) -> int | None:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


class HealthReporter:
    """Composes the snapshot; ``devices`` returns {name: {"state", "detail"}} from the last self-tests."""

    def __init__(
        self,
        *,
        kiosk_id: str,
        data_dir: Path,
        outbox_path: Path,
        devices: Callable[[], Mapping[str, Mapping[str, str]]],
        started: float | None = None,
    ) -> None:
        self.kiosk_id = kiosk_id
        self.data_dir = data_dir
        self.outbox_path = outbox_path
        self.devices = devices
        self.started = started if started is not None else time.monotonic()

    def snapshot(self, *, queue: Mapping[str, Any], link: Mapping[str, Any], total: int) -> dict[str, Any]:
        devices = {
            name: dict(self.devices().get(name, {"state": "absent", "detail": "not configured"}))
            for name in DEVICE_NAMES
        }
        return {
            "kiosk_id": self.kiosk_id,
            "ts": now_rfc3339(),
            "agent_version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "devices": devices,
            "queue": dict(queue),
            "store": {"path": str(self.outbox_path), "quarantined": quarantined_stores(self.outbox_path)},
            "link": dict(link),
            "host": {
                "disk_free_bytes": disk_free_bytes(self.data_dir),
                "cpu_temp_c": cpu_temp_c(),
                "clock_synchronised": clock_synced(),
                "load_1m": round(os.getloadavg()[0], 2),
            },
            "enrollments": {"total": total},
        }
