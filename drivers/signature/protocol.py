"""The ISDV4 byte stream: buffer what the port delivers, cut it into packets, resync on the lead bit."""

from __future__ import annotations

from drivers.errors import DeviceProtocolError
from drivers.signature import frames
from drivers.signature.frames import Frame, FrameError

MAX_BUFFER = 4 * frames.MAX_FRAME


class SignatureStream:
    """Feed bytes, get packets; a broken packet yields a DeviceProtocolError and parsing goes on after it."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.discarded = 0  # 7-bit bytes outside any packet

    def reset(self) -> None:
        self._buf.clear()

    def feed(self, data: bytes) -> list[Frame | DeviceProtocolError]:
        self._buf += data
        events: list[Frame | DeviceProtocolError] = []
        while self._buf:
            try:
                frame, used = frames.decode(self._buf)
            except FrameError as err:
                events.append(err)
                del self._buf[: err.consumed]
                continue
            if used == 0:
                break
            del self._buf[:used]
            if frame is None:
                self.discarded += used
            else:
                events.append(frame)
        if len(self._buf) > MAX_BUFFER:  # unreachable while decode bounds a packet; kept as a hard bound
            self.discarded += len(self._buf)
            self._buf.clear()
        return events
