"""The face camera driver: a Raspberry Pi camera module through picamera2 (or the simulator's
backend), still capture to JPEG, and image checks that score the result.

One capture at a time. After a timeout or a libcamera error the camera is closed and the next
call opens it again; whether the camera is still listed decides disconnected vs device error.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from dataclasses import dataclass

from drivers.camera.backend import CameraBackend, CameraHandle
from drivers.camera.picamera_backend import INSTALL_HINT, Picamera2Missing
from drivers.camera.quality import assess_jpeg
from drivers.errors import (
    DeviceDisconnected,
    DeviceProtocolError,
    DeviceReportedError,
    DeviceTimeout,
    DriverError,
)
from drivers.health import Problem, SelfTestResult, failed_self_test, passed_self_test

CAPTURE_TIMEOUT_S = 5.0
STILL_SIZE = (480, 640)  # width x height of the portrait face image
DEFAULT_MIN_QUALITY = 0.5
# A still from a started camera comes within a few frame times; slower than this, the self-test
# reports "degraded" (the sensor is starved, or libcamera keeps retrying a flaky ribbon).
SLOW_FRAME_S = 0.4
# What libcamera and picamera2 raise for a camera failure (RuntimeError for most of it).
CAMERA_ERRORS = (RuntimeError, OSError, ValueError)


@dataclass(frozen=True, slots=True)
class FaceCapture:
    """One face image as JPEG, with the checks' verdict."""

    jpeg: bytes
    width: int
    height: int
    quality: float  # 0..1: exposure x clipping x sharpness
    detail: str
    frame_s: float = 0.0  # from the capture request until the JPEG was in hand


class FaceCamera:
    """Camera ``index`` of ``backend`` (``Picamera2Backend()`` on a Pi, ``SimCameraBackend(dir)`` simulated)."""

    name = "camera"

    def __init__(
        self,
        backend: CameraBackend,
        index: int = 0,
        *,
        size: tuple[int, int] = STILL_SIZE,
        timeout_s: float = CAPTURE_TIMEOUT_S,
        min_quality: float = DEFAULT_MIN_QUALITY,
        slow_frame_s: float = SLOW_FRAME_S,
    ) -> None:
        self.backend = backend
        self.index = index
        self.size = size
        self.timeout_s = timeout_s
        self.min_quality = min_quality
        self.slow_frame_s = slow_frame_s
        self.port = f"camera {index}"
        self._lock = threading.Lock()
        self._cam: CameraHandle | None = None

    def open(self) -> None:
        """Open, configure and start the camera.

        :raises DeviceDisconnected: no camera at ``index``, or picamera2 is not installed
        :raises DeviceReportedError: libcamera failed to open or start it
        """
        with self._lock:
            self._ensure_open()

    def close(self) -> None:
        """Stop and release the camera; safe to call twice."""
        with self._lock:
            self._drop()

    def capture_face(self) -> FaceCapture:
        """Capture one still as JPEG and score it; a dark, bright or blurred face comes back with a low quality.

        :raises DeviceDisconnected: the camera is gone (or picamera2 is missing)
        :raises DeviceTimeout: no frame within ``timeout_s``
        :raises DeviceReportedError: libcamera reported an error
        :raises DeviceProtocolError: the JPEG is corrupt or truncated
        """
        with self._lock:
            cam = self._ensure_open()
            out = io.BytesIO()
            started = time.monotonic()
            try:
                job = cam.capture_file(out, format="jpeg", wait=False)
                cam.wait(job, timeout=self.timeout_s)
            except DriverError:
                self._drop()
                raise
            except TimeoutError as exc:
                self._drop()
                raise DeviceTimeout(
                    f"camera {self.index} gave no frame within {self.timeout_s:g} s",
                    device=self.name,
                    port=self.port,
                ) from exc
            except (IndexError, *CAMERA_ERRORS) as exc:
                self._drop()
                raise self._capture_failed(exc) from exc
            frame_s = time.monotonic() - started
            report = assess_jpeg(out.getvalue(), device=self.name, port=self.port)
            return FaceCapture(
                out.getvalue(), report.width, report.height, report.quality, report.detail, frame_s
            )

    def self_test(self) -> SelfTestResult:
        """Capture a frame and check it (quality, and how long it took); never raises."""
        tried = f"list cameras, open camera {self.index}, capture a {self.size[0]}x{self.size[1]} JPEG"
        try:
            capture = self.capture_face()
        except DriverError as exc:
            return failed_self_test(
                self.name,
                exc,
                tried,
                {
                    Picamera2Missing: INSTALL_HINT,
                    DeviceDisconnected: "check the camera's ribbon cable and that `rpicam-hello --list-cameras` "
                    "lists it",
                    DeviceTimeout: "reseat the ribbon cable and reboot; if it keeps timing out, replace the camera "
                    "module",
                    DeviceProtocolError: "the camera delivers corrupt images: reseat the ribbon cable, then replace "
                    "the module",
                    DriverError: "libcamera reports an error: reboot; check `journalctl` for libcamera messages",
                },
            )
        problems: list[Problem] = []
        if capture.quality < self.min_quality:
            problems.append(
                (
                    f"image quality {capture.quality:.2f} below {self.min_quality:.2f}",
                    "clean the lens and check the lighting at the kiosk (no back light, no dark corner)",
                )
            )
        if capture.frame_s > self.slow_frame_s:
            problems.append(
                (
                    f"slow frame ({capture.frame_s * 1000:.0f} ms, usually under "
                    f"{self.slow_frame_s * 1000:.0f} ms)",
                    "the camera delivers frames slowly: reseat the ribbon cable; check the Pi's power supply "
                    "and temperature (`vcgencmd get_throttled`)",
                )
            )
        return passed_self_test(self.name, capture.detail, tried, problems)

    # -- internals ----------------------------------------------------------------------------

    def _ensure_open(self) -> CameraHandle:
        if self._cam is not None:
            return self._cam
        self._require_listed()
        try:
            cam = self.backend.open_camera(self.index)
        except DriverError:
            raise
        except IndexError as exc:
            raise self._not_listed(0) from exc
        except CAMERA_ERRORS as exc:
            raise DeviceReportedError(
                f"camera {self.index} would not open: {exc}; is another program using it?",
                device=self.name,
                port=self.port,
            ) from exc
        try:
            cam.configure(cam.create_still_configuration(main={"size": self.size}))
            cam.start()
        except CAMERA_ERRORS as exc:
            _release(cam)
            raise DeviceReportedError(
                f"camera {self.index} would not start: {exc}", device=self.name, port=self.port
            ) from exc
        self._cam = cam
        return cam

    def _require_listed(self) -> None:
        cameras = self.backend.global_camera_info()
        if self.index >= len(cameras):
            raise self._not_listed(len(cameras))

    def _not_listed(self, count: int) -> DeviceDisconnected:
        return DeviceDisconnected(
            f"no camera {self.index}: libcamera lists {count} camera(s)", device=self.name, port=self.port
        )

    def _capture_failed(self, exc: BaseException) -> DriverError:
        """Disconnected when the camera is no longer listed, else the camera's own error."""
        try:
            self._require_listed()
        except DriverError as gone:
            return gone
        except CAMERA_ERRORS:
            pass
        return DeviceReportedError(
            f"camera {self.index} capture failed: {exc}", device=self.name, port=self.port
        )

    def _drop(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            _release(cam)


def _release(cam: CameraHandle) -> None:
    with contextlib.suppress(*CAMERA_ERRORS):
        cam.stop()
    with contextlib.suppress(*CAMERA_ERRORS):
        cam.close()
