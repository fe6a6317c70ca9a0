"""The real camera backend: picamera2 on Raspberry Pi OS.

picamera2 imports libcamera, whose Python bindings come from Raspberry Pi OS's apt packages,
not PyPI. It is imported here lazily, inside the calls, so this module imports anywhere; where
it cannot import, every call raises ``Picamera2Missing`` (a DeviceDisconnected) saying how to
install it.
"""

from __future__ import annotations

import importlib
from typing import Any, cast

from drivers.camera.backend import CameraHandle
from drivers.errors import DeviceDisconnected

INSTALL_HINT = (
    "install picamera2 from Raspberry Pi OS (sudo apt install python3-picamera2) and run the agent from "
    "a virtualenv created with --system-site-packages, so it sees the system's libcamera bindings"
)


class Picamera2Missing(DeviceDisconnected):
    """picamera2 (or libcamera under it) cannot be imported on this machine."""


def _picamera2_class() -> Any:
    try:
        module = importlib.import_module("picamera2")
    except (ImportError, OSError, RuntimeError) as exc:  # OSError: libcamera's shared library will not load
        raise Picamera2Missing(
            f"picamera2 cannot be imported ({exc}); {INSTALL_HINT}", device="camera", port="libcamera"
        ) from exc
    return module.Picamera2


class Picamera2Backend:
    """``CameraBackend`` over picamera2's ``Picamera2`` class."""

    def global_camera_info(self) -> list[dict[str, Any]]:
        """:raises Picamera2Missing: picamera2 is not installed"""
        return list(_picamera2_class().global_camera_info())

    def open_camera(self, index: int) -> CameraHandle:
        """:raises Picamera2Missing: picamera2 is not installed :raises IndexError: no such camera"""
        return cast(CameraHandle, _picamera2_class()(index))
