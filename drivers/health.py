"""The typed self-test result every driver returns, and the device states of the health document."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class DeviceState(StrEnum):
    """A peripheral's state as the health document and `ektp-agent diag` report it."""

    OK = "ok"
    DEGRADED = "degraded"
    FAULT = "fault"
    ABSENT = "absent"


@dataclass(frozen=True, slots=True)
class SelfTestResult:
    """What a driver's ``self_test()`` found: state, what was tried, detail and a hint for a technician."""

    device: str
    state: DeviceState
    detail: str = ""
    hint: str = ""
    tried: str = ""

    @property
    def passed(self) -> bool:
        return self.state in (DeviceState.OK, DeviceState.DEGRADED)

    def to_json(self) -> dict[str, str | bool]:
        return {
            "device": self.device,
            "state": self.state.value,
            "passed": self.passed,
            "detail": self.detail,
            "hint": self.hint,
            "tried": self.tried,
        }
