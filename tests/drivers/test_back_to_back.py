"""One driver suite for the simulator and for real hardware.

By default every test runs against the simulator (in-process, on real ptys and the
pyusb simulator backend). Name real devices in the environment and the same tests run
against them instead, e.g. on a kiosk:

    EKTP_HW_FINGERPRINT=/dev/ttyAMA0 EKTP_HW_SIGNATURE=/dev/ttyUSB0 \\
    EKTP_HW_IRIS=1209:0001 EKTP_HW_CAMERA=0 .venv/bin/pytest tests/drivers/test_back_to_back.py

(The fault-injection suites stay simulator-only: real hardware cannot be told to fail.)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.base import Peripheral
from drivers.camera import FaceCamera
from drivers.fingerprint import FingerprintScanner
from drivers.health import DeviceState
from drivers.iris import IrisCamera
from drivers.signature import SignaturePad
from hw_sim.server import SimServer

DEVICES = ("fingerprint", "signature", "iris", "camera")
ENV = {name: f"EKTP_HW_{name.upper()}" for name in DEVICES}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer | None]:
    simulated = [d for d in DEVICES if not os.environ.get(ENV[d])]
    if not simulated:
        yield None
        return
    tmp = Path(tempfile.mkdtemp(prefix="ektp-b2b-"))
    server = SimServer(tmp, simulated)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def make_driver(name: str, sim: SimServer | None) -> Peripheral:
    real = os.environ.get(ENV[name])
    if name == "fingerprint":
        return FingerprintScanner(
            real or str(sim.sim_dir / "fingerprint"), finger_timeout_s=10 if real else 1
        )  # type: ignore[union-attr]
    if name == "signature":
        if real:  # probed at 38400 then 19200, as host drivers do
            return SignaturePad(real, quiet_s=1.5)
        return SignaturePad(str(sim.sim_dir / "signature"), 19200, quiet_s=0.1)  # type: ignore[union-attr]
    if name == "iris":
        if real:
            vid, pid = (int(x, 16) for x in real.split(":"))
            return IrisCamera(vid, pid)
        from hw_sim.usb_backend import SimUsbBackend

        return IrisCamera(backend=SimUsbBackend(sim.sim_dir))  # type: ignore[union-attr]
    if real:
        from drivers.camera.picamera_backend import Picamera2Backend

        return FaceCamera(Picamera2Backend(), int(real))
    from hw_sim.camera import SimCameraBackend

    return FaceCamera(SimCameraBackend(sim.sim_dir))  # type: ignore[union-attr]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest, sim: SimServer | None) -> Iterator[Peripheral]:
    driver = make_driver(request.param, sim)
    yield driver
    driver.close()


def capture(driver: Peripheral) -> Any:
    if isinstance(driver, FingerprintScanner):
        return driver.capture_finger(2)
    if isinstance(driver, SignaturePad):
        return driver.capture_signature()
    if isinstance(driver, IrisCamera):
        return driver.capture_iris(0)
    assert isinstance(driver, FaceCamera)
    return driver.capture_face()


def test_self_test_passes_and_says_what_it_tried(device: Peripheral) -> None:
    result = device.self_test()
    assert result.state is DeviceState.OK, result
    assert result.device == device.name
    assert result.tried and result.detail


def test_capture_gives_an_image_with_a_quality(device: Peripheral) -> None:
    shot = capture(device)
    assert 0.0 <= shot.quality <= 1.0
    if isinstance(device, SignaturePad):
        assert shot.strokes and shot.png.startswith(b"\x89PNG")
    elif isinstance(device, FaceCamera):
        assert shot.jpeg.startswith(b"\xff\xd8") and shot.width > 0 and shot.height > 0
    else:
        assert shot.pixels is not None and len(shot.pixels) == shot.width * shot.height


def test_close_then_use_again_reopens(device: Peripheral) -> None:
    assert device.self_test().passed
    device.close()
    device.close()  # twice is fine
    assert device.self_test().passed
    capture(device)
