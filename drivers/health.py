"""The typed self-test result every driver returns, and the device states of the health document."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from drivers.errors import DeviceDisconnected, DriverError


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


# A problem a self-test found while the device still works: (what, hint for the technician).
Problem = tuple[str, str]


def failed_self_test(
    device: str, exc: DriverError, tried: str, hints: Mapping[type[DriverError], str]
) -> SelfTestResult:
    """A self-test ended by a driver error: absent when the device is not there, else fault,
    with the hint of the first error type in ``hints`` that matches."""
    state = DeviceState.ABSENT if isinstance(exc, DeviceDisconnected) else DeviceState.FAULT
    hint = next((text for kind, text in hints.items() if isinstance(exc, kind)), "")
    return SelfTestResult(device, state, str(exc), hint, tried)


def passed_self_test(
    device: str, detail: str, tried: str, problems: Sequence[Problem] = ()
) -> SelfTestResult:
    """A self-test the device answered: ok, or degraded with every problem in the detail and
    the first one's hint."""
    if problems:
        return SelfTestResult(
            device,
            DeviceState.DEGRADED,
            "; ".join([detail, *(what for what, _ in problems)]),
            problems[0][1],
            tried,
        )
    return SelfTestResult(device, DeviceState.OK, detail, "", tried)
