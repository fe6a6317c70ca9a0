"""The R30x packet codec (pure: no port, no sleep).

One packet, big-endian::

    +-------+-------------+-----+-----------+-------------------+-----------+
    | EF 01 | address u32 | pid | len u16   | payload (len - 2) | sum u16   |
    +-------+-------------+-----+-----------+-------------------+-----------+

``len`` counts the payload plus the two checksum bytes; ``sum`` is
``(pid + len_hi + len_lo + every payload byte) & 0xFFFF`` (R307 datasheet, section 5.1).
``decode`` never raises anything but ``FrameError`` (a ``DeviceProtocolError``), which
carries how many bytes to skip to resync.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.framestream import FramingError

START = b"\xef\x01"
HEADER_LEN = 9  # start(2) + address(4) + pid(1) + len(2)
MAX_PAYLOAD = 256  # the largest data packet (packet-size code 3); commands and acks are far smaller
MAX_FRAME = HEADER_LEN + MAX_PAYLOAD + 2
VALID_PIDS = frozenset({0x01, 0x02, 0x07, 0x08})  # command, data, ack, end of data


@dataclass(frozen=True, slots=True)
class Frame:
    address: int
    pid: int
    payload: bytes


class FrameError(FramingError):
    """A packet that breaks the framing; ``consumed`` bytes are to be skipped before the next try."""

    def __init__(self, message: str, *, consumed: int) -> None:
        super().__init__(message, device="fingerprint", consumed=consumed)


class ChecksumError(FrameError):
    """A well-framed packet whose checksum does not match."""


def checksum(pid: int, payload: bytes) -> int:
    length = len(payload) + 2
    return (pid + (length >> 8) + (length & 0xFF) + sum(payload)) & 0xFFFF


def encode(frame: Frame) -> bytes:
    if len(frame.payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(frame.payload)} bytes exceeds {MAX_PAYLOAD}")
    length = len(frame.payload) + 2
    return b"".join(
        (
            START,
            frame.address.to_bytes(4, "big"),
            bytes([frame.pid]),
            length.to_bytes(2, "big"),
            frame.payload,
            checksum(frame.pid, frame.payload).to_bytes(2, "big"),
        )
    )


def decode(buf: bytes | bytearray) -> tuple[Frame | None, int]:
    """The first frame of ``buf`` and the bytes it used; ``(None, n)`` skips n bytes of garbage, n=0 is "need more".

    :raises FrameError: a bad pid, length or checksum at the start of ``buf``
    """
    start = bytes(buf).find(START)
    if start != 0:
        if start < 0:  # no start marker: keep a trailing 0xEF, it may be half of one
            keep = 1 if buf[-1:] == b"\xef" else 0
            return None, len(buf) - keep
        return None, start
    if len(buf) < HEADER_LEN:
        return None, 0
    pid = buf[6]
    length = int.from_bytes(buf[7:9], "big")
    if pid not in VALID_PIDS:
        raise FrameError(f"unknown packet id 0x{pid:02x}", consumed=2)
    if length < 2 or length > MAX_PAYLOAD + 2:
        raise FrameError(f"declared length {length} outside 2..{MAX_PAYLOAD + 2}", consumed=2)
    end = HEADER_LEN + length
    if len(buf) < end:
        return None, 0
    payload = bytes(buf[HEADER_LEN : end - 2])
    got = int.from_bytes(buf[end - 2 : end], "big")
    want = checksum(pid, payload)
    if got != want:
        raise ChecksumError(f"bad checksum 0x{got:04x}, expected 0x{want:04x}", consumed=2)
    return Frame(int.from_bytes(buf[2:6], "big"), pid, payload), end
