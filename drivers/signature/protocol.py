"""The ISDV4 byte stream: buffer what the port delivers, cut it into packets, resync on the lead bit."""

from __future__ import annotations

from drivers.framestream import FrameStream
from drivers.signature import frames
from drivers.signature.frames import Frame


class SignatureStream(FrameStream[Frame]):
    """Feed bytes, get packets; a broken packet yields a DeviceProtocolError and parsing goes on after it."""

    def __init__(self) -> None:
        super().__init__(frames.decode, frames.MAX_FRAME)
