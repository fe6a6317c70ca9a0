"""The simulated face camera: ``SimCamera`` serves JPEG frames of the resident at the desk on
``DIR/camera.sock``; ``SimCameraBackend(DIR)`` is the driver's picamera2-shaped backend over it.

Socket messages (one per connection), little-endian:

    request  op u8 (1 INFO, 2 CAPTURE) | timeout_ms u32 | width u16 | height u16
    reply    status u8 (0 OK, 1 NO_CAMERA, 2 ERROR) | length u32 | body
             INFO: JSON list of cameras as picamera2's global_camera_info(); CAPTURE: JPEG;
             ERROR: the libcamera message

Faults (``faults.active("camera")``, read on every request):

    unplug        INFO lists no camera; CAPTURE answers NO_CAMERA (open raises IndexError)
    timeout       CAPTURE never answers (the driver's wait times out)
    garbage       CAPTURE answers random bytes that are not a JPEG
    bad-checksum  CAPTURE answers a truncated JPEG
    slow          CAPTURE answers SLOW_S late (within the driver's timeout)
    low-quality   the face is blurred and dark
    device-error  CAPTURE answers ERROR, raised by the backend as libcamera's RuntimeError
"""

from __future__ import annotations

import io
import json
import random
import socket
import struct
import threading
from enum import IntEnum
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image, ImageFilter

from hw_sim.device import SimDevice
from hw_sim.faults import FaultKind
from hw_sim.unix_socket import UnixSocketService, recv_exact

SOCKET_NAME = "camera.sock"
JPEG_QUALITY = 85
SLOW_S = 0.5  # under the slow fault (the driver's default capture timeout is 5 s)
DEFAULT_WAIT_S = 10.0  # capture_file(wait=True) without a timeout
SOCKET_MARGIN_S = 1.0
LIBCAMERA_ERROR = "Camera frontend has timed out! (libcamera: dequeue timer expired)"
CAMERA_INFO = {
    "Model": "imx708",
    "Location": 2,
    "Rotation": 0,
    "Id": "/base/axi/pcie@120000/rp1/i2c@88000/imx708@1a",
    "Num": 0,
}
REQUEST = struct.Struct("<BIHH")
REPLY = struct.Struct("<BI")


class CameraOp(IntEnum):
    INFO = 1
    CAPTURE = 2


class CameraStatus(IntEnum):
    OK = 0
    NO_CAMERA = 1
    ERROR = 2


