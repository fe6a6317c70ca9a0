"""Driver for the serial pen tablet used as signature pad (Wacom ISDV4 / W8001 family)."""

from __future__ import annotations

from drivers.signature.device import SignatureCapture, SignaturePad

__all__ = ["SignatureCapture", "SignaturePad"]
