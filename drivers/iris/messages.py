"""Iris messages: the payloads of each op, as frozen dataclasses with ``to_bytes``/``from_bytes``.

A request's payload is its fields; a reply's payload is ``status u8`` followed, when the
status is OK, by the reply's fields (docs/protocol.md ("Iris camera"), "Ops").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from drivers.errors import DeviceProtocolError

DEVICE = "iris"
SERIAL_MAX = 32


class Op(IntEnum):
    GET_INFO = 0x01
    START_CAPTURE = 0x02
    GET_STATUS = 0x03
    READ_IMAGE = 0x04
    ABORT = 0x05


class Status(IntEnum):
    OK = 0x00
    BUSY = 0x01  # a capture is running; ABORT it or wait
    NO_EYE = 0x02  # no eye found before the capture's timeout
    POOR_QUALITY = 0x03  # the best image stayed below min_quality (it stays readable)
    BAD_REQUEST = 0x04  # unknown op, wrong payload length or a field out of range
    BAD_CRC = 0x05  # the request frame's CRC did not match
    NOT_READY = 0x06  # READ_IMAGE with no image to read
    HARDWARE_ERROR = 0x07  # sensor or illuminator failure (firmware self-check)


STATUS_HELP = {
    Status.BUSY: "the camera is busy with another capture",
    Status.NO_EYE: "no eye was found in front of the camera",
    Status.POOR_QUALITY: "the image stayed below the quality floor",
    Status.BAD_REQUEST: "the camera rejected the request as malformed",
    Status.BAD_CRC: "the camera received a corrupt request (USB cable or port?)",
    Status.NOT_READY: "the camera has no image to read",
    Status.HARDWARE_ERROR: "the camera reports a sensor or illuminator failure",
}


class CaptureState(IntEnum):
    IDLE = 0
    CAPTURING = 1
    READY = 2
    FAILED = 3


class Eye(IntEnum):
    RIGHT = 0
    LEFT = 1


def _need(data: bytes, size: int, what: str) -> None:
    if len(data) != size:
        raise DeviceProtocolError(f"{what}: expected {size} bytes, got {len(data)}", device=DEVICE)


# -- requests -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GetInfo:
    OP: ClassVar[Op] = Op.GET_INFO

    def to_bytes(self) -> bytes:
        return b""

    @classmethod
    def from_bytes(cls, data: bytes) -> GetInfo:
        _need(data, 0, "GET_INFO request")
        return cls()


@dataclass(frozen=True, slots=True)
class StartCapture:
    OP: ClassVar[Op] = Op.START_CAPTURE
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<BIB")

    eye: Eye
    timeout_ms: int
    min_quality: int  # 0..100

    def to_bytes(self) -> bytes:
        return self.LAYOUT.pack(self.eye, self.timeout_ms, self.min_quality)

    @classmethod
    def from_bytes(cls, data: bytes) -> StartCapture:
        _need(data, cls.LAYOUT.size, "START_CAPTURE request")
        eye, timeout_ms, min_quality = cls.LAYOUT.unpack(data)
        if eye not in (Eye.RIGHT, Eye.LEFT) or min_quality > 100 or timeout_ms == 0:
            raise DeviceProtocolError(
                f"START_CAPTURE fields out of range: eye {eye}, timeout {timeout_ms}, quality {min_quality}",
                device=DEVICE,
            )
        return cls(Eye(eye), timeout_ms, min_quality)


@dataclass(frozen=True, slots=True)
class GetStatus:
    OP: ClassVar[Op] = Op.GET_STATUS

    def to_bytes(self) -> bytes:
        return b""

    @classmethod
    def from_bytes(cls, data: bytes) -> GetStatus:
        _need(data, 0, "GET_STATUS request")
        return cls()


@dataclass(frozen=True, slots=True)
class ReadImage:
    OP: ClassVar[Op] = Op.READ_IMAGE
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<II")

    offset: int
    length: int

    def to_bytes(self) -> bytes:
        return self.LAYOUT.pack(self.offset, self.length)

    @classmethod
    def from_bytes(cls, data: bytes) -> ReadImage:
        _need(data, cls.LAYOUT.size, "READ_IMAGE request")
        return cls(*cls.LAYOUT.unpack(data))


@dataclass(frozen=True, slots=True)
class Abort:
    OP: ClassVar[Op] = Op.ABORT

    def to_bytes(self) -> bytes:
        return b""

    @classmethod
    def from_bytes(cls, data: bytes) -> Abort:
        _need(data, 0, "ABORT request")
        return cls()


Request = GetInfo | StartCapture | GetStatus | ReadImage | Abort
REQUEST_TYPES: dict[int, type[Request]] = {
    Op.GET_INFO: GetInfo,
    Op.START_CAPTURE: StartCapture,
    Op.GET_STATUS: GetStatus,
    Op.READ_IMAGE: ReadImage,
    Op.ABORT: Abort,
}


def parse_request(op: int, payload: bytes) -> Request:
    """The request for ``op``. :raises DeviceProtocolError: unknown op or malformed payload"""
    kind = REQUEST_TYPES.get(op)
    if kind is None:
        raise DeviceProtocolError(f"unknown op 0x{op:02x}", device=DEVICE)
    return kind.from_bytes(payload)


# -- replies (the fields after the status byte) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class InfoReply:
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<BBBHHBIB")

    fw_major: int
    fw_minor: int
    fw_patch: int
    width: int
    height: int
    bits_per_pixel: int
    max_chunk: int
    serial: str

    @property
    def firmware(self) -> str:
        return f"{self.fw_major}.{self.fw_minor}.{self.fw_patch}"

    def to_bytes(self) -> bytes:
        serial = self.serial.encode("ascii")[:SERIAL_MAX]
        fields = (self.fw_major, self.fw_minor, self.fw_patch, self.width, self.height, self.bits_per_pixel)
        return self.LAYOUT.pack(*fields, self.max_chunk, len(serial)) + serial

    @classmethod
    def from_bytes(cls, data: bytes) -> InfoReply:
        if len(data) < cls.LAYOUT.size:
            raise DeviceProtocolError(f"GET_INFO reply too short ({len(data)} bytes)", device=DEVICE)
        major, minor, patch, width, height, bits, max_chunk, serial_len = cls.LAYOUT.unpack_from(data)
        _need(data, cls.LAYOUT.size + serial_len, "GET_INFO reply")
        serial = data[cls.LAYOUT.size :].decode("ascii", errors="replace")
        return cls(major, minor, patch, width, height, bits, max_chunk, serial)


@dataclass(frozen=True, slots=True)
class StatusReply:
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<BBBBI")

    state: CaptureState
    quality: int  # 0..100 of the last capture, 0 before one
    eye: int
    error: int  # the Status that failed the capture (state FAILED), else 0
    image_length: int  # bytes readable with READ_IMAGE, 0 when none

    def to_bytes(self) -> bytes:
        return self.LAYOUT.pack(self.state, self.quality, self.eye, self.error, self.image_length)

    @classmethod
    def from_bytes(cls, data: bytes) -> StatusReply:
        _need(data, cls.LAYOUT.size, "GET_STATUS reply")
        state, quality, eye, error, image_length = cls.LAYOUT.unpack(data)
        if state not in CaptureState.__members__.values() or quality > 100:
            raise DeviceProtocolError(f"GET_STATUS reply out of range: state {state}", device=DEVICE)
        return cls(CaptureState(state), quality, eye, error, image_length)


@dataclass(frozen=True, slots=True)
class ImageChunk:
    LAYOUT: ClassVar[struct.Struct] = struct.Struct("<I")

    offset: int
    data: bytes

    def to_bytes(self) -> bytes:
        return self.LAYOUT.pack(self.offset) + self.data

    @classmethod
    def from_bytes(cls, data: bytes) -> ImageChunk:
        if len(data) < cls.LAYOUT.size:
            raise DeviceProtocolError(f"READ_IMAGE reply too short ({len(data)} bytes)", device=DEVICE)
        (offset,) = cls.LAYOUT.unpack_from(data)
        return cls(offset, data[cls.LAYOUT.size :])


def reply_payload(status: Status, body: bytes = b"") -> bytes:
    """A reply's payload: the status byte, then the body (only when OK)."""
    return bytes([status]) + (body if status == Status.OK else b"")


def split_reply(payload: bytes) -> tuple[int, bytes]:
    """``(status, body)`` of a reply payload. :raises DeviceProtocolError: empty payload"""
    if not payload:
        raise DeviceProtocolError("reply without a status byte", device=DEVICE)
    return payload[0], payload[1:]


def status_text(code: int) -> str:
    try:
        status = Status(code)
    except ValueError:
        return f"unknown status 0x{code:02x}"
    return f"{status.name} (0x{code:02x}): {STATUS_HELP.get(status, 'ok')}"
