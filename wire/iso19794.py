"""ISO/IEC 19794 biometric data interchange records: write and read the four the kiosk makes.

The editions are the first ones, which ICAO 9303 travel documents and most identification
systems import: 19794-4:2005 (finger image, "FIR"), 19794-5:2005 (face image, "FAC"),
19794-6:2005 (iris image, rectilinear, "IIR") and 19794-7:2007 (signature/sign time series,
"SDI"). All integers are big-endian. docs/protocol.md ("Record version 2") draws each layout
and says which field is filled from what the drivers know.

The readers are the centre's: they check every length, count and code they rely on and raise
``InterchangeError`` naming the field, never anything else. (tests/iso19794_validator.py is a
second reading of the standards, written apart from this module, that checks its output.)

Error tree::

    ValueError
     +-- InterchangeError
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from wire.image_codec import BadImage, Codec, ImageInfo, image_info

FIR_MAGIC, FAC_MAGIC, IIR_MAGIC, SDI_MAGIC = b"FIR\x00", b"FAC\x00", b"IIR\x00", b"SDI\x00"
VERSION_010 = b"010\x00"
SDI_VERSION = b" 10\x00"

FIR_HEADER = 32
FIR_VIEW_HEADER = 14
FAC_HEADER = 14
FAC_INFO = 20
FAC_IMAGE_INFO = 12
IIR_HEADER = 45
IIR_SUBTYPE_HEADER = 3
IIR_IMAGE_HEADER = 11

FINGER_PPI = 500  # the R30x family's sensor
ACQUISITION_LEVEL_500PPI = 30  # 19794-4 table 1: 500 ppi, 8 bits (31 is for certified scanners)
SCALE_PPI = 1
IMPRESSION_LIVE_PLAIN = 0
QUALITY_UNDEFINED = 254  # 19794-6
UNDEFINED_ANGLE = 0xFFFF  # 19794-6 rotation angle and its uncertainty
IRIS_PROPERTIES = (
    0x0015  # orientation base (1) both ways (bits 0-3), progressive scan (1, bits 4-6), no occlusions
)
DEVICE_ID_NONE = b"0" * 16  # 19794-6: no serial, MAC or processor id given
EYE_RIGHT, EYE_LEFT = 1, 2
FACE_BASIC, FACE_DATA_JPEG, FACE_DATA_JPEG2000 = 0, 0, 1
FACE_SOURCE_DIGITAL_STILL = 2  # a static photograph from a digital still-image camera
FACE_COLOUR_RGB24, FACE_COLOUR_GRAY8 = 1, 3

# 19794-7: the channel inclusion bit map, most significant bit first
SDI_CHANNELS = ("x", "y", "z", "vx", "vy", "ax", "ay", "t", "dt", "f", "s", "tx", "ty", "az", "el", "r")
SDI_SIGNED = frozenset({"x", "y", "vx", "vy", "ax", "ay", "tx", "ty"})
SDI_OURS = ("x", "y", "f", "s")  # pen position, pen force (the pad's pressure) and the tip switch
MAX_SAMPLES = 0xFFFFFF
SDI_SAMPLE = 7  # X, Y, F: two bytes each; S: one


class FingerCompression(IntEnum):
    """19794-4:2005 image compression algorithm codes."""

    UNCOMPRESSED = 0
    BIT_PACKED = 1
    WSQ = 2
    JPEG = 3
    JPEG2000 = 4
    PNG = 5


class IrisFormat(IntEnum):
    """19794-6:2005 image formats the kiosk writes or reads (monochrome)."""

    MONO_JPEG = 0x0006
    MONO_JPEG2000 = 0x000E


_FINGER_CODEC = {Codec.PNG: FingerCompression.PNG, Codec.JPEG2000: FingerCompression.JPEG2000,
                 Codec.JPEG: FingerCompression.JPEG}  # fmt: skip
_IRIS_CODEC = {Codec.JPEG2000: IrisFormat.MONO_JPEG2000, Codec.JPEG: IrisFormat.MONO_JPEG}
_FACE_CODEC = {Codec.JPEG: FACE_DATA_JPEG, Codec.JPEG2000: FACE_DATA_JPEG2000}
# the readers' way back: a record's code -> the codec
_CODEC_OF_FINGER = {int(code): codec for codec, code in _FINGER_CODEC.items()}
_CODEC_OF_IRIS = {int(code): codec for codec, code in _IRIS_CODEC.items()}
_CODEC_OF_FACE = {code: codec for codec, code in _FACE_CODEC.items()}


class InterchangeError(ValueError):
    """A record does not follow its interchange format; ``field`` names where."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True, slots=True)
