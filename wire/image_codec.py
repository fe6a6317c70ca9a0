"""Image codecs of the enrollment record: which one a blob is, its size, and the compression.

The record carries each image in a codec its interchange standard allows (docs/protocol.md,
"Record version 2"): fingerprints and irises as JPEG 2000 (the JP2 file format, through
Pillow's OpenJPEG), the face as JPEG. ``image_info`` reads a blob's codec and size from its
headers alone (nothing is decoded: the kiosk and the centre check every blob this way);
``compress_*`` make the blobs the kiosk sends, at the settings ``bench/record_size.py``
measured against each modality's quality measure (docs/benchmarks.md, "Record size").

Why JPEG 2000 through Pillow: OpenJPEG is bundled in Pillow's wheels for aarch64 and x86-64
(nothing new to install on a kiosk), it is maintained, and ISO/IEC 19794-4 and -6 both name
JPEG 2000. WSQ, the other codec 19794-4 names for 500 ppi fingers, has no maintained Python
codec with aarch64 wheels.

Error tree::

    ValueError
     +-- BadImage
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from enum import StrEnum

from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
JPEG_SOI = b"\xff\xd8\xff"
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})

# The kiosk's compression settings, chosen by bench/record_size.py (docs/benchmarks.md, "Record size"):
# each keeps its modality's quality measure within its margin over 100 synthetic residents.
FINGER_J2K_RATIO = 15  # 500 ppi fingers: NIST's and ISO/IEC 19794-4's ceiling for lossy compression
IRIS_J2K_RATIO = 60
FACE_JPEG_QUALITY = 70
MAX_PIXELS = 10_000 * 10_000


class Codec(StrEnum):
    PNG = "png"
    JPEG = "jpeg"
    JPEG2000 = "jpeg2000"


class BadImage(ValueError):
    """A blob is not an image of the codec and shape its place needs."""


@dataclass(frozen=True, slots=True)
class ImageInfo:
    codec: Codec
    width: int
    height: int
    components: int  # 1 grayscale, 3 colour
    bits: int  # per component


def image_info(blob: bytes) -> ImageInfo:
    """The codec and size of a PNG, JPEG or JP2 blob, from its headers.

    :raises BadImage: none of the three, or its headers are cut short or inconsistent
    """
    if blob.startswith(PNG_SIGNATURE):
        return _png_info(blob)
    if blob.startswith(JPEG_SOI):
        return _jpeg_info(blob)
    if blob.startswith(JP2_SIGNATURE):
        return _jp2_info(blob)
    raise BadImage("not a PNG, JPEG or JPEG 2000 (JP2) image")


def _png_info(blob: bytes) -> ImageInfo:
    if len(blob) < 33 or blob[8:16] != b"\x00\x00\x00\x0dIHDR":
        raise BadImage("PNG without its IHDR chunk")
    width, height, depth, colour = struct.unpack_from(">IIBB", blob, 16)
    components = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(colour)  # a palette (3) is colour, not grayscale
    if components is None:
        raise BadImage(f"PNG of unknown colour type {colour}")
    return ImageInfo(Codec.PNG, width, height, components, depth)


def _jpeg_info(blob: bytes) -> ImageInfo:
    pos = 2
    while pos + 4 <= len(blob):
        if blob[pos] != 0xFF:
            break
        marker = blob[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (seg_len,) = struct.unpack_from(">H", blob, pos + 2)
        if marker in _JPEG_SOF:
            if pos + 10 > len(blob):
                break
            bits, height, width, components = struct.unpack_from(">BHHB", blob, pos + 4)
            return ImageInfo(Codec.JPEG, width, height, components, bits)
        if marker == 0xDA or seg_len < 2:
            break
        pos += 2 + seg_len
    raise BadImage("JPEG without a readable frame header (SOF)")


def _jp2_info(blob: bytes) -> ImageInfo:
    """The image header box (ihdr) inside the JP2 header box (jp2h) of ISO/IEC 15444-1 annex I."""
    header = _box(blob, b"jp2h", 0, len(blob))
    if header is None:
        raise BadImage("JP2 without its header box (jp2h)")
    ihdr = _box(blob, b"ihdr", *header)
    if ihdr is None or ihdr[1] - ihdr[0] < 14:
        raise BadImage("JP2 without its image header box (ihdr)")
    height, width, components, bpc = struct.unpack_from(">IIHB", blob, ihdr[0])
    return ImageInfo(Codec.JPEG2000, width, height, components, (bpc & 0x7F) + 1)


def _box(blob: bytes, kind: bytes, start: int, end: int) -> tuple[int, int] | None:
    """The (content start, content end) of the first box of ``kind`` between start and end."""
    pos = start
    while pos + 8 <= end:
        length, box = struct.unpack_from(">I4s", blob, pos)
        head = 8
        if length == 1:
            if pos + 16 > end:
                return None
            (length,) = struct.unpack_from(">Q", blob, pos + 8)
            head = 16
        elif length == 0:
            length = end - pos
        if length < head or pos + length > end:
            return None
        if box == kind:
            return pos + head, pos + length
        pos += length
    return None


# --- compression (the kiosk's capture session, and the centre's export of older records) ----------


def gray_jp2(pixels: bytes, width: int, height: int, *, ratio: float | None) -> bytes:
    """8-bit grayscale pixels as JP2: lossy at ``ratio``:1 (irreversible 9/7 wavelet) or, with
    ``ratio`` None, lossless (reversible 5/3)."""
    image = Image.frombytes("L", (width, height), pixels)
    buf = io.BytesIO()
    if ratio is None:
        image.save(buf, format="JPEG2000", irreversible=False)
    else:
        image.save(buf, format="JPEG2000", irreversible=True, quality_mode="rates", quality_layers=[ratio])
    return buf.getvalue()


def as_gray_jp2(blob: bytes, *, ratio: float | None) -> bytes:
    """A grayscale image as JP2 (``gray_jp2``'s ``ratio``); one already JPEG 2000 is kept as it is.

    :raises BadImage: it does not decode
    """
    if image_info(blob).codec is Codec.JPEG2000:
        return blob
    pixels, width, height = gray_pixels(blob)
    return gray_jp2(pixels, width, height, ratio=ratio)


def face_jpeg(blob: bytes, *, quality: int = FACE_JPEG_QUALITY) -> bytes:
    """The face re-encoded as a baseline JPEG at ``quality`` (kept as it is when that is no smaller)."""
    with _open(blob) as image:
        rgb = image.convert("RGB") if image.mode not in ("L", "RGB") else image.copy()
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=quality, optimize=True)
    out = buf.getvalue()
    return out if len(out) < len(blob) or not blob.startswith(JPEG_SOI) else blob


def gray_pixels(blob: bytes) -> tuple[bytes, int, int]:
    """Decode a PNG, JPEG or JP2 to 8-bit grayscale pixels with their size.

    :raises BadImage: it does not decode
    """
    with _open(blob) as image:
        gray = image.convert("L")
        return gray.tobytes(), gray.width, gray.height


def _open(blob: bytes) -> Image.Image:
    info = image_info(blob)
    if info.width * info.height > MAX_PIXELS:
        raise BadImage(f"{info.width}x{info.height} is more pixels than any capture device makes")
    try:
        image = Image.open(io.BytesIO(blob))
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadImage(f"the {info.codec.value} image does not decode: {exc}") from None
    return image
