"""Faults injected into simulated devices at run time, and the board that holds them.

The control socket (``ektp-sim fault``/``clear``) writes the board; each device's
handler reads it on every request, so a fault takes effect on the next exchange.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from enum import StrEnum

DEVICES = ("fingerprint", "signature", "iris", "camera")


class FaultKind(StrEnum):
    UNPLUG = "unplug"  # the device disappears (pty closed / USB device not enumerated / camera gone)
    TIMEOUT = "timeout"  # the device is present but stops answering
    GARBAGE = "garbage"  # random bytes between (and instead of part of) frames
    BAD_CHECKSUM = "bad-checksum"  # replies with a corrupt checksum / CRC
    SLOW = "slow"  # answers, but well past the usual latency (still within the driver's timeout)
    LOW_QUALITY = "low-quality"  # captures succeed with poor quality
    DEVICE_ERROR = "device-error"  # the device answers with its own error code


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    until: float | None  # time.monotonic() deadline, None = until cleared


class FaultBoard:
    """Thread-safe map of device name to its active fault (at most one per device)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: dict[str, Fault] = {}

    def inject(self, device: str, kind: FaultKind, duration_s: float | None = None) -> None:
        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
        until = None if duration_s is None else time.monotonic() + duration_s
        with self._lock:
            self._faults[device] = Fault(kind, until)

    def clear(self, device: str | None = None) -> None:
        with self._lock:
            if device is None:
                self._faults.clear()
            else:
                self._faults.pop(device, None)

    def active(self, device: str) -> FaultKind | None:
        """The device's fault now, dropping it once its ``--for`` time has run out."""
        with self._lock:
            fault = self._faults.get(device)
            if fault is None:
                return None
            if fault.until is not None and time.monotonic() >= fault.until:
                del self._faults[device]
                return None
            return fault.kind

    def snapshot(self) -> dict[str, dict[str, object]]:
        now = time.monotonic()
        out: dict[str, dict[str, object]] = {}
        for device in DEVICES:
            kind = self.active(device)
            if kind is not None:
                with self._lock:
                    fault = self._faults.get(device)
                left = None if fault is None or fault.until is None else round(fault.until - now, 1)
                out[device] = {"kind": kind.value, "remaining_s": left}
        return out