class ImageView:
    """One image of a record: where it belongs (finger position, eye), its quality 0..100, its bytes."""

    position: int
    quality: int
    width: int
    height: int
    image: bytes


# --- 19794-4: finger image --------------------------------------------------------------------


def finger_record(views: Sequence[ImageView]) -> bytes:
    """A Finger Image Record of one view per finger (position 1..10), all in one codec.

    :raises InterchangeError: no finger, or the images are not all of one codec the standard names
    """
    if not views:
        raise InterchangeError("fir", "a finger image record holds at least one finger")
    codecs = {_codec(f"fir.finger[{v.position}]", v.image) for v in views}
    if len(codecs) != 1 or not codecs <= set(_FINGER_CODEC):
        raise InterchangeError(
            "fir.compression", f"the fingers are in {sorted(codecs)}: one codec of PNG, JPEG, JPEG 2000"
        )
    compression = _FINGER_CODEC[codecs.pop()]
    blocks = [
        struct.pack(">IBBBBBHHB", FIR_VIEW_HEADER + len(v.image), v.position, 1, 1, v.quality,
                    IMPRESSION_LIVE_PLAIN, v.width, v.height, 0) + v.image
        for v in views
    ]  # fmt: skip
    length = FIR_HEADER + sum(len(b) for b in blocks)
    header = (
        FIR_MAGIC + VERSION_010 + length.to_bytes(6, "big")
        + struct.pack(">HHBBHHHHBBH", 0, ACQUISITION_LEVEL_500PPI, len(views), SCALE_PPI,
                      FINGER_PPI, FINGER_PPI, FINGER_PPI, FINGER_PPI, 8, compression, 0)
    )  # fmt: skip
    return header + b"".join(blocks)


def read_finger_record(data: bytes) -> list[ImageView]:
    """The views of a Finger Image Record. :raises InterchangeError:"""
    _magic(data, FIR_MAGIC, VERSION_010, FIR_HEADER, "fir")
    length = int.from_bytes(data[8:14], "big")
    _length("fir", length, len(data))
    count, compression = data[18], data[29]
    if compression not in FingerCompression.__members__.values():
        raise InterchangeError("fir.compression", f"unknown code {compression}")
    pos, views = FIR_HEADER, []
    for i in range(count):
        field = f"fir.finger[{i}]"
        if pos + FIR_VIEW_HEADER > len(data):
            raise InterchangeError(field, "its header runs past the record")
        block, position, _views, _number, quality, _impression, width, height, _ = struct.unpack_from(
            ">IBBBBBHHB", data, pos
        )
        if block < FIR_VIEW_HEADER or pos + block > len(data):
            raise InterchangeError(f"{field}.length", f"{block} does not fit the record")
        if not 1 <= position <= 10:
            raise InterchangeError(f"{field}.position", f"{position} is not a finger (1..10)")
        image = data[pos + FIR_VIEW_HEADER : pos + block]
        _matches(field, image, width, height, _CODEC_OF_FINGER.get(compression))
        views.append(ImageView(position, quality, width, height, image))
        pos += block
    if pos != len(data):
        raise InterchangeError("fir", f"{len(data) - pos} bytes after the {count} fingers")
    return views


# --- 19794-5: face image ----------------------------------------------------------------------


