"""R30x instructions, confirmation codes, system parameters and the image format, named as in the datasheet.

Sources: R307 / R30x user manual (instruction table, confirmation codes, ReadSysPara
layout); AS608 datasheet (UpImage: 256 x 288 pixels, 4 bits each, high nibble first).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

DEFAULT_ADDRESS = 0xFFFFFFFF
DEFAULT_PASSWORD = 0x00000000


class PacketId(IntEnum):
    COMMAND = 0x01
    DATA = 0x02
    ACK = 0x07
    END_OF_DATA = 0x08


class Instruction(IntEnum):
    GEN_IMG = 0x01  # capture a finger image into the image buffer
    IMG_2_TZ = 0x02
    MATCH = 0x03
    SEARCH = 0x04
    REG_MODEL = 0x05
    STORE = 0x06
    UP_IMAGE = 0x0A  # upload the image buffer to the host
    DOWN_IMAGE = 0x0B
    SET_SYS_PARA = 0x0E
    READ_SYS_PARA = 0x0F
    SET_PWD = 0x12
    VFY_PWD = 0x13
    TEMPLATE_NUM = 0x1D


class Confirmation(IntEnum):
    OK = 0x00  # command execution complete
    PACKET_RECEIVE_ERR = 0x01  # error when receiving the data package
    NO_FINGER = 0x02  # no finger on the sensor
    IMAGE_FAIL = 0x03  # fail to enroll the finger (image capture failed)
    IMAGE_MESSY = 0x06  # image too disorderly to generate a character file
    FEATURE_FAIL = 0x07  # too few character points / image too small
    NO_MATCH = 0x08
    NOT_FOUND = 0x09
    ENROLL_MISMATCH = 0x0A
    BAD_LOCATION = 0x0B
    DB_READ_FAIL = 0x0C
    UPLOAD_FEATURE_FAIL = 0x0D
    PACKET_RESPONSE_FAIL = 0x0E  # the module cannot receive the following data packages
    UPLOAD_FAIL = 0x0F  # error when uploading the image
    DELETE_FAIL = 0x10
    DB_CLEAR_FAIL = 0x11
    PASSWORD_FAIL = 0x13  # wrong password
    INVALID_IMAGE = 0x15  # no valid primary image in the buffer
    FLASH_ERR = 0x18
    INVALID_REG = 0x1A

    @classmethod
    def describe(cls, code: int) -> str:
        try:
            return f"0x{code:02x} {cls(code).name}"
        except ValueError:
            return f"0x{code:02x} (undocumented)"


class MessageError(ValueError):
    """A payload that does not decode as the message it should be."""


@dataclass(frozen=True, slots=True)
class Command:
    """A command packet's payload: instruction code then its parameters."""

    instruction: int
    params: bytes = b""

    def to_bytes(self) -> bytes:
        return bytes([self.instruction]) + self.params

    @classmethod
    def from_bytes(cls, payload: bytes) -> Command:
        if not payload:
            raise MessageError("empty command packet")
        return cls(payload[0], bytes(payload[1:]))

    @classmethod
    def verify_password(cls, password: int) -> Command:
        return cls(Instruction.VFY_PWD, password.to_bytes(4, "big"))


@dataclass(frozen=True, slots=True)
class Ack:
    """An acknowledge packet's payload: confirmation code then any returned data."""

    code: int
    data: bytes = b""

    @property
    def ok(self) -> bool:
        return self.code == Confirmation.OK

    def to_bytes(self) -> bytes:
        return bytes([self.code]) + self.data

    @classmethod
    def from_bytes(cls, payload: bytes) -> Ack:
        if not payload:
            raise MessageError("empty acknowledge packet")
        return cls(payload[0], bytes(payload[1:]))


_SYS_PARA = struct.Struct(">HHHHIHH")


@dataclass(frozen=True, slots=True)
class SystemParameters:
    """ReadSysPara's 16 bytes after the confirmation code."""

    status: int
    system_id: int
    library_size: int
    security_level: int
    address: int
    packet_size_code: int  # 0..3 = 32, 64, 128, 256 bytes
    baud_multiplier: int  # baud = N x 9600

    SIZE = _SYS_PARA.size

    @property
    def packet_size(self) -> int:
        return 32 << self.packet_size_code

    @property
    def baud(self) -> int:
        return 9600 * self.baud_multiplier

    def to_bytes(self) -> bytes:
        return _SYS_PARA.pack(
            self.status,
            self.system_id,
            self.library_size,
            self.security_level,
            self.address,
            self.packet_size_code,
            self.baud_multiplier,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SystemParameters:
        if len(data) < cls.SIZE:
            raise MessageError(f"system parameters need {cls.SIZE} bytes, got {len(data)}")
        params = cls(*_SYS_PARA.unpack_from(data))
        if params.packet_size_code > 3:
            raise MessageError(f"packet-size code {params.packet_size_code} outside 0..3")
        return params


# UpImage sends 4 bits per pixel, high nibble first; 8-bit gray = nibble * 17 (0..15 -> 0..255).
_HIGH = bytes((b >> 4) * 17 for b in range(256))
_LOW = bytes((b & 0x0F) * 17 for b in range(256))


def unpack_image(packed: bytes) -> bytes:
    """4-bit packed pixels (two per byte, high nibble first) to 8-bit grayscale."""
    out = bytearray(2 * len(packed))
    out[0::2] = packed.translate(_HIGH)
    out[1::2] = packed.translate(_LOW)
    return bytes(out)


def pack_image(gray: bytes) -> bytes:
    """8-bit grayscale to 4-bit packed pixels (the module's own quantisation: the top nibble)."""
    if len(gray) % 2:
        raise ValueError("an odd number of pixels cannot be packed two per byte")
    return bytes((hi & 0xF0) | (lo >> 4) for hi, lo in zip(gray[0::2], gray[1::2], strict=True))


IMAGE_SIZES = {36864: (256, 288), 18432: (192, 192)}  # R307/AS608, R503 (packed bytes -> width, height)


def image_dimensions(packed_len: int) -> tuple[int, int]:
    """Width and height for an uploaded image of ``packed_len`` bytes. :raises MessageError:"""
    if packed_len in IMAGE_SIZES:
        return IMAGE_SIZES[packed_len]
    if packed_len > 0 and (2 * packed_len) % 256 == 0:
        return 256, 2 * packed_len // 256
    raise MessageError(f"an image of {packed_len} packed bytes matches no known sensor size")