class SimCamera(SimDevice):
    """The simulator's camera module."""

    name = "camera"

    def start(self) -> None:
        self._lock = threading.Lock()
        self._captures = 0
        self._rng = random.Random(0xCA3)
        self._service = UnixSocketService(self.sim_dir / SOCKET_NAME, self._serve, name="sim-camera")
        self._service.start()

    def stop(self) -> None:
        if hasattr(self, "_service"):  # else never started
            self._service.stop()

    def status(self) -> dict[str, object]:
        return {
            "endpoint": str(self._service.path),
            "model": CAMERA_INFO["Model"],
            "captures": self._captures,
            "fault": self.faults.active(self.name) or "",
        }

    def _serve(self, conn: socket.socket) -> None:
        op, timeout_ms, width, height = REQUEST.unpack(recv_exact(conn, REQUEST.size))
        fault = self.faults.active(self.name)
        if op == CameraOp.INFO:
            cameras = [] if fault == FaultKind.UNPLUG else [CAMERA_INFO]
            _reply(conn, CameraStatus.OK, json.dumps(cameras).encode())
            return
        if op != CameraOp.CAPTURE:
            _reply(conn, CameraStatus.ERROR, f"unknown op {op}".encode())
            return
        with self._lock:
            self._captures += 1
        if fault == FaultKind.UNPLUG:
            _reply(conn, CameraStatus.NO_CAMERA, b"")
        elif fault == FaultKind.TIMEOUT:
            self._service.stopping.wait(timeout_ms / 1000 + SOCKET_MARGIN_S)  # never answer
        elif fault == FaultKind.DEVICE_ERROR:
            _reply(conn, CameraStatus.ERROR, LIBCAMERA_ERROR.encode())
        elif fault == FaultKind.GARBAGE:
            _reply(conn, CameraStatus.OK, self._rng.randbytes(self._rng.randrange(500, 5000)))
        else:
            jpeg = self._frame((width, height), low_quality=fault == FaultKind.LOW_QUALITY)
            if fault == FaultKind.BAD_CHECKSUM:
                jpeg = jpeg[: len(jpeg) * 2 // 3]
            elif fault == FaultKind.SLOW and self._service.stopping.wait(SLOW_S):
                return
            _reply(conn, CameraStatus.OK, jpeg)

    def _frame(self, size: tuple[int, int], *, low_quality: bool) -> bytes:
        face = self.desk.current().face_rgb()
        if size != (0, 0) and size != face.size:
            face = face.resize(size, Image.Resampling.BILINEAR)
        if low_quality:
            face = face.filter(ImageFilter.GaussianBlur(8)).point(lambda v: v // 4)
        out = io.BytesIO()
        face.save(out, format="JPEG", quality=JPEG_QUALITY)
        return out.getvalue()


def _reply(conn: socket.socket, status: CameraStatus, body: bytes) -> None:
    conn.sendall(REPLY.pack(status, len(body)) + body)


# -- the driver's side ------------------------------------------------------------------------


class _CaptureJob:
    def __init__(self, output: BinaryIO) -> None:
        self.output = output


class SimCameraHandle:
    """An open simulated camera, shaped like ``Picamera2``."""

    def __init__(self, backend: SimCameraBackend, index: int) -> None:
        self.backend = backend
        self.index = index
        self.camera_config: dict[str, Any] | None = None
        self.started = False
        self.closed = False

    def create_still_configuration(self, main: dict[str, Any] | None = None) -> dict[str, Any]:
        stream = {"format": "BGR888", "size": (4608, 2592)} | dict(main or {})
        return {"use_case": "still", "main": stream, "buffer_count": 1}

    def configure(self, camera_config: Any) -> None:
        if self.closed or self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        self.camera_config = dict(camera_config)

    def start(self) -> None:
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        self.started = True

    def capture_file(
        self, file_output: BinaryIO, name: str = "main", format: str | None = None, wait: bool | None = None
    ) -> Any:
        if not self.started:
            raise RuntimeError("Camera is not running")
        if name != "main" or (format or "jpeg").lower() not in ("jpeg", "jpg"):
            raise ValueError(f"the simulated camera makes JPEG of the main stream only, not {name}/{format}")
        job = _CaptureJob(file_output)
        if wait is False:
            return job
        return self.wait(job, DEFAULT_WAIT_S)

    def wait(self, job: Any, timeout: float | None = None) -> dict[str, Any]:
        assert isinstance(job, _CaptureJob)
        assert self.camera_config is not None
        width, height = self.camera_config["main"]["size"]
        status, body = self.backend.request(CameraOp.CAPTURE, timeout or DEFAULT_WAIT_S, (width, height))
        if status == CameraStatus.NO_CAMERA:
            raise RuntimeError("Camera(s) not found (the simulated camera is unplugged)")
        if status == CameraStatus.ERROR:
            raise RuntimeError(body.decode(errors="replace"))
        job.output.write(body)
        return {"SensorTimestamp": 0, "ExposureTime": 10000, "AnalogueGain": 1.0}

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        self.started = False
        self.closed = True


class SimCameraBackend:
    """``drivers.camera.backend.CameraBackend`` over the simulator's ``DIR/camera.sock``."""

    def __init__(self, sim_dir: Path | str) -> None:
        self.socket_path = Path(sim_dir) / SOCKET_NAME

    def global_camera_info(self) -> list[dict[str, Any]]:
        try:
            status, body = self.request(CameraOp.INFO, 2.0)
        except (OSError, RuntimeError):  # TimeoutError is an OSError
            return []  # no simulator: no camera, as libcamera would list none
        return list(json.loads(body)) if status == CameraStatus.OK else []

    def open_camera(self, index: int) -> SimCameraHandle:
        cameras = self.global_camera_info()
        if index >= len(cameras):
            raise IndexError("list index out of range")  # what Picamera2(n) raises for a missing camera
        return SimCameraHandle(self, index)

    def request(self, op: CameraOp, timeout_s: float, size: tuple[int, int] = (0, 0)) -> tuple[int, bytes]:
        """One request; :raises TimeoutError: no answer in ``timeout_s`` :raises RuntimeError: no simulator"""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout_s)
            try:
                conn.connect(str(self.socket_path))
            except OSError as exc:
                if isinstance(exc, TimeoutError):
                    raise
                raise RuntimeError(f"the simulated camera is not running ({exc})") from exc
            conn.sendall(REQUEST.pack(op, int(timeout_s * 1000), *size))
            status, length = REPLY.unpack(recv_exact(conn, REPLY.size))
            return status, recv_exact(conn, length)