def face_record(view: ImageView, *, sex: str) -> bytes:
    """A Face Image Record of one basic face image; ``sex`` "M" or "F" fills the gender field.

    :raises InterchangeError: the image is not JPEG or JPEG 2000
    """
    info = _info("fac.image", view.image)
    if info.codec not in _FACE_CODEC:
        raise InterchangeError("fac.image", f"{info.codec.value}: the face is JPEG or JPEG 2000")
    gender = {"M": 1, "F": 2}.get(sex, 0)
    colour = FACE_COLOUR_GRAY8 if info.components == 1 else FACE_COLOUR_RGB24
    block = (
        struct.pack(">IHBBB3sH3s3s", FAC_INFO + FAC_IMAGE_INFO + len(view.image), 0, gender, 0, 0,
                    b"\x00\x00\x00", 0, b"\x00\x00\x00", b"\x00\x00\x00")
        + struct.pack(">BBHHBBHH", FACE_BASIC, _FACE_CODEC[info.codec], view.width, view.height,
                      colour, FACE_SOURCE_DIGITAL_STILL, 0, view.quality)
        + view.image
    )  # fmt: skip
    return FAC_MAGIC + VERSION_010 + struct.pack(">IH", FAC_HEADER + len(block), 1) + block


def read_face_record(data: bytes) -> ImageView:
    """The one face image of a Face Image Record. :raises InterchangeError:"""
    _magic(data, FAC_MAGIC, VERSION_010, FAC_HEADER, "fac")
    length, count = struct.unpack_from(">IH", data, 8)
    _length("fac", length, len(data))
    if count != 1:
        raise InterchangeError("fac.count", f"{count} faces, the enrollment record holds one")
    if len(data) < FAC_HEADER + FAC_INFO + FAC_IMAGE_INFO:
        raise InterchangeError("fac.face[0]", "its headers run past the record")
    block, points = struct.unpack_from(">IH", data, FAC_HEADER)
    if FAC_HEADER + block != len(data):
        raise InterchangeError("fac.face[0].length", f"{block} does not match the record")
    pos = FAC_HEADER + FAC_INFO + 8 * points
    if pos + FAC_IMAGE_INFO > len(data):
        raise InterchangeError("fac.face[0].feature_points", f"{points} points run past the record")
    _, data_type, width, height, _, _, _, quality = struct.unpack_from(">BBHHBBHH", data, pos)
    codec = _CODEC_OF_FACE.get(data_type)
    if codec is None:
        raise InterchangeError("fac.face[0].data_type", f"unknown code {data_type}")
    if quality > 100:
        raise InterchangeError("fac.face[0].quality", f"{quality} is not 0..100")
    image = data[pos + FAC_IMAGE_INFO :]
    _matches("fac.face[0]", image, width, height, codec)
    return ImageView(0, quality, width, height, image)


# --- 19794-6: iris image (rectilinear) ------------------------------------------------------


def iris_device_id(serial: str | None) -> bytes:
    """19794-6's 16-byte device unique identifier: "D" and the camera's serial number (its first
    15 printable ASCII characters, NUL-padded), or ASCII zeros when there is none."""
    text = (serial or "").strip()
    if not text or not text.isascii() or not text.isprintable():
        return DEVICE_ID_NONE
    return (b"D" + text[:15].encode("ascii")).ljust(16, b"\x00")


def iris_record(right: ImageView, left: ImageView, *, device_id: bytes = DEVICE_ID_NONE) -> bytes:
    """An Iris Image Record of both eyes, one image each, both of one size and codec.

    :raises InterchangeError: the eyes differ in size or codec, or the codec has no 19794-6 format
    """
    infos = [_info("iir.right", right.image), _info("iir.left", left.image)]
    if infos[0].codec not in _IRIS_CODEC or infos[0].codec != infos[1].codec:
        raise InterchangeError(
            "iir.image_format",
            f"{infos[0].codec.value} and {infos[1].codec.value}: both eyes JPEG 2000 (or JPEG)",
        )
    if (right.width, right.height) != (left.width, left.height):
        raise InterchangeError("iir.size", "the record's header gives one size for both eyes")
    subtypes = []
    for eye, view in ((EYE_RIGHT, right), (EYE_LEFT, left)):
        subtypes.append(
            struct.pack(">BH", eye, 1)
            + struct.pack(">HBHHI", 1, view.quality, UNDEFINED_ANGLE, UNDEFINED_ANGLE, len(view.image))
            + view.image
        )
    length = IIR_HEADER + sum(len(s) for s in subtypes)
    header = (
        IIR_MAGIC + VERSION_010
        + struct.pack(">IHBHHHHHHBB", length, 0, 2, IIR_HEADER, IRIS_PROPERTIES, 0,
                      _IRIS_CODEC[infos[0].codec], right.width, right.height, 8, 0)
        + device_id
    )  # fmt: skip
    return header + b"".join(subtypes)


