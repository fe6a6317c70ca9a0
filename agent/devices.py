"""The kit's four peripherals as the service holds them: one owner thread per device.

Every call to a driver (self-test, capture) runs on that device's own single thread,
so one device never sees two requests at once and a hung device stalls only its own
thread, never the core loop, the link or the watchdog.

What health, ``status`` and ``diag`` report for a device is its last self-test merged
with what its captures showed, because a self-test cannot see everything: no device can
grade image quality without a resident in front of it. So:

- a capture that failed (a typed driver error) makes the device ``fault`` with that
  error, until a self-test that started after it passes, or a capture succeeds;
- a capture below the driver's quality floor (or rejected after its retries) makes it
  ``degraded`` ("last capture quality 0.05, below 0.40"), until a capture at or above it;
- what the last capture had to put up with (broken packets skipped, answers slower than
  the driver's self-test allows) makes it ``degraded`` until the next capture;
- a self-test in fault (or absent) wins over all of these: it is the newer, surer word.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from agent.config import AgentConfig
from drivers.base import Peripheral
from drivers.camera.device import FaceCamera
from drivers.errors import CaptureRejected, DriverError
from drivers.fingerprint.device import FingerprintScanner
from drivers.health import DeviceState, SelfTestResult
from drivers.iris.device import IrisCamera
from drivers.signature.device import SignaturePad

log = logging.getLogger("ektp.devices")

DEVICE_NAMES = ("fingerprint", "signature", "iris", "camera")
# The simulator presents a finger at once and signs at the pen's pace without pauses;
# waiting as long as for a person would only slow synthetic enrollments down. The pen-up
# wait still covers a loaded machine stalling the simulator between two strokes.
SIM_FINGER_TIMEOUT_S = 1.0
SIM_PEN_UP_QUIET_S = 0.3
SELF_TEST_TIMEOUT_S = 15.0  # a self-test still running after this counts as a fault
BUSY_TIMEOUT_S = 90.0  # a self-test queued behind a capture longer than this: the capture hangs
T = TypeVar("T")

# What a technician does about poor captures; a self-test cannot see them, so the driver's hint cannot say it.
POOR_CAPTURE_HINTS = {
    "fingerprint": "clean the sensor glass (and the resident's finger) and capture again; if every finger "
    "scores low, the sensor is worn: replace the module",
    "signature": "ask the resident to sign again, across the pad; if every signature comes out as a short "
    "scribble, check the pen (tip, battery) and the pad's surface",
    "iris": "clean the iris camera's window, check that its illuminator lights, and place the resident's eyes "
    "in the guide; if every capture scores low, send the camera for repair",
    "camera": "clean the lens and check the lighting at the kiosk (no back light, no dark corner)",
}


@dataclass(frozen=True, slots=True)
class CaptureReport:
    """What one capture says about its device besides its data."""

    quality: float | None = None  # None: nothing to grade (e.g. no finger was presented)
    floor: float | None = None  # the driver's quality floor
    notes: tuple[str, ...] = ()  # what the driver had to work around ("recovered from 3 broken packets")


@dataclass
class DeviceSlot:
    name: str
    driver: Peripheral
    thread: concurrent.futures.ThreadPoolExecutor
    last: SelfTestResult  # the last self-test, as configured
    checked_at: float | None = None
    reported: SelfTestResult | None = None  # what health and diag show: ``last`` merged with the captures
    # a failed capture's error, until a self-test that started after it passes or a capture succeeds
    capture_failed: str = ""
    capture_failed_at: float = 0.0  # time.monotonic() when that capture started
    poor_capture: str = ""  # the last graded capture's quality problem, until a capture at or above the floor
    capture_notes: tuple[str, ...] = ()  # what the last capture had to work around, until the next capture

    def __post_init__(self) -> None:
        if self.reported is None:
            self.reported = self.last

    @property
    def health(self) -> SelfTestResult:
        """What health, ``status`` and ``diag`` show for the device."""
        return self.reported or self.last


def as_configured(result: SelfTestResult) -> SelfTestResult:
    """A driver says "absent" when it finds no device; for a device the config enables,
    that is a fault the technician must fix (``absent`` is kept for disabled devices)."""
    if result.state is DeviceState.ABSENT:
        return dataclasses.replace(result, state=DeviceState.FAULT)
    return result


def merged(slot: DeviceSlot) -> SelfTestResult:
    """The device's state from its last self-test and its captures (module docstring)."""
    base = slot.last
    if not base.passed:
        return base
    if slot.capture_failed:
        return dataclasses.replace(
            base,
            state=DeviceState.FAULT,
            detail=f"last capture failed: {slot.capture_failed}",
            hint=f"the {slot.name} failed during an enrollment; `ektp-agent diag {slot.name}` tests it again",
        )
    problems = [p for p in (slot.poor_capture, *slot.capture_notes) if p]
    if not problems:
        return base
    if slot.poor_capture:
        hint = POOR_CAPTURE_HINTS.get(slot.name, base.hint)
    else:
        hint = (
            base.hint
            or f"the {slot.name} works, but slowly or through noise: check its cable, connector and power"
        )
    return dataclasses.replace(
        base, state=DeviceState.DEGRADED, detail="; ".join([*problems, base.detail]), hint=hint
    )


