"""Iris frames: the pure codec of the iris camera's USB bulk protocol (docs/protocol.md ("Iris camera")).

Every request (bulk OUT 0x01) and every reply (bulk IN 0x81) is one frame, little-endian::

    offset  size  field
    0       2     magic "IR" (0x49 0x52)
    2       1     version (1)
    3       1     op; a reply carries op | 0x80
    4       2     seq u16: the host's request number, echoed in the reply
    6       4     length u32: payload bytes (at most MAX_PAYLOAD)
    10      n     payload (a reply's payload starts with its status byte)
    10+n    4     CRC-32 (zlib.crc32) of bytes 0 .. 10+n-1

``decode`` never touches a transport: short input is "need more" (``(None, 0)``), a buffer
that does not start with a valid frame raises ``BadFrame`` and the caller resyncs.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from drivers.errors import DeviceProtocolError

MAGIC = b"IR"
VERSION = 1
REPLY_FLAG = 0x80
HEADER = struct.Struct("<2sBBHI")
CRC = struct.Struct("<I")
HEADER_SIZE = HEADER.size  # 10
OVERHEAD = HEADER_SIZE + CRC.size  # 14
MAX_PAYLOAD = 0x10000  # 64 KiB: a 16 KiB image chunk and its fields fit with room to spare
MAX_FRAME = OVERHEAD + MAX_PAYLOAD
DEVICE = "iris"


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: ``op`` (with REPLY_FLAG on replies), ``seq`` and the raw payload."""

    op: int
    seq: int
    payload: bytes = b""

    @property
    def is_reply(self) -> bool:
        return bool(self.op & REPLY_FLAG)


class BadFrame(DeviceProtocolError):
    """The buffer does not start with a valid frame.

    ``frame_size`` is set (with ``op`` and ``seq``) when a well-formed frame failed its CRC:
    the reader drops the whole frame; otherwise it drops one byte and resyncs.
    """

    def __init__(self, message: str, *, frame_size: int = 0, op: int = 0, seq: int = 0) -> None:
        super().__init__(message, device=DEVICE)
        self.frame_size = frame_size
        self.op = op
        self.seq = seq


def encode(frame: Frame) -> bytes:
    """The frame's bytes on the wire.

    :raises ValueError: op, seq or payload length out of range (a caller's bug)
    """
    if not 0 <= frame.op <= 0xFF or not 0 <= frame.seq <= 0xFFFF:
        raise ValueError(f"op {frame.op} or seq {frame.seq} out of range")
    if len(frame.payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(frame.payload)} bytes exceeds {MAX_PAYLOAD}")
    body = HEADER.pack(MAGIC, VERSION, frame.op, frame.seq, len(frame.payload)) + frame.payload
    return body + CRC.pack(zlib.crc32(body))


def decode(buf: bytes | bytearray | memoryview) -> tuple[Frame | None, int]:
    """Decode the frame at the start of ``buf``: ``(frame, bytes consumed)`` or ``(None, 0)`` for "need more".

    :raises BadFrame: ``buf`` does not start with a valid frame
    """
    with memoryview(buf) as view:  # released on every exit, so the caller may resize ``buf`` at once
        return _decode(view)


def _decode(view: memoryview) -> tuple[Frame | None, int]:
    n = len(view)
    head = bytes(view[: min(n, 2)])
    if head != MAGIC[: len(head)]:
        raise BadFrame("no frame start (magic 'IR')")
    if n >= 3 and view[2] != VERSION:
        raise BadFrame(f"unsupported frame version {view[2]}")
    if n < HEADER_SIZE:
        return None, 0
    _, _, op, seq, length = HEADER.unpack_from(view)
    if length > MAX_PAYLOAD:
        raise BadFrame(f"declared payload length {length} exceeds {MAX_PAYLOAD}")
    total = OVERHEAD + length
    if n < total:
        return None, 0
    end = HEADER_SIZE + length
    (crc,) = CRC.unpack_from(view, end)
    if crc != zlib.crc32(view[:end]):
        raise BadFrame(f"CRC mismatch in frame op 0x{op:02x} seq {seq}", frame_size=total, op=op, seq=seq)
    return Frame(op, seq, bytes(view[HEADER_SIZE:end])), total