def read_iris_record(data: bytes) -> tuple[ImageView, ImageView]:
    """The right and the left eye of an Iris Image Record. :raises InterchangeError:"""
    _magic(data, IIR_MAGIC, VERSION_010, IIR_HEADER, "iir")
    length, _, subtypes, header_len, _, _, image_format, width, height, _, _ = struct.unpack_from(
        ">IHBHHHHHHBB", data, 8
    )
    _length("iir", length, len(data))
    if header_len != IIR_HEADER:
        raise InterchangeError("iir.header_length", f"{header_len}, the 2005 header is {IIR_HEADER}")
    codec = _CODEC_OF_IRIS.get(image_format)
    if codec is None:
        raise InterchangeError("iir.image_format", f"code {image_format} is not one this kit reads")
    eyes: dict[int, ImageView] = {}
    pos = IIR_HEADER
    for i in range(subtypes):
        if pos + IIR_SUBTYPE_HEADER + IIR_IMAGE_HEADER > len(data):
            raise InterchangeError(f"iir.eye[{i}]", "its headers run past the record")
        eye, images = struct.unpack_from(">BH", data, pos)
        if eye not in (EYE_RIGHT, EYE_LEFT) or eye in eyes or images != 1:
            raise InterchangeError(f"iir.eye[{i}]", f"eye {eye} with {images} images: one image of each eye")
        _, quality, _, _, size = struct.unpack_from(">HBHHI", data, pos + IIR_SUBTYPE_HEADER)
        start = pos + IIR_SUBTYPE_HEADER + IIR_IMAGE_HEADER
        if start + size > len(data):
            raise InterchangeError(f"iir.eye[{i}].image_length", f"{size} runs past the record")
        if quality > 100 and quality != QUALITY_UNDEFINED:
            raise InterchangeError(f"iir.eye[{i}].quality", f"{quality} is not 0..100")
        image = data[start : start + size]
        _matches(f"iir.eye[{i}]", image, width, height, codec)
        eyes[eye] = ImageView(eye, 0 if quality > 100 else quality, width, height, image)
        pos = start + size
    if pos != len(data):
        raise InterchangeError("iir", f"{len(data) - pos} bytes after the eyes")
    if set(eyes) != {EYE_RIGHT, EYE_LEFT}:
        raise InterchangeError("iir.eyes", "the record needs the right and the left eye")
    return eyes[EYE_RIGHT], eyes[EYE_LEFT]


# --- 19794-7: signature time series -----------------------------------------------------------

Point = tuple[int, int, int]


def signature_record(strokes: Sequence[Sequence[Point]]) -> bytes:
    """A signature time series of channels X, Y, F (pen force: the pad's pressure) and S (tip switch).

    A sample is X and Y (signed 16 bits, two's complement), F (unsigned 16 bits) and S (one
    byte, as 19794-7's ASN.1 declares it: UnsignedInt8). Each stroke's points are samples with S = 1; between two strokes one sample with S = 0 (at
    the last point, force 0) marks the pen lifted, so the strokes come back exactly.
    :raises InterchangeError: a coordinate beyond the signed 16-bit range of X and Y
    """
    samples: list[tuple[int, int, int, int]] = []
    for i, stroke in enumerate(strokes):
        if i:
            x, y, _ = strokes[i - 1][-1]
            samples.append((x, y, 0, 0))
        samples.extend((x, y, p, 1) for x, y, p in stroke)
    if len(samples) > MAX_SAMPLES:
        raise InterchangeError("sdi.samples", f"{len(samples)} samples, more than {MAX_SAMPLES}")
    out = bytearray(SDI_MAGIC + SDI_VERSION)
    inclusion = sum(1 << (15 - SDI_CHANNELS.index(c)) for c in SDI_OURS)
    out += struct.pack(">H", inclusion) + bytes(len(SDI_OURS))  # each channel: a preamble with nothing in it
    out += b"\x00" + len(samples).to_bytes(3, "big")  # no extended data
    for x, y, p, s in samples:
        if not (0 <= x <= 0x7FFF and 0 <= y <= 0x7FFF):
            raise InterchangeError("sdi.samples", f"({x}, {y}) is beyond the signed 16-bit X and Y")
        out += struct.pack(">hhHB", x, y, p, s)
    return bytes(out)


