"""The byte-stream half of a serial protocol layer, shared by the UART drivers: buffer what
the port delivers, cut it into frames with the device's codec, resync after garbage.

A codec's ``decode(buf) -> (frame or None, consumed)`` returns ``(None, n)`` for ``n``
bytes of noise to skip, ``(None, 0)`` for "need more", and raises ``FramingError`` for a
broken frame whose ``consumed`` bytes are to be skipped before the next try.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from drivers.errors import DeviceProtocolError

F = TypeVar("F")


class FramingError(DeviceProtocolError):
    """A frame that breaks the framing; ``consumed`` bytes are to be skipped before the next try."""

    def __init__(self, message: str, *, device: str, consumed: int) -> None:
        super().__init__(message, device=device)
        self.consumed = consumed


class FrameStream(Generic[F]):
    """Feed bytes, get frames; a broken frame yields its error and parsing goes on after it."""

    def __init__(self, decode: Callable[[bytearray], tuple[F | None, int]], max_frame: int) -> None:
        self._decode = decode
        self._max_buffer = 4 * max_frame  # a partial frame never needs more; beyond this the head is noise
        self._buf = bytearray()
        self.discarded = 0  # noise bytes skipped while resyncing

    def reset(self) -> None:
        self._buf.clear()

    def feed(self, data: bytes) -> list[F | DeviceProtocolError]:
        self._buf += data
        events: list[F | DeviceProtocolError] = []
        while self._buf:
            try:
                frame, used = self._decode(self._buf)
            except FramingError as err:
                events.append(err)
                del self._buf[: max(1, err.consumed)]
                continue
            if used == 0:
                break
            del self._buf[:used]
            if frame is None:
                self.discarded += used
            else:
                events.append(frame)
        if len(self._buf) > self._max_buffer:  # unreachable while decode caps lengths; a hard bound
            self.discarded += len(self._buf)
            self._buf.clear()
        return events
