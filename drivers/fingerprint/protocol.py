"""The R30x byte stream: buffer what the port delivers, cut it into frames, resync after garbage."""

from __future__ import annotations

from drivers.fingerprint import frames
from drivers.fingerprint.frames import Frame
from drivers.framestream import FrameStream


class FingerprintStream(FrameStream[Frame]):
    """Feed bytes, get frames; a corrupt frame yields a DeviceProtocolError and parsing goes on after it."""

    def __init__(self) -> None:
        super().__init__(frames.decode, frames.MAX_FRAME)