def build_drivers(config: AgentConfig, *, simulate: bool) -> dict[str, Peripheral]:
    """The configured drivers; ``simulate`` points each at the simulator under ``{data_dir}/sim``."""
    d = config.devices
    drivers: dict[str, Peripheral] = {}
    sim = config.sim_dir
    if d.fingerprint.enabled:
        port = str(sim / "fingerprint") if simulate else d.fingerprint.port
        drivers["fingerprint"] = FingerprintScanner(
            port, d.fingerprint.baud, finger_timeout_s=2.0 if simulate else None
        )
    if d.signature.enabled:
        port = str(sim / "signature") if simulate else d.signature.port
        quiet_s = SIM_PEN_UP_QUIET_S if simulate else d.signature.pen_up_quiet_s
        drivers["signature"] = SignaturePad(port, d.signature.baud, quiet_s=quiet_s)
    if d.iris.enabled:
        backend: Any = None
        if simulate:
            from hw_sim.usb_backend import SimUsbBackend  # only a simulated kit needs the simulator

            backend = SimUsbBackend(sim)
        drivers["iris"] = IrisCamera(d.iris.vid, d.iris.pid, backend=backend)
    if d.camera.enabled:
        if simulate:
            from hw_sim.camera import SimCameraBackend

            camera_backend: Any = SimCameraBackend(sim)
        else:
            from drivers.camera.picamera_backend import Picamera2Backend

            camera_backend = Picamera2Backend()
        drivers["camera"] = FaceCamera(camera_backend, d.camera.index)
    return drivers


