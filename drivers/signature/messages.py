"""ISDV4 host commands, pen reports and the pen query reply, as Linux ``wacom_w8001.c`` reads them.

Coordinates and pressure are spread over 7-bit bytes::

    X        = b1 << 9 | b2 << 2 | (b6 >> 5) & 3
    Y        = b3 << 9 | b4 << 2 | (b6 >> 3) & 3
    pressure = b5 | (b6 & 7) << 7
    tilt     = b7, b8 (pen packet);   version = b9 << 7 | b10 (query reply, linuxwacom isdv4.h)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from drivers.signature.frames import CONTROL_MASK, CONTROL_PACKET_LEN, LEAD_MASK, PEN_PACKET_LEN, Frame

MAX_COORD = (1 << 16) - 1
MAX_PRESSURE = (1 << 10) - 1


class HostCommand(bytes, Enum):
    STOP = b"0"
    START = b"1"
    PEN_QUERY = b"*"
    TOUCH_QUERY = b"%"


class MessageError(ValueError):
    """A packet that is not the message it should be."""


def _pack(x: int, y: int, pressure: int) -> bytearray:
    if not (0 <= x <= MAX_COORD and 0 <= y <= MAX_COORD and 0 <= pressure <= MAX_PRESSURE):
        raise ValueError(f"coordinates ({x}, {y}, {pressure}) out of range")
    body = bytearray(6)  # b1..b6
    body[0] = (x >> 9) & 0x7F
    body[1] = (x >> 2) & 0x7F
    body[2] = (y >> 9) & 0x7F
    body[3] = (y >> 2) & 0x7F
    body[4] = pressure & 0x7F
    body[5] = (x & 3) << 5 | (y & 3) << 3 | (pressure >> 7) & 7
    return body


def _unpack(data: bytes) -> tuple[int, int, int]:
    x = (data[1] & 0x7F) << 9 | (data[2] & 0x7F) << 2 | (data[6] >> 5) & 3
    y = (data[3] & 0x7F) << 9 | (data[4] & 0x7F) << 2 | (data[6] >> 3) & 3
    pressure = data[5] & 0x7F | (data[6] & 7) << 7
    return x, y, pressure


@dataclass(frozen=True, slots=True)
class PenReport:
    """One pen packet: position, pressure and the switches."""

    x: int
    y: int
    pressure: int
    proximity: bool  # "rdy": the pen is within reading range
    tip: bool  # "tsw": the tip touches the surface
    side: bool = False  # "f1"
    side2: bool = False  # "f2" (or the eraser)

    def to_frame(self) -> Frame:
        lead = LEAD_MASK | self.proximity << 5 | self.side2 << 2 | self.side << 1 | self.tip
        return Frame(bytes([lead]) + bytes(_pack(self.x, self.y, self.pressure)) + b"\x00\x00")

    def to_bytes(self) -> bytes:
        return self.to_frame().data

    @classmethod
    def from_frame(cls, frame: Frame) -> PenReport:
        data = frame.data
        if len(data) != PEN_PACKET_LEN or frame.is_control:
            raise MessageError("not a pen packet")
        x, y, pressure = _unpack(data)
        lead = data[0]
        return cls(x, y, pressure, bool(lead & 0x20), bool(lead & 0x01), bool(lead & 0x02), bool(lead & 0x04))


@dataclass(frozen=True, slots=True)
class QueryReply:
    """The reply to the pen query: the pad's coordinate and pressure maxima and firmware version."""

    max_x: int
    max_y: int
    max_pressure: int
    version: int

    def to_frame(self) -> Frame:
        body = _pack(self.max_x, self.max_y, self.max_pressure)
        tail = bytes([0, 0, (self.version >> 7) & 0x7F, self.version & 0x7F])  # tilt x/y maxima 0: no tilt
        return Frame(bytes([LEAD_MASK | CONTROL_MASK]) + bytes(body) + tail)

    def to_bytes(self) -> bytes:
        return self.to_frame().data

    @classmethod
    def from_frame(cls, frame: Frame) -> QueryReply:
        data = frame.data
        if len(data) != CONTROL_PACKET_LEN or not frame.is_control:
            raise MessageError("not a query reply")
        max_x, max_y, max_pressure = _unpack(data)
        return cls(max_x, max_y, max_pressure, (data[9] & 0x7F) << 7 | data[10] & 0x7F)
