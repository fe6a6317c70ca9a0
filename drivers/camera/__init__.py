"""The face camera: a picamera2-shaped backend (real or simulated), the device API and image checks."""

from __future__ import annotations

from drivers.camera.backend import CameraBackend, CameraHandle
from drivers.camera.device import FaceCamera, FaceCapture
from drivers.camera.picamera_backend import Picamera2Backend, Picamera2Missing

__all__ = [
    "CameraBackend",
    "CameraHandle",
    "FaceCamera",
    "FaceCapture",
    "Picamera2Backend",
    "Picamera2Missing",
]
