"""The capture session: one resident's face, ten fingers, two irises and signature,
taken from the drivers and built into an ``EnrollmentRecord``.

Before anything is captured, every peripheral must have passed its last self-test
(re-tested now if it had not): a peripheral in fault fails the session with a message
naming it, and nothing is committed. Image encoding runs on the device's thread, never
on the core loop.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from PIL import Image

from agent.devices import DEVICE_NAMES, Devices
from agent.nik import validate_nik
from agent.record import (
    Demographics,
    EnrollmentRecord,
    FaceImage,
    FingerException,
    FingerPosition,
    Fingerprint,
    IrisImage,
    Signature,
)
from drivers.base import Peripheral
from drivers.errors import DriverError

T = TypeVar("T")
log = logging.getLogger("ektp.capture")


class CaptureError(Exception):
    """The session could not complete; ``device`` names the peripheral at fault."""

    def __init__(self, message: str, *, device: str, code: str = "capture-failed") -> None:
        super().__init__(message)
        self.device = device
        self.code = code


@dataclass(frozen=True, slots=True)
class Applicant:
    """Who is being enrolled: the NIK and demographics from the operator's form."""

    nik: str
    demographics: Demographics


async def ensure_ready(devices: Devices) -> None:
    """:raises CaptureError: a peripheral is missing or failed its self-test (re-tested now)"""
    for name in DEVICE_NAMES:
        if name not in devices.slots:
            raise CaptureError(
                f"the {name} is disabled in the config; an enrollment needs all four",
                device=name,
                code="device-fault",
            )
        if not devices.slots[name].last.passed:
            result = await devices.self_test(name)
            if not result.passed:
                raise CaptureError(
                    f"{name} is {result.state.value}: {result.detail}; {result.hint}",
                    device=name,
                    code="device-fault",
                )


async def capture_enrollment(devices: Devices, applicant: Applicant) -> EnrollmentRecord:
    """Capture every biometric of one resident. :raises CaptureError:"""
    validate_nik(applicant.nik)
    await ensure_ready(devices)
    face = await _step(devices, "camera", _face)
    fingers: dict[int, Fingerprint] = {}
    for position in FingerPosition:
        fingers[position] = await _step(devices, "fingerprint", functools.partial(_finger, position=position))
    right = await _step(devices, "iris", lambda d: _iris(d, 0))
    left = await _step(devices, "iris", lambda d: _iris(d, 1))
    signature = await _step(devices, "signature", _signature)
    return EnrollmentRecord(
        nik=applicant.nik,
        demographics=applicant.demographics,
        face=face,
        fingerprints=fingers,
        right_iris=right,
        left_iris=left,
        signature=signature,
    )


async def _step(devices: Devices, name: str, work: Callable[[Peripheral], T]) -> T:
    try:
        return await devices.call(name, work)
    except DriverError as exc:
        await devices.self_test(name)  # health shows the fault at once, not at the next round
        raise CaptureError(f"{name}: {exc}", device=name) from exc


def _face(driver: Peripheral) -> FaceImage:
    shot = driver.capture_face()  # type: ignore[attr-defined]
    return FaceImage(shot.jpeg, shot.width, shot.height, _percent(shot.quality))


def _finger(driver: Peripheral, position: FingerPosition) -> Fingerprint:
    shot = driver.capture_finger(int(position))  # type: ignore[attr-defined]
    if shot.pixels is None:
        reason = (
            FingerException.MISSING if "no finger" in (shot.exception or "") else FingerException.UNUSABLE
        )
        return Fingerprint(position, None, 0, 0, 0, attempts=min(shot.attempts, 99), exception=reason)
    png = _png_gray(shot.pixels, shot.width, shot.height)
    return Fingerprint(
        position, png, shot.width, shot.height, _percent(shot.quality), attempts=max(1, shot.attempts)
    )


def _iris(driver: Peripheral, eye: int) -> IrisImage:
    shot = driver.capture_iris(eye)  # type: ignore[attr-defined]
    return IrisImage(
        _png_gray(shot.pixels, shot.width, shot.height), shot.width, shot.height, _percent(shot.quality)
    )


def _signature(driver: Peripheral) -> Signature:
    shot = driver.capture_signature()  # type: ignore[attr-defined]
    image = Image.open(io.BytesIO(shot.png))
    png = shot.png
    if image.mode != "L":
        buf = io.BytesIO()
        image.convert("L").save(buf, format="PNG")
        png = buf.getvalue()
    return Signature(shot.strokes, png, image.width, image.height)


def _png_gray(pixels: bytes, width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("L", (width, height), pixels).save(buf, format="PNG")
    return buf.getvalue()


def _percent(quality: float) -> int:
    return max(0, min(100, round(quality * 100)))
