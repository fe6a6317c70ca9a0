"""The kiosk's health snapshot (CONTRACT.md "Health JSON"), built from the drivers' last
self-test, the outbox's counters, the link's state and the host.

Building it never touches a device: device states come from the last self-test the
service ran, so a slow or hung peripheral cannot delay health.

The snapshot also judges itself (:func:`assess`): ``problems`` are what keeps enrollments
from the centre or from being recorded (`ektp-agent status` exits 1 while there is one),
``warnings`` what needs an eye before it becomes one. Each is ``{"code", "message"}``, the
message one line in plain words that names what to do (docs/troubleshooting.md has them).
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
from agent.clock import STRETCH_FILE, clock_synced, read_stretch

THERMAL_ZONES = Path("/sys/class/thermal")
DEVICE_NAMES = ("fingerprint", "signature", "iris", "camera")
NOT_YET_TESTED = "not yet tested"  # the detail of an enabled device before its first self-test
# Enrollments recorded on an unsynchronised clock for longer than this: NTP should have set
# it long before (a Pi without network keeps its fake-hwclock time), so it will not by itself.
CLOCK_PROBLEM_AFTER_S = 600.0


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

    def snapshot(
        self,
        *,
        queue: Mapping[str, Any],
        link: Mapping[str, Any],
        total: int,
        rejected_reason: str | None = None,
    ) -> dict[str, Any]:
        """The health document, judged: ``problems`` and ``warnings`` (see :func:`assess`)."""
        devices = {
            name: dict(self.devices().get(name, {"state": "absent", "detail": "not configured"}))
            for name in DEVICE_NAMES
        }
        synced = clock_synced()
        stretch = None if synced else read_stretch(self.data_dir / STRETCH_FILE)
        doc = {
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
                "clock_synchronised": synced,
                # enrollments recorded on the unsynchronised clock, and since how long (None: none)
                "clock_unsynchronised_s": None if stretch is None else round(stretch.age_s(), 1),
                "clock_unsynchronised_enrollments": 0 if stretch is None else stretch.enrollments,
                "load_1m": round(os.getloadavg()[0], 2),
            },
            "enrollments": {"total": total},
        }
        doc["problems"], doc["warnings"] = assess(doc, rejected_reason=rejected_reason)
        return doc


# ----------------------------------------------------------------------------- problems and warnings


def finding(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


def rejection_problem(count: int, reason: str | None) -> str:
    """What to tell the technician while packets the centre rejected wait on the kiosk."""
    were = "packet was" if count == 1 else "packets were"
    return (
        f"{count} {were} rejected by the centre: {reason or 'no reason given'}; fix the cause, then "
        "`ektp-agent resubmit --rejected`"
    )


def damage_problem(count: int) -> str:
    """What to tell the technician while packets found damaged on this kiosk wait in its store."""
    were = "packet was" if count == 1 else "packets were"
    return (
        f"{count} {were} found damaged on this kiosk when its store was salvaged (they fail the "
        "kiosk's own signature check) and are never sent; take them to the centre for review with "
        "`ektp-agent export --to DIR --include-damaged` (docs/troubleshooting.md)"
    )


def assess(
    doc: Mapping[str, Any], *, rejected_reason: str | None = None
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The problems and warnings a health document shows, in the order a technician should act."""
    problems: list[dict[str, str]] = []
    warnings: list[dict[str, str]] = []
    q, link, host = doc.get("queue", {}), doc.get("link", {}), doc.get("host", {})
    for name, d in doc.get("devices", {}).items():
        if d.get("state") == "fault":
            problems.append(
                finding(
                    "device-fault",
                    f"the {name} is in fault: `ektp-agent diag {name}` says why and what to do "
                    "(docs/troubleshooting.md)",
                )
            )
    if q.get("pending") is None:
        problems.append(
            finding("store-unreadable", f"the store cannot be read: {q.get('detail') or 'unknown error'}")
        )
    for damaged in doc.get("store", {}).get("quarantined", []):
        problems.append(
            finding(
                "store-quarantined",
                f"a damaged store was moved aside to {damaged} (its readable packets were salvaged); "
                "keep it and report it to the centre before removing it (docs/troubleshooting.md, "
                "Corrupt store)",
            )
        )
    held, most = q.get("pending_bytes"), q.get("max_bytes")
    if q.get("full"):
        problems.append(
            finding(
                "store-full",
                f"store full: undelivered packets hold {held} of store.max_bytes = {most} bytes and "
                "new enrollments are refused (nothing was dropped); get the link back and run "
                "`ektp-agent sync --wait`, or export the backlog, or raise store.max_bytes "
                "(docs/troubleshooting.md, Store full)",
            )
        )
    elif q.get("near_full"):
        warnings.append(
            finding(
                "store-near-full",
                f"store near full: undelivered packets hold {held} of store.max_bytes = {most} bytes; "
                "enrollments still work, but get the link back (`ektp-agent sync --wait`) before the "
                "store refuses them (docs/troubleshooting.md, Store near full)",
            )
        )
    if q.get("rejected"):
        reason = rejected_reason or doc.get("rejected", {}).get("reason")
        problems.append(finding("packets-rejected", rejection_problem(q["rejected"], reason)))
    if q.get("damaged"):
        problems.append(finding("packets-damaged", damage_problem(q["damaged"])))
    refused = link.get("refused_in_a_row") or 0
    if refused:
        were = "publish of an enrollment was" if refused == 1 else f"{refused} publishes of enrollments were"
        problems.append(
            finding(
                "publishes-refused",
                f"the broker refuses this kiosk's enrollments: the last {were} refused "
                f"({link.get('last_refused') or 'no reason given'}); its ACL must let this kiosk write "
                f"{link.get('refused_topic') or 'its enrollment topic'} (docs/operations.md, section 8); "
                "nothing reaches the centre until then",
            )
        )
    elif link.get("unconsumed_in_a_row"):
        warnings.append(
            finding(
                "no-centre",
                "the broker takes this kiosk's enrollments but nothing consumes them (PUBACK "
                '"No matching subscribers"): the centre\'s `ektp-central run` is down or reads '
                "another topic prefix; the packets wait on the kiosk and go when it is back",
            )
        )
    if not host.get("clock_synchronised", True):
        age, made = host.get("clock_unsynchronised_s"), host.get("clock_unsynchronised_enrollments") or 0
        if age is not None and made and age > CLOCK_PROBLEM_AFTER_S:
            problems.append(
                finding(
                    "clock-unsynchronised",
                    f"the clock has not been synchronised for {age / 60:.0f} min while {made} "
                    f"enrollment(s) were recorded (their times are unreliable; TLS to the broker may "
                    "fail): check NTP with `timedatectl` and outbound UDP 123 (docs/troubleshooting.md, "
                    "Clock not synchronised)",
                )
            )
        else:
            warnings.append(
                finding(
                    "clock-unsynchronised",
                    "the clock is not synchronised (yet); enrollments record that their time is "
                    "unreliable: check `timedatectl` if it stays so",
                )
            )
    return problems, warnings
