"""The slice of picamera2's API the face camera driver uses, as a Protocol.

``picamera_backend.Picamera2Backend`` is the real one (``Picamera2`` itself is the handle);
``hw_sim.camera.SimCameraBackend`` serves the simulator's frames through the same calls.
Names and signatures follow picamera2 so the real class needs no adapter.
"""

from __future__ import annotations

from typing import Any, BinaryIO, Protocol


class CameraHandle(Protocol):
    """An open camera: what ``Picamera2(n)`` returns."""

    def create_still_configuration(self, main: dict[str, Any] | None = None) -> Any: ...

    def configure(self, camera_config: Any) -> None: ...

    def start(self) -> None: ...

    def capture_file(
        self, file_output: BinaryIO, name: str = "main", format: str | None = None, wait: bool | None = None
    ) -> Any:
        """With ``wait=False`` returns a job for ``wait(job, timeout)``; errors surface from ``wait``."""

    def wait(self, job: Any, timeout: float | None = None) -> Any:
        """The job's result. :raises TimeoutError: not done within ``timeout`` s"""

    def stop(self) -> None: ...

    def close(self) -> None: ...


class CameraBackend(Protocol):
    """Lists cameras and opens one (``Picamera2.global_camera_info()`` and ``Picamera2(n)``)."""

    def global_camera_info(self) -> list[dict[str, Any]]:
        """One dict per attached camera ("Model", "Location", "Rotation", "Id", "Num"); [] when none."""

    def open_camera(self, index: int) -> CameraHandle:
        """:raises IndexError: no camera ``index`` (as ``Picamera2(n)``) :raises RuntimeError: libcamera failed"""
