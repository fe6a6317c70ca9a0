"""A strict, independent parser of first-edition ISO/IEC 19794 biometric interchange records.

Why it exists: the kiosk encodes finger, face, iris and signature records (wire/iso19794.py). This module
was written from public descriptions of the standards *without reading that encoder*, so that tests can
check the encoder's output against a second, independent reading of the byte layouts. Every violation
raises :class:`NonConformance` naming the field, never any other exception, whatever the input.

Editions validated (the ones ICAO 9303 and most AFIS/ABIS import):

* ISO/IEC 19794-4:2005 finger image record ``FIR\\0`` ``010\\0`` -- :func:`validate_fir`
* ISO/IEC 19794-5:2005 face image record ``FAC\\0`` ``010\\0`` -- :func:`validate_fac`
* ISO/IEC 19794-6:2005 iris image record, rectilinear, ``IIR\\0`` ``010\\0`` -- :func:`validate_iir`
* ISO/IEC 19794-7:2007 signature/sign time series, full format, ``SDI\\0`` `` 10\\0`` -- :func:`validate_sdi`

The embedded images are checked independently of the record: JPEG (SOI + SOFn), JPEG-LS (SOF55),
JPEG 2000 (JP2 boxes and/or the raw codestream's SIZ marker segment, ISO/IEC 15444-1 Annex A/I), PNG
(signature + IHDR, CRC checked) and WSQ (SOI + SOF); the width and height declared in the record must
equal the codec's.

Sources checked and where they disagree with the layout list this validator was briefed with
-------------------------------------------------------------------------------------------

Sources: NIST biomdi (fingerimage fir.h / validate.c, facerecognition frf.h / validate.c, common
biomdi.h, irisimage iid.h -- the IREX variant), JMRTD (FingerInfo/FingerImageInfo, FaceImageInfo,
IrisInfo/IrisImageInfo, which cite 19794-4/-5/-6 tables), a vendor iris SDK header (IIIF constants),
the ITU-T X.695 (05/2007) SignatureSignRecordFormatModule pages, the X.692 / ISO 8825-6 ECN sample
(via GOST R ISO/IEC 8825-6-2013) and GOST R ISO/IEC 19794-7-2009 (an identical, IDT, translation of
ISO/IEC 19794-7:2007) Annex B.2. Where the sources disagree with the brief, the source was followed:

1. 19794-6 iris image property bit field. Brief: bits 0-1 horizontal, 2-3 vertical, 4-5 scan type,
   6 occlusion, 7 occlusion filling, 8 boundary extraction. JMRTD (quoting Table 2 of 19794-6:2005) and
   the IIIF vendor header agree with each other: bits 0-1 horizontal, 2-3 vertical, **4-6 scan type**
   (0 undefined, 1 progressive, 2 interlace frame, 3 interlace field, **4 corrected**), **7 iris
   occlusion, 8 occlusion filling, 9 boundary extraction**, 10-15 reserved (must be 0). The brief's layout
   is NIST's IREX one (a different record with an extra header byte). Followed JMRTD/IIIF.
2. 19794-6 image quality: brief allows 0..100, 254 "not computed", 255 "not available". JMRTD and IIIF
   define only 254 (IMAGE_QUAL_UNDEF) besides 0..100; 255 "not available" is NIST's IREX code. 255 is
   refused here.
3. 19794-6 device unique identifier: JMRTD quotes the standard -- 16 characters starting with ``D``
   (serial), ``M`` (MAC) or ``P`` (processor id), or all zeros for none. Enforced (zeros as 0x00 bytes or
   as ASCII ``0``, both seen in the wild). The brief said nothing of it.
4. 19794-6 rotation angle / uncertainty: 2005 encodes round(65536*angle/360) and round(65536*u/180), so
   every 16-bit value is meaningful; NIST's 0..179 cap is IREX's encoding and is not applied.
5. 19794-4 finger image quality: brief 0..100. JMRTD says 0..100; NIST biomdi (ISO 29109-4 conformance)
   accepts only 254 ("undefined"). Accepted here: 0..100 and 254. Impression types: brief lists 0-3 and 8;
   JMRTD and NIST also define 7 (latent) and 9 (live-scan contactless); {0,1,2,3,7,8,9} accepted.
   Finger positions: 0..10, 13, 14, 15 (plain four/thumbs) and palms 20..36 (JMRTD Tables 5/6, NIST).
   Both JMRTD and NIST: image resolution shall not exceed scan resolution -- enforced.
6. 19794-5 face codes (brief gave gender only): eye colour 0..7 or 0xFF, hair colour 0..9 or 0xFF
   (JMRTD, "Table 4 ... ISO/IEC 19794-5:2005(E)"; NIST biomdi's different hair/eye codes and gender
   "unknown" = 3 are ANSI/INCITS 385's). Expression 0..7, 0x8000..0xFFFF vendor, the rest reserved.
   Pose angles and their uncertainties: 0 unspecified or 1..181 (NIST). Face image type 0..2 (NIST's 3
   "other" is ANSI's). Colour space 5..127 and source type 8..127 reserved. Feature points: type 1 (2D),
   2 reserved bytes zero. NIST also requires face image quality 0; 19794-5:2005 leaves it unspecified in
   the sources found, so it is not checked.
7. 19794-7:2007 signature record -- the biggest disagreements:

   a. Channel S (tip switch) is ``UnsignedInt8``: **one byte per sample**, not two. Both the standard's
      own ASN.1 (GOST R ISO/IEC 19794-7 B.2, IDT) and the X.692 ECN sample say so.
   b. Extended data: 19794-7:2007 B.2 encodes it as ``[LENGTH 2][COUNT-OCTETS] OCTET STRING``: **a 2-byte
      length, then the bytes**. The X.692 ECN sample instead makes it ``TERMINATED-BY-CARRIER`` (runs to
      the end), as the brief says. Followed the standard itself (length-prefixed); with the extended-data
      bit clear -- the kiosk's case -- both readings agree that nothing may follow the samples.
   c. Signed values: the X.692 ECN sample encodes ``SignedInt16`` with ``ENCODE-DIRECTLY``, i.e. **two's
      complement** ("As above": "this ensures a two's complement encoding, not an encoding from the base
      of -16", said of the scaling exponent). The brief says offset binary (value + 32768) for samples
      and two's complement for the exponent, which is not consistent with either reading (plain PER would
      offset both; ECN encodes both directly). Default here: two's complement for both, as X.692 states;
      ``validate_sdi(..., signed_encoding="offset_binary")`` decodes samples and signed min/max/mean the
      brief's way. (One public parser, Fraunhofer SIT's, even reads the exponent as offset by 16.)
   d. The body's optionality byte: "only one bit used. Other bits will be set to zero by encoders,
      ignored by decoders". As in PER, the one optional component's bit is the first (MSB, 0x80); since
      this validator checks an encoder, the other bits must be 0. The preamble's last (reserved) bit must
      be 0 too.

Checks added beyond the brief (consistency any conforming encoder meets): a view number is unique per
finger and within 1..view count; iris eye positions are unique per record and image numbers are 1..n,
unique; face feature points lie inside the image; an image's component count and bit depth agree with the
record (grey finger images, pixel depth / intensity depth, face colour space, iris mono/RGB format); JPEG
ends with EOI, a J2K codestream with EOC, PNG with IEND; SDI samples lie within a channel's declared
min..max and the mean within min..max.

Not checked (no source gives a rule): capture device ids, iris diameter, the feature mask's reserved bits,
face device type and quality, the SDI is-constant / linear-component-removed flags' meaning.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ChannelDescription",
    "FaceImage",
    "FaceRecord",
    "FeaturePoint",
    "FingerRecord",
    "FingerView",
    "ImageInfo",
    "IrisImage",
    "IrisRecord",
    "IrisSubtype",
    "NonConformance",
    "ScalingValue",
    "SignatureRecord",
    "inspect_jpeg",
    "inspect_jpeg2000",
    "inspect_png",
    "inspect_wsq",
    "validate_any",
    "validate_fac",
    "validate_fir",
    "validate_iir",
    "validate_sdi",
]


class NonConformance(ValueError):
    """A record does not conform: ``field`` names the clause/field, ``problem`` says what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class _Reader:
    """Bounded big-endian reader: running off the end is a NonConformance naming the field being read."""

    def __init__(self, data: bytes, offset: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = offset
        self.end = len(data) if end is None else end

    @property
    def left(self) -> int:
        return self.end - self.pos

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or n > self.left:
            raise NonConformance(field, f"truncated: needs {n} bytes at offset {self.pos}, {self.left} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int, field: str) -> int:
        return int.from_bytes(self.take(n, field), "big")


def _need(cond: bool, field: str, problem: str) -> None:
    if not cond:
        raise NonConformance(field, problem)


# ----------------------------------------------------------------------------------------------------------
# Embedded images


@dataclass(frozen=True)
class ImageInfo:
    """What an embedded image's own headers say: codec, size, components and bits per component."""

    codec: str  # "jpeg", "jpeg-ls", "jpeg2000", "png", "wsq", "raw"
    width: int
    height: int
    components: int
    bit_depth: int


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_LS_SOF = 0xF7  # SOF55, ISO/IEC 14495-1


def inspect_jpeg(data: bytes, field: str = "image") -> ImageInfo:
    """Walk a JPEG / JPEG-LS marker stream from SOI to the first SOFn; the stream must end with EOI."""
    r = _Reader(data)
    _need(r.take(2, field) == b"\xff\xd8", field, "JPEG data does not start with SOI (FF D8)")
    _need(data[-2:] == b"\xff\xd9", field, "JPEG data does not end with EOI (FF D9)")
    while True:
        _need(r.uint(1, field) == 0xFF, field, f"JPEG marker expected at offset {r.pos - 1}")
        marker = r.uint(1, field)
        while marker == 0xFF:  # fill bytes
            marker = r.uint(1, field)
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            continue  # standalone markers carry no length
        _need(marker not in (0x00, 0xD8, 0xD9, 0xDA), field, f"JPEG marker FF{marker:02X} before any SOFn")
        length = r.uint(2, field)
        _need(length >= 2, field, f"JPEG segment FF{marker:02X} length {length} < 2")
        seg = _Reader(r.take(length - 2, field))
        if marker in _JPEG_SOF or marker == _JPEG_LS_SOF:
            precision = seg.uint(1, field)
            height = seg.uint(2, field)
            width = seg.uint(2, field)
            comps = seg.uint(1, field)
            _need(length == 8 + 3 * comps, field, f"SOF length {length} != 8 + 3 x {comps} components")
            _need(comps >= 1, field, "SOF declares no components")
            _need(height > 0 and width > 0, field, f"SOF declares a {width}x{height} image")
            codec = "jpeg-ls" if marker == _JPEG_LS_SOF else "jpeg"
            return ImageInfo(codec, width, height, comps, precision)


_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def _siz(code: bytes, field: str) -> ImageInfo:
    """Read the SIZ marker segment that must follow SOC in a JPEG 2000 codestream (15444-1 A.5.1)."""
    r = _Reader(code)
    _need(r.take(4, field) == b"\xff\x4f\xff\x51", field, "JPEG 2000 codestream does not start SOC, SIZ")
    _need(code[-2:] == b"\xff\xd9", field, "JPEG 2000 codestream does not end with EOC (FF D9)")
    lsiz = r.uint(2, field)
    r.uint(2, field)  # Rsiz, capabilities
    xsiz, ysiz, xosiz, yosiz = (r.uint(4, field) for _ in range(4))
    for _ in range(4):
        r.uint(4, field)  # tile size and offsets
    csiz = r.uint(2, field)
    _need(csiz >= 1, field, "SIZ declares no components")
    _need(lsiz == 38 + 3 * csiz, field, f"SIZ length {lsiz} != 38 + 3 x {csiz} components")
    depths = []
    for _ in range(csiz):
        ssiz = r.uint(1, field)
        r.uint(2, field)  # XRsiz, YRsiz
        depths.append((ssiz & 0x7F) + 1)
    _need(xsiz > xosiz and ysiz > yosiz, field, f"SIZ image area {xsiz}x{ysiz} at {xosiz},{yosiz} is empty")
    return ImageInfo("jpeg2000", xsiz - xosiz, ysiz - yosiz, csiz, max(depths))


def inspect_jpeg2000(data: bytes, field: str = "image") -> ImageInfo:
    """JPEG 2000 as a JP2 file (boxes: signature, ftyp, jp2h/ihdr, jp2c) or as a bare codestream."""
    if data.startswith(b"\xff\x4f"):
        return _siz(data, field)
    _need(data.startswith(_JP2_SIGNATURE), field, "neither a JP2 signature box nor a J2K codestream (FF 4F)")
    r = _Reader(data, len(_JP2_SIGNATURE))
    boxes: list[tuple[bytes, bytes]] = []
    while r.left:
        lbox = r.uint(4, field)
        tbox = r.take(4, field)
        if lbox == 1:
            lbox = r.uint(8, field)
            header = 16
        else:
            header = 8
        if lbox == 0:
            lbox = header + r.left
        _need(lbox >= header, field, f"JP2 box {tbox!r} length {lbox} shorter than its header")
        boxes.append((tbox, r.take(lbox - header, field)))
    kinds = [t for t, _ in boxes]
    _need(kinds[:1] == [b"ftyp"], field, "JP2 file type box (ftyp) must follow the signature")
    _need(boxes[0][1][:4] == b"jp2 ", field, f"JP2 brand is {boxes[0][1][:4]!r}, not 'jp2 '")
    _need(b"jp2h" in kinds and b"jp2c" in kinds, field, "JP2 file lacks a jp2h header or jp2c codestream")
    header_box = boxes[kinds.index(b"jp2h")][1]
    h = _Reader(header_box)
    h.uint(4, field)
    _need(h.take(4, field) == b"ihdr", field, "the first box inside jp2h must be ihdr")
    height, width, nc = h.uint(4, field), h.uint(4, field), h.uint(2, field)
    info = _siz(boxes[kinds.index(b"jp2c")][1], field)
    _need(
        (info.width, info.height, info.components) == (width, height, nc),
        field,
        f"JP2 ihdr says {width}x{height}x{nc}, codestream SIZ {info.width}x{info.height}x{info.components}",
    )
    return info


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COMPONENTS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def inspect_png(data: bytes, field: str = "image") -> ImageInfo:
    """PNG signature, then IHDR (13 bytes, CRC checked) for the size; the file must end with IEND."""
    r = _Reader(data)
    _need(r.take(8, field) == _PNG_SIGNATURE, field, "PNG signature missing")
    length = r.uint(4, field)
    ctype = r.take(4, field)
    _need(ctype == b"IHDR" and length == 13, field, "PNG must start with a 13-byte IHDR chunk")
    body = r.take(13, field)
    crc = r.uint(4, field)
    _need(zlib.crc32(ctype + body) == crc, field, "PNG IHDR CRC mismatch")
    width, height, depth, colour = struct.unpack(">IIBB", body[:10])
    _need(colour in _PNG_COMPONENTS, field, f"PNG colour type {colour} is not defined")
    _need(width > 0 and height > 0, field, f"PNG IHDR declares a {width}x{height} image")
    _need(data.endswith(b"\x00\x00\x00\x00IEND\xaeB`\x82"), field, "PNG does not end with an IEND chunk")
    return ImageInfo("png", width, height, _PNG_COMPONENTS[colour], depth)


def inspect_wsq(data: bytes, field: str = "image") -> ImageInfo:
    """WSQ (FBI IAFIS-IC-0110): SOI FF A0, tables, then SOF FF A2 (black, white, height, width)."""
    r = _Reader(data)
    _need(r.take(2, field) == b"\xff\xa0", field, "WSQ data does not start with SOI (FF A0)")
    _need(data[-2:] == b"\xff\xa1", field, "WSQ data does not end with EOI (FF A1)")
    while True:
        marker = r.take(2, field)
        _need(marker[0] == 0xFF and 0xA2 <= marker[1] <= 0xA8, field, f"WSQ marker {marker.hex()} unexpected")
        length = r.uint(2, field)
        _need(length >= 2, field, f"WSQ segment length {length} < 2")
        seg = _Reader(r.take(length - 2, field))
        if marker[1] == 0xA2:
            seg.uint(2, field)  # black, white
            height, width = seg.uint(2, field), seg.uint(2, field)
            _need(width > 0 and height > 0, field, f"WSQ SOF declares a {width}x{height} image")
            return ImageInfo("wsq", width, height, 1, 8)
        _need(marker[1] != 0xA3, field, "WSQ block (SOB) before the frame header (SOF)")


def _check_size(info: ImageInfo, width: int, height: int, field: str) -> None:
    _need(
        (info.width, info.height) == (width, height),
        field,
        f"record declares {width}x{height}, the {info.codec} data is {info.width}x{info.height}",
    )


# ----------------------------------------------------------------------------------------------------------
# ISO/IEC 19794-4:2005 finger image record


@dataclass(frozen=True)
class FingerView:
    """One finger image header (14 bytes) and its image data."""

    block_length: int
    finger_position: int
    view_count: int
    view_number: int
    quality: int
    impression_type: int
    width: int
    height: int
    image: bytes
    image_info: ImageInfo


@dataclass(frozen=True)
class FingerRecord:
    """A 19794-4:2005 record: the 32-byte general header's fields and its finger views."""

    record_length: int
    capture_device_id: int
    acquisition_level: int
    num_images: int
    scale_units: int
    scan_resolution_h: int
    scan_resolution_v: int
    image_resolution_h: int
    image_resolution_v: int
    pixel_depth: int
    compression: int
    views: tuple[FingerView, ...]


_FIR_LEVELS = {10, 20, 30, 31, 40, 41}
_FIR_POSITIONS = set(range(0, 11)) | {13, 14, 15} | set(range(20, 37))
_FIR_IMPRESSIONS = {0, 1, 2, 3, 7, 8, 9}
_FIR_COMPRESSION = {0: "raw", 1: "raw bit-packed", 2: "wsq", 3: "jpeg", 4: "jpeg2000", 5: "png"}


def _magic(r: _Reader, magic: bytes, version: bytes, std: str) -> None:
    got = r.take(4, f"{std}.format_identifier")
    _need(got == magic, f"{std}.format_identifier", f"is {got!r}, expected {magic!r}")
    ver = r.take(4, f"{std}.version")
    _need(ver == version, f"{std}.version", f"is {ver!r}, expected {version!r}")


def _raw_info(
    image: bytes, width: int, height: int, depth: int, components: int, packed: bool, field: str
) -> ImageInfo:
    """Uncompressed pixels: the byte count must be what width x height x depth x components implies."""
    _need(depth > 0, field, "uncompressed pixels with an undefined depth cannot be sized")
    if packed:
        sizes = {math.ceil(width * height * depth * components / 8), height * math.ceil(width * depth / 8)}
    else:
        sizes = {width * height * components * math.ceil(depth / 8)}
    _need(len(image) in sizes, field, f"{len(image)} bytes of raw pixels, {sorted(sizes)} expected")
    return ImageInfo("raw", width, height, components, depth)


def validate_fir(data: bytes) -> FingerRecord:
    """Parse and check an ISO/IEC 19794-4:2005 finger image record; raise NonConformance on any fault."""
    r = _Reader(data)
    _magic(r, b"FIR\x00", b"010\x00", "FIR")
    record_length = r.uint(6, "FIR.record_length")
    _need(record_length == len(data), "FIR.record_length", f"is {record_length}, the record has {len(data)}")
    device = r.uint(2, "FIR.capture_device_id")
    level = r.uint(2, "FIR.acquisition_level")
    _need(level in _FIR_LEVELS, "FIR.acquisition_level", f"{level} is not one of {sorted(_FIR_LEVELS)}")
    count = r.uint(1, "FIR.num_images")
    _need(count >= 1, "FIR.num_images", "a record holds at least one finger image")
    units = r.uint(1, "FIR.scale_units")
    _need(units in (1, 2), "FIR.scale_units", f"{units} is neither 1 (ppi) nor 2 (ppcm)")
    scan_h, scan_v = r.uint(2, "FIR.scan_resolution_h"), r.uint(2, "FIR.scan_resolution_v")
    img_h, img_v = r.uint(2, "FIR.image_resolution_h"), r.uint(2, "FIR.image_resolution_v")
    _need(img_h <= scan_h, "FIR.image_resolution_h", f"{img_h} exceeds the scan resolution {scan_h}")
    _need(img_v <= scan_v, "FIR.image_resolution_v", f"{img_v} exceeds the scan resolution {scan_v}")
    depth = r.uint(1, "FIR.pixel_depth")
    _need(1 <= depth <= 16, "FIR.pixel_depth", f"{depth} is outside 1..16")
    compression = r.uint(1, "FIR.compression")
    _need(compression in _FIR_COMPRESSION, "FIR.compression", f"{compression} is not a defined algorithm")
    _need(r.uint(2, "FIR.reserved") == 0, "FIR.reserved", "must be zero")

    views: list[FingerView] = []
    seen: set[tuple[int, int]] = set()
    for i in range(count):
        f = f"FIR.view[{i}]"
        start = r.pos
        block = r.uint(4, f"{f}.block_length")
        _need(block > 14, f"{f}.block_length", f"{block} leaves no image data after the 14-byte header")
        _need(block <= r.left + 4, f"{f}.block_length", f"{block} overruns the record ({r.left + 4} left)")
        position = r.uint(1, f"{f}.finger_position")
        _need(position in _FIR_POSITIONS, f"{f}.finger_position", f"{position} is not a finger or palm code")
        view_count = r.uint(1, f"{f}.view_count")
        view_number = r.uint(1, f"{f}.view_number")
        _need(view_count >= 1, f"{f}.view_count", "must be at least 1")
        _need(1 <= view_number <= view_count, f"{f}.view_number", f"{view_number} is outside 1..{view_count}")
        _need((position, view_number) not in seen, f"{f}.view_number", "repeats a view of the same finger")
        seen.add((position, view_number))
        quality = r.uint(1, f"{f}.quality")
        _need(quality <= 100 or quality == 254, f"{f}.quality", f"{quality} is neither 0..100 nor 254")
        impression = r.uint(1, f"{f}.impression_type")
        _need(impression in _FIR_IMPRESSIONS, f"{f}.impression_type", f"{impression} is not defined")
        width, height = r.uint(2, f"{f}.width"), r.uint(2, f"{f}.height")
        _need(width > 0 and height > 0, f"{f}.width", f"{width}x{height} image")
        _need(r.uint(1, f"{f}.reserved") == 0, f"{f}.reserved", "must be zero")
        image = r.take(block - (r.pos - start), f"{f}.image")
        field = f"{f}.image"
        if compression in (0, 1):
            info = _raw_info(image, width, height, depth, 1, compression == 1, field)
        else:
            inspect: Callable[[bytes, str], ImageInfo] = {
                2: inspect_wsq,
                3: inspect_jpeg,
                4: inspect_jpeg2000,
                5: inspect_png,
            }[compression]
            info = inspect(image, field)
            _need(info.codec != "jpeg-ls", field, "JPEG-LS is not a 19794-4 compression algorithm")
            _check_size(info, width, height, field)
            _need(info.components == 1, field, f"{info.components} components; finger images are grey")
            if info.codec != "wsq":
                _need(info.bit_depth == depth, field, f"{info.bit_depth} bits per pixel, header says {depth}")
        views.append(
            FingerView(
                block, position, view_count, view_number, quality, impression, width, height, image, info
            )
        )
    _need(r.left == 0, "FIR.record_length", f"{r.left} bytes follow the last of {count} finger images")
    return FingerRecord(
        record_length,
        device,
        level,
        count,
        units,
        scan_h,
        scan_v,
        img_h,
        img_v,
        depth,
        compression,
        tuple(views),
    )


# ----------------------------------------------------------------------------------------------------------
# ISO/IEC 19794-5:2005 face image record


@dataclass(frozen=True)
class FeaturePoint:
    """An 8-byte feature point: type (1 = 2D), MPEG-4 major/minor code, x, y."""

    point_type: int
    major: int
    minor: int
    x: int
    y: int


@dataclass(frozen=True)
class FaceImage:
    """One facial record data block: facial information, feature points, image information, image."""

    block_length: int
    gender: int
    eye_colour: int
    hair_colour: int
    feature_mask: int
    expression: int
    pose_angle: tuple[int, int, int]  # yaw, pitch, roll as encoded (0 unspecified, 1..181)
    pose_angle_uncertainty: tuple[int, int, int]
    feature_points: tuple[FeaturePoint, ...]
    face_image_type: int
    image_data_type: int
    width: int
    height: int
    colour_space: int
    source_type: int
    device_type: int
    quality: int
    image: bytes
    image_info: ImageInfo


@dataclass(frozen=True)
class FaceRecord:
    """A 19794-5:2005 record: the 14-byte facial record header and its images."""

    record_length: int
    num_images: int
    images: tuple[FaceImage, ...]


_FAC_GENDER = {0, 1, 2, 0xFF}
_FAC_EYE = set(range(8)) | {0xFF}
_FAC_HAIR = set(range(10)) | {0xFF}
_FAC_COMPONENTS = {1: 3, 2: 3, 3: 1}  # colour space -> components: RGB24, YUV422, GRAY8


def validate_fac(data: bytes) -> FaceRecord:
    """Parse and check an ISO/IEC 19794-5:2005 face image record; raise NonConformance on any fault."""
    r = _Reader(data)
    _magic(r, b"FAC\x00", b"010\x00", "FAC")
    record_length = r.uint(4, "FAC.record_length")
    _need(record_length == len(data), "FAC.record_length", f"is {record_length}, the record has {len(data)}")
    count = r.uint(2, "FAC.num_images")
    _need(count >= 1, "FAC.num_images", "a record holds at least one facial image")
    images: list[FaceImage] = []
    for i in range(count):
        f = f"FAC.image[{i}]"
        start = r.pos
        block = r.uint(4, f"{f}.block_length")
        _need(block <= r.left + 4, f"{f}.block_length", f"{block} overruns the record ({r.left + 4} left)")
        npoints = r.uint(2, f"{f}.num_feature_points")
        _need(
            block > 20 + 8 * npoints + 12,
            f"{f}.block_length",
            f"{block} leaves no image data after 20 + 8 x {npoints} + 12 header bytes",
        )
        gender = r.uint(1, f"{f}.gender")
        _need(gender in _FAC_GENDER, f"{f}.gender", f"{gender:#04x} is not 0, 1, 2 or 0xFF")
        eye = r.uint(1, f"{f}.eye_colour")
        _need(eye in _FAC_EYE, f"{f}.eye_colour", f"{eye:#04x} is reserved")
        hair = r.uint(1, f"{f}.hair_colour")
        _need(hair in _FAC_HAIR, f"{f}.hair_colour", f"{hair:#04x} is reserved")
        mask = r.uint(3, f"{f}.feature_mask")
        expression = r.uint(2, f"{f}.expression")
        _need(expression <= 7 or expression >= 0x8000, f"{f}.expression", f"{expression:#06x} is reserved")
        pose = tuple(r.uint(1, f"{f}.pose_angle") for _ in range(3))
        unc = tuple(r.uint(1, f"{f}.pose_angle_uncertainty") for _ in range(3))
        for axis, angle, u in zip(("yaw", "pitch", "roll"), pose, unc, strict=True):
            _need(angle <= 181, f"{f}.pose_angle", f"{axis} {angle} is outside 0 (unspecified) and 1..181")
            _need(u <= 181, f"{f}.pose_angle_uncertainty", f"{axis} {u} is outside 0..181")
        raw_points = []
        for j in range(npoints):
            g = f"{f}.feature_point[{j}]"
            ptype, code, x, y, reserved = struct.unpack(">BBHHH", r.take(8, g))
            _need(ptype == 1, f"{g}.type", f"{ptype} is not 1 (2D)")
            _need(reserved == 0, f"{g}.reserved", "must be zero")
            raw_points.append(FeaturePoint(ptype, code >> 4, code & 0x0F, x, y))
        image_type = r.uint(1, f"{f}.face_image_type")
        _need(image_type <= 2, f"{f}.face_image_type", f"{image_type} is not basic/full/token frontal")
        data_type = r.uint(1, f"{f}.image_data_type")
        _need(
            data_type in (0, 1), f"{f}.image_data_type", f"{data_type} is neither 0 (JPEG) nor 1 (JPEG 2000)"
        )
        width, height = r.uint(2, f"{f}.width"), r.uint(2, f"{f}.height")
        space = r.uint(1, f"{f}.colour_space")
        _need(not 5 <= space <= 127, f"{f}.colour_space", f"{space} is reserved")
        source = r.uint(1, f"{f}.source_type")
        _need(not 8 <= source <= 127, f"{f}.source_type", f"{source} is reserved")
        device, quality = r.uint(2, f"{f}.device_type"), r.uint(2, f"{f}.quality")
        for j, p in enumerate(raw_points):
            _need(
                p.x < width and p.y < height,
                f"{f}.feature_point[{j}]",
                f"({p.x}, {p.y}) lies outside the {width}x{height} image",
            )
        image = r.take(block - (r.pos - start), f"{f}.image")
        field = f"{f}.image"
        info = (inspect_jpeg if data_type == 0 else inspect_jpeg2000)(image, field)
        _need(info.codec != "jpeg-ls", field, "JPEG-LS is not a 19794-5 image data type")
        _check_size(info, width, height, field)
        if space in _FAC_COMPONENTS:
            _need(
                info.components == _FAC_COMPONENTS[space],
                field,
                f"{info.components} components, colour space {space} implies {_FAC_COMPONENTS[space]}",
            )
        images.append(
            FaceImage(
                block, gender, eye, hair, mask, expression, (pose[0], pose[1], pose[2]),
                (unc[0], unc[1], unc[2]), tuple(raw_points), image_type, data_type, width, height, space,
                source, device, quality, image, info,
            )
        )  # fmt: skip
    _need(r.left == 0, "FAC.record_length", f"{r.left} bytes follow the last of {count} facial images")
    return FaceRecord(record_length, count, tuple(images))


# ----------------------------------------------------------------------------------------------------------
# ISO/IEC 19794-6:2005 iris image record (rectilinear)


@dataclass(frozen=True)
class IrisImage:
    """An 11-byte iris image header and its image data."""

    image_number: int
    quality: int
    rotation_angle: int
    rotation_uncertainty: int
    image_length: int
    image: bytes
    image_info: ImageInfo


@dataclass(frozen=True)
class IrisSubtype:
    """A biometric subtype (one eye): 3-byte header and its images."""

    eye_position: int
    images: tuple[IrisImage, ...]


@dataclass(frozen=True)
class IrisRecord:
    """A 19794-6:2005 rectilinear record: the 45-byte record header and its subtypes."""

    record_length: int
    capture_device_id: int
    num_subtypes: int
    header_length: int
    image_properties: int
    horizontal_orientation: int
    vertical_orientation: int
    scan_type: int
    iris_occlusion: int
    occlusion_filling: int
    boundary_extraction: int
    iris_diameter: int
    image_format: int
    width: int
    height: int
    intensity_depth: int
    image_transformation: int
    device_unique_id: bytes
    subtypes: tuple[IrisSubtype, ...]


# image format -> (codec family, components)
_IIR_FORMATS = {
    2: ("raw", 1),
    4: ("raw", 3),
    6: ("jpeg", 1),
    8: ("jpeg", 3),
    10: ("jpeg-ls", 1),
    12: ("jpeg-ls", 3),
    14: ("jpeg2000", 1),
    16: ("jpeg2000", 3),
}


def validate_iir(data: bytes) -> IrisRecord:
    """Parse and check an ISO/IEC 19794-6:2005 rectilinear iris record; raise NonConformance on any fault."""
    r = _Reader(data)
    _magic(r, b"IIR\x00", b"010\x00", "IIR")
    record_length = r.uint(4, "IIR.record_length")
    _need(record_length == len(data), "IIR.record_length", f"is {record_length}, the record has {len(data)}")
    device = r.uint(2, "IIR.capture_device_id")
    nsub = r.uint(1, "IIR.num_subtypes")
    _need(nsub <= 2, "IIR.num_subtypes", f"{nsub} eyes; at most 2")
    header_length = r.uint(2, "IIR.header_length")
    _need(header_length == 45, "IIR.header_length", f"is {header_length}, must be 45")
    props = r.uint(2, "IIR.image_properties")
    horizontal, vertical, scan = props & 0x3, (props >> 2) & 0x3, (props >> 4) & 0x7
    occlusion, filling, boundary = (props >> 7) & 1, (props >> 8) & 1, (props >> 9) & 1
    _need(horizontal <= 2, "IIR.image_properties.horizontal_orientation", f"{horizontal} is not 0..2")
    _need(vertical <= 2, "IIR.image_properties.vertical_orientation", f"{vertical} is not 0..2")
    _need(scan <= 4, "IIR.image_properties.scan_type", f"{scan} is not 0..4")
    _need(props >> 10 == 0, "IIR.image_properties.reserved", f"bits 10-15 set in {props:#06x}")
    diameter = r.uint(2, "IIR.iris_diameter")
    fmt = r.uint(2, "IIR.image_format")
    _need(fmt in _IIR_FORMATS, "IIR.image_format", f"{fmt:#06x} is not a defined image format")
    width, height = r.uint(2, "IIR.width"), r.uint(2, "IIR.height")
    _need(width > 0 and height > 0, "IIR.width", f"{width}x{height} image")
    depth = r.uint(1, "IIR.intensity_depth")
    transformation = r.uint(1, "IIR.image_transformation")
    _need(transformation in (0, 1), "IIR.image_transformation", f"{transformation} is not 0 or 1")
    duid = r.take(16, "IIR.device_unique_id")
    _need(
        duid[:1] in (b"D", b"M", b"P") or duid in (bytes(16), b"0" * 16),
        "IIR.device_unique_id",
        f"{duid!r} neither starts with D, M or P nor is all zeros",
    )
    codec, components = _IIR_FORMATS[fmt]
    subtypes: list[IrisSubtype] = []
    eyes: set[int] = set()
    for s in range(nsub):
        f = f"IIR.subtype[{s}]"
        eye = r.uint(1, f"{f}.eye_position")
        _need(eye <= 2, f"{f}.eye_position", f"{eye} is not 0 (undefined), 1 (right) or 2 (left)")
        _need(eye not in eyes, f"{f}.eye_position", f"eye {eye} already has a subtype")
        eyes.add(eye)
        nimg = r.uint(2, f"{f}.num_images")
        _need(nimg >= 1, f"{f}.num_images", "a subtype holds at least one image")
        images: list[IrisImage] = []
        numbers: set[int] = set()
        for k in range(nimg):
            g = f"{f}.image[{k}]"
            number = r.uint(2, f"{g}.image_number")
            _need(1 <= number <= nimg, f"{g}.image_number", f"{number} is outside 1..{nimg}")
            _need(number not in numbers, f"{g}.image_number", f"{number} repeats")
            numbers.add(number)
            quality = r.uint(1, f"{g}.quality")
            _need(quality <= 100 or quality == 254, f"{g}.quality", f"{quality} is neither 0..100 nor 254")
            angle, uncertainty = r.uint(2, f"{g}.rotation_angle"), r.uint(2, f"{g}.rotation_uncertainty")
            length = r.uint(4, f"{g}.image_length")
            _need(length > 0, f"{g}.image_length", "no image data")
            _need(length <= r.left, f"{g}.image_length", f"{length} overruns the record ({r.left} left)")
            image = r.take(length, f"{g}.image")
            field = f"{g}.image"
            if codec == "raw":
                info = _raw_info(image, width, height, depth, components, False, field)
            else:
                info = (inspect_jpeg2000 if codec == "jpeg2000" else inspect_jpeg)(image, field)
                _need(info.codec == codec, field, f"{info.codec} data, image format {fmt} says {codec}")
                _check_size(info, width, height, field)
                _need(
                    info.components == components,
                    field,
                    f"{info.components} components, image format {fmt} implies {components}",
                )
                if depth:
                    _need(info.bit_depth == depth, field, f"{info.bit_depth} bits, header says {depth}")
            images.append(IrisImage(number, quality, angle, uncertainty, length, image, info))
        subtypes.append(IrisSubtype(eye, tuple(images)))
    _need(r.left == 0, "IIR.record_length", f"{r.left} bytes follow the last of {nsub} subtypes")
    return IrisRecord(
        record_length, device, nsub, header_length, props, horizontal, vertical, scan, occlusion, filling,
        boundary, diameter, fmt, width, height, depth, transformation, duid, tuple(subtypes),
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# ISO/IEC 19794-7:2007 signature/sign time series record (full format)

SDI_CHANNELS: tuple[str, ...] = (
    "X",
    "Y",
    "Z",
    "VX",
    "VY",
    "AX",
    "AY",
    "T",
    "DT",
    "F",
    "S",
    "TX",
    "TY",
    "AZ",
    "EL",
    "R",
)
SDI_SIGNED = frozenset({"X", "Y", "VX", "VY", "AX", "AY", "TX", "TY"})
SignedEncoding = Literal["twos_complement", "offset_binary"]


@dataclass(frozen=True)
class ScalingValue:
    """2 bytes: a 5-bit two's-complement exponent and an 11-bit fraction; value = 2**e * (1 + f/2048)."""

    exponent: int
    fraction: int

    @property
    def value(self) -> float:
        return float(2.0**self.exponent * (1 + self.fraction / 2048))


@dataclass(frozen=True)
class ChannelDescription:
    """One included channel's description: its preamble byte and the optional fields it announces."""

    channel: str
    preamble: int
    scaling: ScalingValue | None
    minimum: int | None
    maximum: int | None
    mean: int | None
    std: int | None
    is_constant: bool
    linear_component_removed: bool


@dataclass(frozen=True)
class SignatureRecord:
    """A 19794-7:2007 full-format record: included channels, their descriptions and the sample points."""

    channel_inclusion: int
    channels: tuple[str, ...]
    descriptions: tuple[ChannelDescription, ...]
    body_flags: int
    sample_count: int
    samples: tuple[tuple[int, ...], ...]  # decoded values, one tuple per point, in ``channels`` order
    extended_data: bytes | None
    signed_encoding: SignedEncoding


def _signed16(raw: int, encoding: SignedEncoding) -> int:
    if encoding == "offset_binary":
        return raw - 0x8000
    return raw - 0x10000 if raw & 0x8000 else raw


def validate_sdi(data: bytes, signed_encoding: SignedEncoding = "twos_complement") -> SignatureRecord:
    """Parse and check an ISO/IEC 19794-7:2007 full-format record; raise NonConformance on any fault.

    ``signed_encoding`` says how signed 16-bit values are decoded (see the module docstring, 7c): the
    default, two's complement, is X.692's; ``"offset_binary"`` (value + 32768) is the brief's.
    """
    if signed_encoding not in ("twos_complement", "offset_binary"):
        raise ValueError(f"signed_encoding {signed_encoding!r}")
    r = _Reader(data)
    _magic(r, b"SDI\x00", b" 10\x00", "SDI")
    inclusion = r.uint(2, "SDI.channel_inclusion")
    channels = tuple(c for i, c in enumerate(SDI_CHANNELS) if inclusion & (0x8000 >> i))
    _need(
        inclusion & 0xC000 == 0xC000,
        "SDI.channel_inclusion",
        f"{inclusion:#06x}: channels X and Y are mandatory",
    )
    descriptions: list[ChannelDescription] = []
    for ch in channels:
        f = f"SDI.channel[{ch}]"
        pre = r.uint(1, f"{f}.preamble")
        _need(pre & 0x01 == 0, f"{f}.preamble", f"{pre:#04x}: the reserved bit must be 0")
        scaling = None
        if pre & 0x80:
            raw = r.uint(2, f"{f}.scaling_value")
            exp = raw >> 11
            scaling = ScalingValue(exp - 32 if exp & 0x10 else exp, raw & 0x7FF)
        values: list[int | None] = []
        for bit, name in ((0x40, "min"), (0x20, "max"), (0x10, "mean"), (0x08, "std")):
            if not pre & bit:
                values.append(None)
                continue
            raw = r.uint(2, f"{f}.{name}")
            values.append(_signed16(raw, signed_encoding) if ch in SDI_SIGNED and name != "std" else raw)
        lo, hi, mean, std = values
        if lo is not None and hi is not None:
            _need(lo <= hi, f"{f}.min", f"minimum {lo} exceeds maximum {hi}")
            if mean is not None:
                _need(lo <= mean <= hi, f"{f}.mean", f"mean {mean} lies outside {lo}..{hi}")
        descriptions.append(
            ChannelDescription(ch, pre, scaling, lo, hi, mean, std, bool(pre & 4), bool(pre & 2))
        )
    flags = r.uint(1, "SDI.body.optionality")
    _need(
        flags & 0x7F == 0, "SDI.body.optionality", f"{flags:#04x}: only the extended-data bit (0x80) is used"
    )
    count = r.uint(3, "SDI.body.sample_count")
    widths = [1 if ch == "S" else 2 for ch in channels]
    point_size = sum(widths)
    _need(
        count * point_size <= r.left,
        "SDI.body.sample_count",
        f"{count} points of {point_size} bytes overrun the record ({r.left} bytes left)",
    )
    samples: list[tuple[int, ...]] = []
    for n in range(count):
        point: list[int] = []
        for ch, width, desc in zip(channels, widths, descriptions, strict=True):
            raw = r.uint(width, f"SDI.sample[{n}].{ch}")
            value = _signed16(raw, signed_encoding) if ch in SDI_SIGNED else raw
            if ch == "S":
                _need(value in (0, 1), f"SDI.sample[{n}].S", f"tip switch {value} is neither 0 nor 1")
            if desc.minimum is not None:
                _need(
                    value >= desc.minimum,
                    f"SDI.sample[{n}].{ch}",
                    f"{value} < channel minimum {desc.minimum}",
                )
            if desc.maximum is not None:
                _need(
                    value <= desc.maximum,
                    f"SDI.sample[{n}].{ch}",
                    f"{value} > channel maximum {desc.maximum}",
                )
            point.append(value)
        samples.append(tuple(point))
    extended = None
    if flags & 0x80:
        length = r.uint(2, "SDI.body.extended_data_length")
        _need(length <= r.left, "SDI.body.extended_data_length", f"{length} overruns ({r.left} bytes left)")
        extended = r.take(length, "SDI.body.extended_data")
    _need(r.left == 0, "SDI.body", f"{r.left} trailing bytes after the body")
    return SignatureRecord(
        inclusion, channels, tuple(descriptions), flags, count, tuple(samples), extended, signed_encoding
    )


def validate_any(data: bytes) -> FingerRecord | FaceRecord | IrisRecord | SignatureRecord:
    """Dispatch on the 4-byte format identifier; an unknown one is a NonConformance."""
    magic = bytes(data[:4])
    if magic == b"FIR\x00":
        return validate_fir(data)
    if magic == b"FAC\x00":
        return validate_fac(data)
    if magic == b"IIR\x00":
        return validate_iir(data)
    if magic == b"SDI\x00":
        return validate_sdi(data)
    raise NonConformance("format_identifier", f"{magic!r} is not FIR, FAC, IIR or SDI")
