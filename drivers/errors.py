"""The drivers' exception tree, shared by every peripheral package.

    DriverError
     ├── DeviceTimeout        (also TimeoutError)      the device stopped answering
     ├── DeviceDisconnected   (also ConnectionError)   the port or USB device is gone
     ├── DeviceProtocolError  (also ValueError)        bytes that break the wire protocol
     ├── DeviceReportedError                           the device answered with an error code
     └── CaptureRejected                               a capture below the quality floor

Every error carries the device name and, where known, the port and the device's code,
and its message says what failed and what a technician should do. Transport exceptions
(serial.SerialException, usb.core.USBError, OSError) are re-raised as one of these with
``raise ... from exc`` at the driver's boundary and never leak.
"""

from __future__ import annotations


class DriverError(Exception):
    """Root of every error a driver raises."""

    def __init__(self, message: str, *, device: str, port: str = "", code: int | None = None) -> None:
        super().__init__(message)
        self.device = device
        self.port = port
        self.code = code


class DeviceTimeout(DriverError, TimeoutError):
    """The device did not answer within its timeout."""


class DeviceDisconnected(DriverError, ConnectionError):
    """The device or its port is not there (unplugged, wrong path, no permission)."""


class DeviceProtocolError(DriverError, ValueError):
    """The device sent bytes that break its wire protocol (bad checksum, bad length, garbage)."""


class DeviceReportedError(DriverError):
    """The device answered with one of its own error codes (``code``)."""


class CaptureRejected(DriverError):
    """A capture came back below the quality floor after every retry."""

    def __init__(self, message: str, *, device: str, quality: float, port: str = "") -> None:
        super().__init__(message, device=device, port=port)
        self.quality = quality
