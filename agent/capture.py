"""The capture session: one resident's face, ten fingers, two irises and signature,
taken from the drivers and built into an ``EnrollmentRecord``.

Before anything is captured, every peripheral is self-tested afresh (the four at once,
each on its own thread; the pen query's settle time, about 0.3 s, bounds it on a healthy
kit): a peripheral in fault fails the session with a message naming it, and nothing is
committed. (The monitor's periodic self-tests go on during sessions too, each queued
behind the capture on its device's thread.) Each capture reports
its quality against the driver's floor, and what the driver worked around, to
``Devices`` (a self-test cannot grade quality). Image encoding runs on the device's
thread, never on the core loop: fingers and irises straight to JPEG 2000, the face to a JPEG,
at the settings of ``wire.image_codec`` (what record version 2 sends; the qualities stay
those measured on the lossless capture).

Ten distinct fingers: each finger's features are extracted on the fingerprint module and
matched there against the fingers already taken in this session; a finger that matches
one of them ends the session with code ``repeated-finger`` and a message that tells the
operator which finger to place ("finger 3 looks like finger 1: place the right middle
finger"). The module's match scores are kept in the session's ``CaptureMetadata`` and in the
record's ``capture`` block.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, cast

from PIL import Image

from agent.devices import DEVICE_NAMES, CaptureReport, Devices
from drivers.base import Peripheral
from drivers.camera.device import FaceCamera
from drivers.errors import DriverError
from drivers.fingerprint import device as fingerprint_device
from drivers.fingerprint.device import FingerprintScanner, FingerTemplate, RepeatedFinger
from drivers.iris import device as iris_device
from drivers.iris.device import IrisCamera
from drivers.signature import device as signature_device
from drivers.signature.device import SignaturePad
from wire.image_codec import FINGER_J2K_RATIO, IRIS_J2K_RATIO, face_jpeg, gray_jp2
from wire.nik import validate_nik
from wire.record import (
    Demographics,
    EnrollmentRecord,
    FaceImage,
    FingerException,
    FingerPosition,
    Fingerprint,
    IrisImage,
    Signature,
)

T = TypeVar("T")
log = logging.getLogger("ektp.capture")


class CaptureError(Exception):
    """The session could not complete; ``device`` names the peripheral at fault."""

    def __init__(self, message: str, *, device: str, code: str = "capture-failed") -> None:
        super().__init__(message)
        self.device = device
        self.code = code


@dataclass(frozen=True, slots=True)
class CaptureMetadata:
    """What the session measured besides the biometrics themselves."""

    # per finger position: (earlier position, the module's match score) for every finger taken before it
    finger_scores: dict[int, tuple[tuple[int, int], ...]]
    iris_serial: str = ""  # the iris camera's serial: the iris record's device identifier

    def highest_finger_score(self) -> tuple[int, int, int] | None:
        """(score, position, earlier position) of the closest pair of fingers, None when fewer than two."""
        pairs = [(s, p, e) for p, scores in self.finger_scores.items() for e, s in scores]
        return max(pairs) if pairs else None

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "finger_scores": {
                str(p): [{"against": e, "score": s} for e, s in scores]
                for p, scores in sorted(self.finger_scores.items())
            }
        }
        if self.iris_serial:
            doc["devices"] = {"iris": {"serial": self.iris_serial}}
        return doc


@dataclass(frozen=True, slots=True)
class Applicant:
    """Who is being enrolled: the NIK and demographics from the operator's form."""

    nik: str
    demographics: Demographics


async def ensure_ready(devices: Devices) -> None:
    """Self-test every peripheral now. :raises CaptureError: one is missing or fails (the first, in order)"""
    for name in DEVICE_NAMES:
        if name not in devices.slots:
            raise CaptureError(
                f"the {name} is disabled in the config; an enrollment needs all four",
                device=name,
                code="device-fault",
            )
    results = await devices.self_test_all(list(DEVICE_NAMES))
    for name in DEVICE_NAMES:
        result = results[name]
        if not result.passed:
            raise CaptureError(
                f"{name} is {result.state.value}: {result.detail}; {result.hint}",
                device=name,
                code="device-fault",
            )


async def capture_enrollment(devices: Devices, applicant: Applicant) -> EnrollmentRecord:
    """Capture every biometric of one resident. :raises CaptureError:"""
    record, _metadata = await capture_enrollment_with_metadata(devices, applicant)
    return record