class Devices:
    """Owns the drivers; every driver call goes through ``call`` on the device's thread."""

    def __init__(
        self, drivers: dict[str, Peripheral], *, on_change: Callable[[], None] | None = None
    ) -> None:
        self.on_change = on_change
        self.slots: dict[str, DeviceSlot] = {
            name: DeviceSlot(
                name,
                driver,
                concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"dev-{name}"),
                SelfTestResult(name, DeviceState.ABSENT, "not checked yet", "wait for the first self-test"),
            )
            for name, driver in drivers.items()
        }

    async def call(self, name: str, fn: Callable[[Peripheral], T], *, timeout: float | None = None) -> T:
        slot = self.slots[name]
        future = asyncio.get_running_loop().run_in_executor(slot.thread, fn, slot.driver)
        return await asyncio.wait_for(future, timeout) if timeout else await future

    async def self_test(self, name: str) -> SelfTestResult:
        """Self-test the device on its thread; returns what is now reported for it (merged with its captures).

        The test waits behind a capture already running on the device's thread; its timeout
        counts from when it starts, so a long capture ahead of it is not taken for a hang.
        """
        slot = self.slots[name]
        loop = asyncio.get_running_loop()
        running = asyncio.Event()
        started = time.monotonic()

        def test(driver: Peripheral) -> tuple[float, SelfTestResult]:
            loop.call_soon_threadsafe(running.set)
            return time.monotonic(), driver.self_test()  # when it really started: after queued work

        try:
            future = loop.run_in_executor(slot.thread, test, slot.driver)
            waiter = asyncio.ensure_future(running.wait())
            try:
                either: set[asyncio.Future[Any]] = {future, waiter}
                await asyncio.wait(either, timeout=BUSY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            if not running.is_set() and not future.done():
                future.cancel()  # never started: drop it from the queue
                raise TimeoutError
            started, raw = await asyncio.wait_for(future, SELF_TEST_TIMEOUT_S)
            result = as_configured(raw)
        except TimeoutError:
            result = SelfTestResult(
                name,
                DeviceState.FAULT,
                f"self-test did not finish within {SELF_TEST_TIMEOUT_S:.0f} s"
                if running.is_set()
                else f"self-test could not start: the {name} has been busy for over {BUSY_TIMEOUT_S:.0f} s",
                f"the {name} hangs: unplug and replug it, then run `ektp-agent diag {name}`",
            )
        except Exception as exc:  # a driver bug must not stop the monitoring of the others
            log.exception("self-test of %s raised", name)
            result = SelfTestResult(
                name, DeviceState.FAULT, f"self-test raised {type(exc).__name__}: {exc}", "report this bug"
            )
        slot.last, slot.checked_at = result, time.time()
        if result.passed and started > slot.capture_failed_at:
            slot.capture_failed = ""  # the device answers again since the capture that failed
        return self._report(slot)

    async def self_test_all(self, names: list[str] | None = None) -> dict[str, SelfTestResult]:
        wanted = [n for n in (names or list(self.slots)) if n in self.slots]
        results = await asyncio.gather(*(self.self_test(n) for n in wanted))
        return dict(zip(wanted, results, strict=True))

    async def capture(self, name: str, work: Callable[[Peripheral], tuple[T, CaptureReport]]) -> T:
        """Run one capture on the device's thread and keep what it says about the device.

        :raises DriverError: the capture failed (recorded first: health shows it at once)
        """
        slot = self.slots[name]
        started = time.monotonic()
        try:
            value, report = await self.call(name, work)
        except CaptureRejected as exc:
            slot.poor_capture = f"last capture rejected: {exc}"
            slot.capture_failed, slot.capture_notes = "", ()
            self._report(slot)
            raise
        except DriverError as exc:
            slot.capture_failed, slot.capture_failed_at = str(exc), started
            self._report(slot)
            raise
        if report.quality is not None and report.floor is not None:
            slot.poor_capture = (
                f"last capture quality {report.quality:.2f}, below {report.floor:.2f}"
                if report.quality < report.floor
                else ""
            )
        slot.capture_failed, slot.capture_notes = "", tuple(f"last capture {n}" for n in report.notes)
        self._report(slot)
        return value

    def states(self) -> dict[str, dict[str, str]]:
        out = {n: {"state": "absent", "detail": "disabled in the config"} for n in DEVICE_NAMES}
        for name, slot in self.slots.items():
            health = slot.health  # the hint travels to the centre's fleet view (only when not ok)
            hint = "" if health.state.value == "ok" else health.hint
            out[name] = {"state": health.state.value, "detail": health.detail, "hint": hint}
        return out

    def faulty(self) -> list[SelfTestResult]:
        return [s.health for s in self.slots.values() if not s.health.passed]

    def close(self) -> None:
        for slot in self.slots.values():
            try:
                slot.thread.submit(slot.driver.close).result(5)
            except Exception as exc:
                log.warning("closing %s: %s", slot.name, exc)
            slot.thread.shutdown(wait=False, cancel_futures=True)

    def _report(self, slot: DeviceSlot) -> SelfTestResult:
        """Merge, log a change of state, and tell ``on_change`` when what is reported changed."""
        before, now = slot.health, merged(slot)
        slot.reported = now
        if now.state != before.state:
            log.log(
                logging.WARNING if now.state in (DeviceState.FAULT, DeviceState.ABSENT) else logging.INFO,
                "%s: %s -> %s%s",
                slot.name,
                before.state.value,
                now.state.value,
                f" ({now.detail})" if now.detail else "",
            )
        if (now.state != before.state or now.detail != before.detail) and self.on_change is not None:
            self.on_change()
        return now
