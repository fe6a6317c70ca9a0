"""The small surface every peripheral driver offers the agent."""

from __future__ import annotations

from typing import Protocol

from drivers.health import SelfTestResult


class Peripheral(Protocol):
    """open, close, self_test; each driver adds its own typed ``capture_*`` methods."""

    name: str

    def open(self) -> None:
        """Open the transport. :raises DriverError: (DeviceDisconnected when it is not there)"""

    def close(self) -> None:
        """Release the transport; safe to call twice."""

    def self_test(self) -> SelfTestResult:
        """Probe the device actively; never raises, the result says what is wrong."""
