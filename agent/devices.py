"""The kit's four peripherals as the service holds them: one owner thread per device.

Every call to a driver (self-test, capture) runs on that device's own single thread,
so one device never sees two requests at once and a hung device stalls only its own
thread, never the core loop, the link or the watchdog. The last self-test result of
each device is what health and ``status`` report.
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
from drivers.fingerprint.device import FingerprintScanner
from drivers.health import DeviceState, SelfTestResult
from drivers.iris.device import IrisCamera
from drivers.signature.device import SignaturePad

log = logging.getLogger("ektp.devices")

DEVICE_NAMES = ("fingerprint", "signature", "iris", "camera")
# The simulator presents a finger or streams a signature at once; waiting as long as for
# a person would only slow synthetic enrollments down.
SIM_FINGER_TIMEOUT_S = 1.0
SIM_PEN_UP_QUIET_S = 0.1
SELF_TEST_TIMEOUT_S = 15.0  # a self-test still running after this counts as a fault
T = TypeVar("T")


@dataclass
class DeviceSlot:
    name: str
    driver: Peripheral
    thread: concurrent.futures.ThreadPoolExecutor
    last: SelfTestResult
    checked_at: float | None = None


def as_configured(result: SelfTestResult) -> SelfTestResult:
    """A driver says "absent" when it finds no device; for a device the config enables,
    that is a fault the technician must fix (``absent`` is kept for disabled devices)."""
    if result.state is DeviceState.ABSENT:
        return dataclasses.replace(result, state=DeviceState.FAULT)
    return result


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
        slot = self.slots[name]
        try:
            result = as_configured(
                await self.call(name, lambda d: d.self_test(), timeout=SELF_TEST_TIMEOUT_S)
            )
        except TimeoutError:
            result = SelfTestResult(
                name,
                DeviceState.FAULT,
                f"self-test did not finish within {SELF_TEST_TIMEOUT_S:.0f} s",
                f"the {name} hangs: unplug and replug it, then run `ektp-agent diag {name}`",
            )
        except Exception as exc:  # a driver bug must not stop the monitoring of the others
            log.exception("self-test of %s raised", name)
            result = SelfTestResult(
                name, DeviceState.FAULT, f"self-test raised {type(exc).__name__}: {exc}", "report this bug"
            )
        changed = result.state != slot.last.state or result.detail != slot.last.detail
        if result.state != slot.last.state:
            log.log(
                logging.WARNING if result.state in (DeviceState.FAULT, DeviceState.ABSENT) else logging.INFO,
                "%s: %s -> %s%s",
                name,
                slot.last.state.value,
                result.state.value,
                f" ({result.detail})" if result.detail else "",
            )
        slot.last, slot.checked_at = result, time.time()
        if changed and self.on_change is not None:
            self.on_change()
        return result

    async def self_test_all(self, names: list[str] | None = None) -> dict[str, SelfTestResult]:
        wanted = [n for n in (names or list(self.slots)) if n in self.slots]
        results = await asyncio.gather(*(self.self_test(n) for n in wanted))
        return dict(zip(wanted, results, strict=True))

    def states(self) -> dict[str, dict[str, str]]:
        out = {n: {"state": "absent", "detail": "disabled in the config"} for n in DEVICE_NAMES}
        for name, slot in self.slots.items():
            out[name] = {"state": slot.last.state.value, "detail": slot.last.detail}
        return out

    def faulty(self) -> list[SelfTestResult]:
        return [s.last for s in self.slots.values() if not s.last.passed]

    def close(self) -> None:
        for slot in self.slots.values():
            try:
                slot.thread.submit(slot.driver.close).result(5)
            except Exception as exc:
                log.warning("closing %s: %s", slot.name, exc)
            slot.thread.shutdown(wait=False, cancel_futures=True)