def read_signature_record(data: bytes) -> tuple[tuple[Point, ...], ...]:
    """The strokes of a signature time series of X, Y, F and S. :raises InterchangeError:"""
    _magic(data, SDI_MAGIC, SDI_VERSION, 10, "sdi")
    (inclusion,) = struct.unpack_from(">H", data, 8)
    channels = [c for i, c in enumerate(SDI_CHANNELS) if inclusion & (1 << (15 - i))]
    if channels != list(SDI_OURS):
        raise InterchangeError("sdi.channels", f"{'/'.join(channels) or 'none'}; this kit reads X, Y, F, S")
    pos = 10
    for channel in channels:
        if pos >= len(data):
            raise InterchangeError(f"sdi.channel.{channel}", "its description runs past the record")
        preamble = data[pos]
        pos += 1 + 2 * sum(1 for bit in range(3, 8) if preamble & (1 << bit))
    if pos + 4 > len(data):
        raise InterchangeError("sdi.body", "the sample count runs past the record")
    if data[pos] != 0:
        raise InterchangeError("sdi.body", "extended data, which this kit does not write")
    count = int.from_bytes(data[pos + 1 : pos + 4], "big")
    pos += 4
    if pos + SDI_SAMPLE * count != len(data):
        raise InterchangeError(
            "sdi.samples", f"{count} samples of {SDI_SAMPLE} bytes do not fill the {len(data) - pos} left"
        )
    strokes: list[tuple[Point, ...]] = []
    current: list[Point] = []
    for x, y, p, s in struct.iter_unpack(">hhHB", data[pos:]):
        if s not in (0, 1) or x < 0 or y < 0:
            raise InterchangeError("sdi.samples", f"sample ({x}, {y}, {p}, {s}) out of range")
        if s:
            current.append((x, y, p))
        elif current:
            strokes.append(tuple(current))
            current = []
        else:
            raise InterchangeError("sdi.samples", "a pen-up sample with no stroke before it")
    if not current:
        raise InterchangeError("sdi.samples", "the record ends with the pen up or holds no stroke")
    strokes.append(tuple(current))
    return tuple(strokes)


# --- shared checks ------------------------------------------------------------------------------


def _magic(data: bytes, magic: bytes, version: bytes, header: int, field: str) -> None:
    if len(data) < header:
        raise InterchangeError(field, f"{len(data)} bytes, shorter than its {header}-byte header")
    if data[:4] != magic:
        raise InterchangeError(f"{field}.format_identifier", f"not {magic[:3].decode()}")
    if data[4:8] != version:
        raise InterchangeError(f"{field}.version", f"{data[4:8]!r}, this kit reads {version!r}")


def _length(field: str, declared: int, actual: int) -> None:
    if declared != actual:
        raise InterchangeError(f"{field}.record_length", f"says {declared}, the record is {actual} bytes")


def _info(field: str, blob: bytes) -> ImageInfo:
    try:
        return image_info(blob)
    except BadImage as exc:
        raise InterchangeError(field, str(exc)) from None


def _codec(field: str, blob: bytes) -> Codec:
    return _info(field, blob).codec


def _matches(field: str, image: bytes, width: int, height: int, codec: Codec | None) -> None:
    info = _info(field, image)
    if codec is not None and info.codec != codec:
        raise InterchangeError(field, f"a {info.codec.value} image where the header says {codec.value}")
    if (info.width, info.height) != (width, height):
        raise InterchangeError(
            field, f"the image is {info.width}x{info.height}, the header says {width}x{height}"
        )
