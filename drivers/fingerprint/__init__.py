"""Driver for the optical UART fingerprint module (R30x / R307 / R503 / AS608 family)."""

from __future__ import annotations

from drivers.fingerprint.device import FingerCapture, FingerprintScanner, FingerTemplate, RepeatedFinger

__all__ = ["FingerCapture", "FingerTemplate", "FingerprintScanner", "RepeatedFinger"]
