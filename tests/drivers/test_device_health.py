"""What the service reports for a device: its last self-test merged with what its captures
showed (agent.devices), and the capture session's pre-check (agent.capture.ensure_ready)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest

import agent.devices as devices_module
from agent.capture import CaptureError, ensure_ready
from agent.devices import CaptureReport, Devices
from drivers.base import Peripheral
from drivers.errors import CaptureRejected, DeviceTimeout
from drivers.health import DeviceState, SelfTestResult


class FakeDevice:
    """A peripheral whose self-test answers what the test sets."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.result = SelfTestResult(name, DeviceState.OK, "answers")
        self.tests = 0

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def self_test(self) -> SelfTestResult:
        self.tests += 1
        return self.result


def captured(report: CaptureReport) -> Callable[[Peripheral], tuple[str, CaptureReport]]:
    return lambda _driver: ("image", report)


def failing(exc: Exception) -> Callable[[Peripheral], tuple[str, CaptureReport]]:
    def work(_driver: Peripheral) -> tuple[str, CaptureReport]:
        raise exc

    return work


def run(
    devices: Devices, *steps: Callable[[Devices], Any], hints: list[str] | None = None
) -> list[dict[str, str]]:
    """Run the steps in order on one loop; the device's reported state and detail after each
    (and its hint, into ``hints``)."""

    async def main() -> list[dict[str, str]]:
        states = []
        for step in steps:
            with contextlib.suppress(CaptureError, CaptureRejected, DeviceTimeout):
                await step(devices)
            reported = dict(devices.states()["iris"])
            if hints is not None:
                hints.append(reported["hint"])
            states.append({k: reported[k] for k in ("state", "detail")})
        return states

    try:
        return asyncio.run(main())
    finally:
        devices.close()


@pytest.fixture
def iris() -> FakeDevice:
    return FakeDevice("iris")


def test_a_failed_capture_is_a_fault_at_once_until_a_self_test_passes(iris: FakeDevice) -> None:
    changes: list[int] = []
    devices = Devices({"iris": iris}, on_change=lambda: changes.append(1))
    error = DeviceTimeout("iris on USB 1209:0001 did not answer op 0x03 within 1 s", device="iris")
    states = run(
        devices,
        lambda d: d.self_test("iris"),
        lambda d: d.capture("iris", failing(error)),
        lambda d: d.self_test("iris"),
    )
    assert states[0] == {"state": "ok", "detail": "answers"}
    assert states[1] == {"state": "fault", "detail": f"last capture failed: {error}"}
    assert states[2] == {"state": "ok", "detail": "answers"}
    assert len(changes) == 3  # each change of what is reported is published at once


def test_a_failed_capture_then_a_self_test_in_fault_reports_the_self_test(iris: FakeDevice) -> None:
    devices = Devices({"iris": iris})
    unplugged = SelfTestResult("iris", DeviceState.ABSENT, "not found on USB", "plug it in")

    async def unplug_and_test(d: Devices) -> None:
        iris.result = unplugged
        await d.self_test("iris")

    hints: list[str] = []
    states = run(
        devices,
        lambda d: d.self_test("iris"),
        lambda d: d.capture("iris", failing(DeviceTimeout("no answer", device="iris"))),
        unplug_and_test,
        hints=hints,
    )
    assert states[2] == {"state": "fault", "detail": "not found on USB"}  # absent, as configured: fault
    # the hint goes with a device that is not ok (health carries it to the centre), none while ok
    assert hints[0] == "" and hints[1] and hints[2] == "plug it in"


def test_poor_quality_is_degraded_until_a_capture_at_or_above_the_floor(iris: FakeDevice) -> None:
    devices = Devices({"iris": iris})
    states = run(
        devices,
        lambda d: d.self_test("iris"),
        lambda d: d.capture("iris", captured(CaptureReport(0.30, 0.50))),
        lambda d: d.self_test("iris"),  # a self-test cannot see quality: it does not clear it
        lambda d: d.capture("iris", captured(CaptureReport())),  # nothing graded: still degraded
        lambda d: d.capture("iris", captured(CaptureReport(0.92, 0.50))),
    )
    degraded = {"state": "degraded", "detail": "last capture quality 0.30, below 0.50; answers"}
    assert states[1:4] == [degraded, degraded, degraded]
    assert states[4] == {"state": "ok", "detail": "answers"}
    diag = asyncio.run(_self_test_then_close(Devices({"iris": iris}), CaptureReport(0.1, 0.5)))
    assert diag.state is DeviceState.DEGRADED and diag.passed and "window" in diag.hint


