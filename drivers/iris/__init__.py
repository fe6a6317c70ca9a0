"""The USB iris camera: frames (codec), messages (payloads), protocol (buffering, exchange), device (API)."""

from __future__ import annotations

from drivers.iris.device import DEFAULT_PID, DEFAULT_VID, IrisCamera, IrisCapture, IrisInfo

__all__ = ["DEFAULT_PID", "DEFAULT_VID", "IrisCamera", "IrisCapture", "IrisInfo"]