async def capture_enrollment_with_metadata(
    devices: Devices, applicant: Applicant
) -> tuple[EnrollmentRecord, CaptureMetadata]:
    """Capture every biometric of one resident, and what the session measured. :raises CaptureError:"""
    validate_nik(applicant.nik)
    await ensure_ready(devices)
    face = await _step(devices, "camera", _face)
    fingers: dict[int, Fingerprint] = {}
    taken: list[FingerTemplate] = []
    scores: dict[int, tuple[tuple[int, int], ...]] = {}
    for position in FingerPosition:
        work = functools.partial(_finger, position=position, taken=tuple(taken))
        shot = await _step(devices, "fingerprint", work)
        if isinstance(shot, RepeatedFinger):  # the operator's slip, not the device's fault
            raise CaptureError(str(shot), device="fingerprint", code="repeated-finger")
        fingers[position], template, scores[position] = shot
        if template is not None:
            taken.append(template)
    metadata = CaptureMetadata(scores)
    closest = metadata.highest_finger_score()
    if closest is not None:
        log.info(
            "ten fingers distinct: closest pair finger %d / %d, match score %d",
            closest[1],
            closest[2],
            closest[0],
        )
    right, serial = await _step(devices, "iris", lambda d: _iris(d, 0))
    left, _ = await _step(devices, "iris", lambda d: _iris(d, 1))
    metadata = dataclasses.replace(metadata, iris_serial=serial)
    signature = await _step(devices, "signature", _signature)
    record = EnrollmentRecord(
        nik=applicant.nik,
        demographics=applicant.demographics,
        face=face,
        fingerprints=fingers,
        right_iris=right,
        left_iris=left,
        signature=signature,
        capture=metadata.to_json(),  # the scores travel in the record, inside the packet's encryption
    )
    return record, metadata


async def _step(devices: Devices, name: str, work: Callable[[Peripheral], tuple[T, CaptureReport]]) -> T:
    try:
        return await devices.capture(name, work)
    except DriverError as exc:
        await devices.self_test(name)  # health says at once whether the device itself is at fault
        raise CaptureError(f"{name}: {exc}", device=name) from exc


def _face(driver: Peripheral) -> tuple[FaceImage, CaptureReport]:
    camera = cast(FaceCamera, driver)
    shot = camera.capture_face()
    notes = _slow(shot.frame_s, camera.slow_frame_s, "a slow frame")
    report = CaptureReport(shot.quality, camera.min_quality, notes)
    # sent as a JPEG of the record's quality (wire.image_codec); the quality is the camera's own
    return FaceImage(face_jpeg(shot.jpeg), shot.width, shot.height, _percent(shot.quality)), report


FingerShot = tuple[Fingerprint, FingerTemplate | None, tuple[tuple[int, int], ...]]


def _finger(
    driver: Peripheral, position: FingerPosition, taken: tuple[FingerTemplate, ...]
) -> tuple[FingerShot | RepeatedFinger, CaptureReport]:
    scanner = cast(FingerprintScanner, driver)
    try:
        shot = scanner.capture_finger(int(position), taken)
    except RepeatedFinger as exc:  # a good image of the wrong finger: the device is fine
        return exc, CaptureReport(exc.quality, scanner.min_quality)
    if shot.pixels is None:
        reason = (
            FingerException.MISSING if "no finger" in (shot.exception or "") else FingerException.UNUSABLE
        )
        missing = Fingerprint(position, None, 0, 0, 0, attempts=min(shot.attempts, 99), exception=reason)
        slow = _slow(shot.handshake_s, fingerprint_device.SLOW_ANSWER_S, "a slow handshake")
        return (missing, None, ()), CaptureReport(notes=slow)  # no grade: the resident has no such finger
    image = gray_jp2(shot.pixels, shot.width, shot.height, ratio=FINGER_J2K_RATIO)
    finger = Fingerprint(
        position, image, shot.width, shot.height, _percent(shot.quality), attempts=max(1, shot.attempts)
    )
    slow = _slow(shot.handshake_s, fingerprint_device.SLOW_ANSWER_S, "a slow handshake")
    return (finger, shot.template, shot.scores), CaptureReport(shot.quality, scanner.min_quality, slow)


def _iris(driver: Peripheral, eye: int) -> tuple[tuple[IrisImage, str], CaptureReport]:
    camera = cast(IrisCamera, driver)
    shot = camera.capture_iris(eye)
    image = IrisImage(
        gray_jp2(shot.pixels, shot.width, shot.height, ratio=IRIS_J2K_RATIO),
        shot.width,
        shot.height,
        _percent(shot.quality),
    )
    slow = _slow(shot.slowest_answer_s, iris_device.SLOW_ANSWER_S, "slow answers")
    return (image, shot.serial), CaptureReport(shot.quality, camera.min_quality, slow)


def _signature(driver: Peripheral) -> tuple[Signature, CaptureReport]:
    pad = cast(SignaturePad, driver)
    shot = pad.capture_signature()
    image = Image.open(io.BytesIO(shot.png))
    png = shot.png
    if image.mode != "L":
        buf = io.BytesIO()
        image.convert("L").save(buf, format="PNG")
        png = buf.getvalue()
    notes: tuple[str, ...] = (
        (f"recovered from {shot.bad_packets} broken packets (skipped)",) if shot.bad_packets else ()
    )
    notes += _slow(shot.query_s, signature_device.SLOW_ANSWER_S, "a slow pen query")
    report = CaptureReport(shot.quality, pad.min_quality, notes)
    return Signature(shot.strokes, png, image.width, image.height), report


def _slow(seconds: float, limit: float, what: str) -> tuple[str, ...]:
    """A capture note when the device answered slower than its driver's self-test allows."""
    if seconds <= limit:
        return ()
    return (f"had {what} ({seconds * 1000:.0f} ms, usually under {limit * 1000:.0f} ms)",)


def _percent(quality: float) -> int:
    return max(0, min(100, round(quality * 100)))
