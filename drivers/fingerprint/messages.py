"""R30x instructions, confirmation codes, system parameters and the image format, named as in the datasheet.

Sources: R307 / R30x user manual (instruction table, confirmation codes, ReadSysPara
layout, the status register, SetSysPara's registers, the index table's bit order); AS608
datasheet (UpImage: 256 x 288 pixels, 4 bits each, high nibble first).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

DEFAULT_ADDRESS = 0xFFFFFFFF
DEFAULT_PASSWORD = 0x00000000


class PacketId(IntEnum):
    COMMAND = 0x01
    DATA = 0x02
    ACK = 0x07
    END_OF_DATA = 0x08


class Instruction(IntEnum):
    GEN_IMG = 0x01  # capture a finger image into the image buffer
    IMG_2_TZ = 0x02  # extract the image's features into CharBuffer1 or 2
    MATCH = 0x03  # compare CharBuffer1 with CharBuffer2: code + score u16
    SEARCH = 0x04  # search the library for a char buffer: code + page u16 + score u16
    REG_MODEL = 0x05  # combine both char buffers into one template
    STORE = 0x06  # char buffer -> library page
    LOAD_CHAR = 0x07  # library page -> char buffer
    UP_CHAR = 0x08  # char buffer -> host (data packets follow the ack)
    DOWN_CHAR = 0x09  # host -> char buffer (the host sends data packets after the ack)
    UP_IMAGE = 0x0A  # upload the image buffer to the host
    DOWN_IMAGE = 0x0B  # host -> image buffer
    DELET_CHAR = 0x0C  # delete N templates from a page on
    EMPTY = 0x0D  # delete every template
    SET_SYS_PARA = 0x0E  # write one system register
    READ_SYS_PARA = 0x0F
    SET_PWD = 0x12
    VFY_PWD = 0x13
    GET_RANDOM_CODE = 0x14  # code + u32
    TEMPLATE_NUM = 0x1D  # code + u16
    READ_INDEX_TABLE = 0x1F  # code + 32 bytes: one bit per library page of an index page


class SysParaRegister(IntEnum):
    """SetSysPara's parameter numbers."""

    BAUD_CONTROL = 4  # N: baud = N x 9600, N 1..12
    SECURITY_LEVEL = 5  # 1..5: the match threshold, 1 loosest
    PACKET_SIZE = 6  # 0..3 = 32, 64, 128, 256 bytes


class StatusRegister(IntFlag):
    """ReadSysPara's status word."""

    BUSY = 0x1  # executing a command
    PASS = 0x2  # a finger matched (Match / Search)
    PWD = 0x4  # the handshake password was verified
    IMG_BUF_STAT = 0x8  # the image buffer holds a valid image


CHAR_BUFFER_1 = 1
CHAR_BUFFER_2 = 2


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
    NO_DEFINITION = 0x19  # "no definition error": an instruction the module does not define
    INVALID_REG = 0x1A  # SetSysPara: no such register
    INCORRECT_CONFIG = 0x1B  # SetSysPara: a value the register does not take

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

    @classmethod
    def with_buffer(cls, instruction: int, buffer: int) -> Command:
        """Img2Tz, UpChar, DownChar: the char buffer's id (1 or 2)."""
        return cls(instruction, bytes([buffer]))

    @classmethod
    def with_page(cls, instruction: int, buffer: int, page: int) -> Command:
        """Store, LoadChar: buffer id then library page u16."""
        return cls(instruction, struct.pack(">BH", buffer, page))

    @classmethod
    def search(cls, buffer: int, start: int, count: int) -> Command:
        return cls(Instruction.SEARCH, struct.pack(">BHH", buffer, start, count))

    @classmethod
    def delet_char(cls, page: int, count: int) -> Command:
        return cls(Instruction.DELET_CHAR, struct.pack(">HH", page, count))

    @classmethod
    def read_index_table(cls, index_page: int) -> Command:
        return cls(Instruction.READ_INDEX_TABLE, bytes([index_page]))

    @classmethod
    def set_sys_para(cls, register: int, value: int) -> Command:
        return cls(Instruction.SET_SYS_PARA, bytes([register, value]))


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

    def u16(self, offset: int = 0) -> int:
        """A big-endian u16 of the returned data (TemplateNum's count, Match's score, ...). :raises MessageError:"""
        if len(self.data) < offset + 2:
            raise MessageError(f"acknowledge of {len(self.data)} data bytes has no u16 at {offset}")
        return int.from_bytes(self.data[offset : offset + 2], "big")

    def u32(self) -> int:
        """GetRandomCode's number. :raises MessageError:"""
        if len(self.data) < 4:
            raise MessageError(f"acknowledge of {len(self.data)} data bytes has no u32")
        return int.from_bytes(self.data[:4], "big")


INDEX_PAGE_TEMPLATES = 256  # ReadIndexTable: 32 bytes, one bit per library page


def index_table_pages(index_page: int, table: bytes) -> frozenset[int]:
    """Library pages in use from ReadIndexTable's 32 bytes: byte i bit j (bit 0 lowest) is page 8i + j."""
    base = index_page * INDEX_PAGE_TEMPLATES
    return frozenset(base + 8 * i + j for i, byte in enumerate(table[:32]) for j in range(8) if byte >> j & 1)


def pack_index_table(index_page: int, pages: set[int] | frozenset[int]) -> bytes:
    table = bytearray(32)
    base = index_page * INDEX_PAGE_TEMPLATES
    for page in pages:
        if base <= page < base + INDEX_PAGE_TEMPLATES:
            table[(page - base) // 8] |= 1 << ((page - base) % 8)
    return bytes(table)


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
