"""The ISDV4 packet codec (pure: no port, no sleep).

Every packet starts with a byte whose bit 7 is set; every other byte of a packet has
bit 7 clear, which is how a reader resyncs. Bit 6 of the first byte marks a control
(query reply) packet. Lengths (Linux ``drivers/input/touchscreen/wacom_w8001.c``)::

    pen packet      9 bytes   b0 = 1 0 prox 0 0 side2 side tip
    control packet 11 bytes   b0 = 1 1 x x x x x x   (the reply to '*', the pen query)

Pen-and-touch models also send touch packets (b0 bit 4 set, 5/7/13 bytes); a signature
pad is pen-only, so they are rejected as a protocol error. There is no checksum.
``decode`` never raises anything but ``FrameError`` (a ``DeviceProtocolError``).
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.framestream import FramingError

LEAD_MASK = 0x80  # set in the first byte of every packet, clear in every other byte
CONTROL_MASK = 0x40  # set in the first byte of a control/query packet
TOUCH_MASK = 0x10  # set in the first byte of a touch packet (not used by a pen-only pad)
PEN_PACKET_LEN = 9
CONTROL_PACKET_LEN = 11
MAX_FRAME = CONTROL_PACKET_LEN


@dataclass(frozen=True, slots=True)
class Frame:
    data: bytes  # the whole packet, first byte included

    @property
    def is_control(self) -> bool:
        return bool(self.data[0] & CONTROL_MASK)


class FrameError(FramingError):
    """A packet that breaks the framing; ``consumed`` bytes are to be skipped before the next try."""

    def __init__(self, message: str, *, consumed: int) -> None:
        super().__init__(message, device="signature", consumed=consumed)


def packet_length(lead: int) -> int:
    return CONTROL_PACKET_LEN if lead & CONTROL_MASK else PEN_PACKET_LEN


def encode(frame: Frame) -> bytes:
    data = frame.data
    if not data or not data[0] & LEAD_MASK or len(data) != packet_length(data[0]):
        raise ValueError("not an ISDV4 packet: bad first byte or length")
    if any(b & LEAD_MASK for b in data[1:]):
        raise ValueError("ISDV4 packet bytes after the first must be 7-bit")
    return bytes(data)


def decode(buf: bytes | bytearray) -> tuple[Frame | None, int]:
    """The first packet of ``buf`` and the bytes it used; ``(None, n)`` skips n bytes of garbage, n=0 is "need more".

    :raises FrameError: a touch packet, or a packet cut short by the next lead byte
    """
    start = next((i for i, b in enumerate(buf) if b & LEAD_MASK), -1)
    if start < 0:
        return None, len(buf)
    if start > 0:
        return None, start
    lead = buf[0]
    if lead & TOUCH_MASK and not lead & CONTROL_MASK:
        raise FrameError(f"touch packet 0x{lead:02x} from a pen-only pad", consumed=1)
    length = packet_length(lead)
    for i in range(1, min(length, len(buf))):
        if buf[i] & LEAD_MASK:
            raise FrameError(f"packet 0x{lead:02x} cut short after {i} of {length} bytes", consumed=i)
    if len(buf) < length:
        return None, 0
    return Frame(bytes(buf[:length])), length
