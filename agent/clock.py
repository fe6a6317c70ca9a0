"""Whether the system clock is synchronised (a Pi has no RTC: after a cold boot without
network its wall clock is whatever fake-hwclock saved, or 1970).

First choice is the kernel's own NTP state through ``adjtimex(2)`` with ``modes = 0``
(read only, no privilege needed): synchronised when the clock state is not
``TIME_ERROR``, ``STA_UNSYNC`` is clear and the maximum error is below 16 s (the
kernel's ``NTP_PHASE_LIMIT``, which it reports while unsynchronised). This is what
``timedatectl``'s NTPSynchronized reads too; when libc or the call is unavailable
(not Linux), ``timedatectl show -p NTPSynchronized --value`` is asked. Nothing here
raises: when it cannot tell, the answer is "unknown", which packets record as unsynced.

``$EKTP_SIMULATE_CLOCK`` (``synced`` or ``unsynced``) replaces the answer, so a training or
test kit can rehearse the clock problem; it is never set on a production kiosk.

The unsynchronised stretch: the service notes every enrollment it records while the clock
is not synchronised in ``{data_dir}/clock-unsynced.json`` (when the first of them was made,
in seconds of this boot's ``CLOCK_BOOTTIME``, since the wall clock is the thing in doubt,
and how many), and forgets it once the clock is synchronised. `ektp-agent status` reads it,
with the service running or not, to tell a clock that NTP will set in a minute from one
that has gone unsynchronised for long while residents were recorded.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

TIMEDATECTL_TIMEOUT_S = 2.0
STA_UNSYNC = 0x0040
TIME_ERROR = 5
MAXERROR_UNSYNCED_US = 16_000_000
SIMULATE_ENV = "EKTP_SIMULATE_CLOCK"
STRETCH_FILE = "clock-unsynced.json"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class ClockSync(StrEnum):
    SYNCED = "synced"
    UNSYNCED = "unsynced"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ClockStatus:
    """The answer and where it came from (``adjtimex``, ``timedatectl`` or ``none``)."""

    sync: ClockSync
    source: str
    max_error_us: int | None = None
    detail: str = ""

    @property
    def synced(self) -> bool:
        return self.sync is ClockSync.SYNCED


class _Timex(ctypes.Structure):
    """``struct timex`` of <sys/timex.h> (Linux); longs follow the platform's C ABI."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 16),  # 11 in the header; spare room costs nothing
    ]


def clock_status() -> ClockStatus:
    """Read the clock's synchronisation state; never raises."""
    simulated = os.environ.get(SIMULATE_ENV)
    if simulated:
        try:
            return ClockStatus(ClockSync(simulated), "simulated", detail=f"${SIMULATE_ENV}={simulated}")
        except ValueError:
            return ClockStatus(
                ClockSync.UNKNOWN,
                "simulated",
                detail=f"${SIMULATE_ENV}={simulated!r}: not synced or unsynced",
            )
    status = _from_adjtimex()
    if status.sync is ClockSync.UNKNOWN:
        fallback = _from_timedatectl()
        if fallback.sync is not ClockSync.UNKNOWN:
            return fallback
    return status


def clock_synced() -> bool:
    """True only when the system clock is known to be synchronised."""
    return clock_status().synced


def _from_adjtimex() -> ClockStatus:
    try:
        libc_name = ctypes.util.find_library("c")
        if libc_name is None:
            return ClockStatus(ClockSync.UNKNOWN, "none", detail="no C library found")
        libc = ctypes.CDLL(libc_name, use_errno=True)
        adjtimex = libc.adjtimex
    except (OSError, AttributeError) as exc:
        return ClockStatus(ClockSync.UNKNOWN, "none", detail=f"adjtimex unavailable: {exc}")
    timex = _Timex()  # modes = 0: read only
    state = adjtimex(ctypes.byref(timex))
    if state < 0:
        return ClockStatus(
            ClockSync.UNKNOWN, "adjtimex", detail=f"adjtimex failed: errno {ctypes.get_errno()}"
        )
    synced = state != TIME_ERROR and not timex.status & STA_UNSYNC and timex.maxerror < MAXERROR_UNSYNCED_US
    return ClockStatus(
        ClockSync.SYNCED if synced else ClockSync.UNSYNCED,
        "adjtimex",
        max_error_us=int(timex.maxerror),
        detail=f"state {state}, status 0x{timex.status:04x}",
    )


def _from_timedatectl() -> ClockStatus:
    exe = shutil.which("timedatectl")
    if exe is None:
        return ClockStatus(ClockSync.UNKNOWN, "none", detail="timedatectl not found")
    try:
        done = subprocess.run(
            [exe, "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=TIMEDATECTL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return ClockStatus(ClockSync.UNKNOWN, "timedatectl", detail=str(exc))
    answer = done.stdout.strip()
    if done.returncode == 0 and answer in ("yes", "no"):
        return ClockStatus(ClockSync.SYNCED if answer == "yes" else ClockSync.UNSYNCED, "timedatectl")
    return ClockStatus(
        ClockSync.UNKNOWN, "timedatectl", detail=f"exit {done.returncode}: {done.stderr.strip()[:200]}"
    )


# ----------------------------------------------------------------------------- the unsynchronised stretch


@dataclass(frozen=True, slots=True)
class UnsyncedStretch:
    """Enrollments recorded while the clock was not synchronised, since it last was (this boot)."""

    boot_id: str
    started_boot_s: float  # CLOCK_BOOTTIME when the first of them was recorded
    enrollments: int

    def age_s(self) -> float:
        """How long ago the first of them was recorded."""
        return max(0.0, boottime_s() - self.started_boot_s)


def boottime_s() -> float:
    """Seconds since boot, suspend included; it never jumps when the wall clock is set."""
    return time.clock_gettime(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC))


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def read_stretch(path: Path) -> UnsyncedStretch | None:
    """The stretch noted in ``path``; None when there is none, it is unreadable or of another boot."""
    try:
        doc = json.loads(path.read_text())
        stretch = UnsyncedStretch(str(doc["boot_id"]), float(doc["started_boot_s"]), int(doc["enrollments"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return stretch if stretch.boot_id == boot_id() else None


def note_enrollment(path: Path, *, synced: bool) -> UnsyncedStretch | None:
    """An enrollment was recorded with the clock ``synced`` or not: extend, start or end the stretch.

    :raises OSError: the file cannot be written (the caller logs it; nothing else depends on it)
    """
    if synced:
        forget_stretch(path)
        return None
    stretch = read_stretch(path) or UnsyncedStretch(boot_id(), boottime_s(), 0)
    stretch = replace(stretch, enrollments=stretch.enrollments + 1)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(
        json.dumps(
            {
                "boot_id": stretch.boot_id,
                "started_boot_s": stretch.started_boot_s,
                "enrollments": stretch.enrollments,
            }
        )
    )
    tmp.replace(path)
    return stretch


def forget_stretch(path: Path) -> None:
    """The clock is synchronised: the stretch is over."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