async def _self_test_then_close(devices: Devices, report: CaptureReport) -> SelfTestResult:
    try:
        await devices.capture("iris", captured(report))
        return await devices.self_test("iris")  # what `diag` prints through the service
    finally:
        devices.close()


def test_a_rejected_capture_is_degraded_with_the_drivers_message(iris: FakeDevice) -> None:
    devices = Devices({"iris": iris})
    rejected = CaptureRejected("finger 1: image quality 0.05 below 0.40", device="iris", quality=0.05)
    states = run(
        devices,
        lambda d: d.self_test("iris"),
        lambda d: d.capture("iris", failing(rejected)),
        lambda d: d.self_test("iris"),
        lambda d: d.capture("iris", captured(CaptureReport(0.9, 0.4))),
    )
    assert states[1]["state"] == states[2]["state"] == "degraded"
    assert states[2]["detail"].startswith("last capture rejected: finger 1: image quality 0.05 below 0.40")
    assert states[3]["state"] == "ok"


def test_what_a_capture_worked_around_is_degraded_until_the_next_capture(iris: FakeDevice) -> None:
    devices = Devices({"iris": iris})
    states = run(
        devices,
        lambda d: d.self_test("iris"),
        lambda d: d.capture("iris", captured(CaptureReport(0.9, 0.3, ("recovered from 4 broken packets",)))),
        lambda d: d.capture("iris", captured(CaptureReport(0.9, 0.3))),
    )
    assert states[1] == {
        "state": "degraded",
        "detail": "last capture recovered from 4 broken packets; answers",
    }
    assert states[2]["state"] == "ok"


def test_a_self_test_in_fault_wins_over_capture_problems(iris: FakeDevice) -> None:
    devices = Devices({"iris": iris})

    async def time_out(d: Devices) -> None:
        iris.result = SelfTestResult("iris", DeviceState.FAULT, "did not answer", "replug it")
        await d.self_test("iris")

    states = run(devices, lambda d: d.capture("iris", captured(CaptureReport(0.1, 0.5))), time_out)
    assert states[1] == {"state": "fault", "detail": "did not answer"}


def test_a_session_self_tests_all_four_first_and_names_the_one_in_fault() -> None:
    fakes = {name: FakeDevice(name) for name in ("fingerprint", "signature", "iris", "camera")}
    fakes["iris"].result = SelfTestResult("iris", DeviceState.FAULT, "did not answer", "replug it")
    devices = Devices(dict(fakes))
    try:
        with pytest.raises(CaptureError, match="iris is fault: did not answer; replug it") as info:
            asyncio.run(ensure_ready(devices))
        assert info.value.device == "iris" and info.value.code == "device-fault"
        assert all(fake.tests == 1 for fake in fakes.values())
        fakes["iris"].result = SelfTestResult("iris", DeviceState.DEGRADED, "slow answer", "check the cable")
        asyncio.run(ensure_ready(devices))  # degraded works: the session goes on
        assert all(fake.tests == 2 for fake in fakes.values())
    finally:
        devices.close()


def test_a_self_test_behind_a_long_capture_is_not_taken_for_a_hang(
    iris: FakeDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devices_module, "SELF_TEST_TIMEOUT_S", 0.2)

    def slow_capture(_driver: Peripheral) -> tuple[str, CaptureReport]:
        time.sleep(0.5)  # a resident taking their time, on the device's thread
        return "image", CaptureReport(0.9, 0.5)

    async def main(devices: Devices) -> SelfTestResult:
        capture = asyncio.ensure_future(devices.capture("iris", slow_capture))
        await asyncio.sleep(0.05)
        result = await devices.self_test("iris")  # waits 0.45 s for the capture, then runs
        await capture
        return result

    devices = Devices({"iris": iris})
    try:
        assert asyncio.run(main(devices)).state is DeviceState.OK
        monkeypatch.setattr(devices_module, "BUSY_TIMEOUT_S", 0.2)
        result = asyncio.run(main(devices))
        assert result.state is DeviceState.FAULT and "busy for over" in result.detail
        assert iris.tests == 1  # the self-test that could not start was dropped, not run later
    finally:
        devices.close()
