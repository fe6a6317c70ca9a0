"""Checks of a captured JPEG with Pillow: it decodes completely, its size, exposure and sharpness.

The quality score is in 0..1: exposure (mean brightness inside a band), clipping (share of
pixels crushed to black or blown to white) and sharpness (edge energy relative to brightness) multiplied together.
A face too dark, too bright or blurred scores low; the driver reports it, the agent decides.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageFilter, ImageStat

from drivers.errors import DeviceProtocolError

MIN_SIZE = (240, 240)
ANALYSIS_WIDTH = 320  # analyse a reduced copy: fast, and the score does not depend on the sensor's size
GOOD_MEAN = (70.0, 190.0)  # mean brightness with full exposure score
BAD_MEAN = (15.0, 240.0)  # ... falling linearly to 0 at these
CLIP_LOW, CLIP_HIGH = 5, 250
CLIP_ALLOWED = 0.02  # share of clipped pixels before it costs anything
CLIP_FATAL = 0.30  # ... and where the clipping score reaches 0
SHARP_REF = 0.06  # edge response relative to mean brightness of a sharp face at ANALYSIS_WIDTH
DARK_FLOOR = 20.0  # brightness below which edges are not normalised further (noise, not detail)
JPEG_SOI, JPEG_EOI = b"\xff\xd8", b"\xff\xd9"


@dataclass(frozen=True, slots=True)
class ImageReport:
    width: int
    height: int
    mean: float
    clipped: float
    sharpness: float
    quality: float
    detail: str


def assess_jpeg(jpeg: bytes, *, device: str = "camera", port: str = "") -> ImageReport:
    """Decode and score a JPEG.

    :raises DeviceProtocolError: not a complete, decodable JPEG, or smaller than MIN_SIZE
    """
    if not jpeg.startswith(JPEG_SOI):
        raise DeviceProtocolError(
            f"camera sent {len(jpeg)} bytes that are not a JPEG (no start marker)", device=device, port=port
        )
    if not jpeg.rstrip(b"\x00").endswith(JPEG_EOI):
        raise DeviceProtocolError(
            f"camera sent a truncated JPEG ({len(jpeg)} bytes, no end marker)", device=device, port=port
        )
    try:
        with Image.open(io.BytesIO(jpeg)) as img:
            img.load()
            if img.format != "JPEG":
                raise DeviceProtocolError(
                    f"camera sent a {img.format} image, not JPEG", device=device, port=port
                )
            width, height = img.size
            gray = img.convert("L")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, DeviceProtocolError):
            raise
        raise DeviceProtocolError(f"camera JPEG does not decode: {exc}", device=device, port=port) from exc
    if width < MIN_SIZE[0] or height < MIN_SIZE[1]:
        raise DeviceProtocolError(f"camera image {width}x{height} is too small", device=device, port=port)
    return _score(gray, width, height)


def _score(gray: Image.Image, width: int, height: int) -> ImageReport:
    small = gray.resize(
        (ANALYSIS_WIDTH, max(1, round(height * ANALYSIS_WIDTH / width))), Image.Resampling.BOX
    )
    mean = ImageStat.Stat(small).mean[0]
    hist = small.histogram()
    clipped = (sum(hist[: CLIP_LOW + 1]) + sum(hist[CLIP_HIGH:])) / (small.width * small.height)
    edges = ImageStat.Stat(small.filter(ImageFilter.FIND_EDGES)).mean[0]
    sharpness = min(
        1.0, edges / max(mean, DARK_FLOOR) / SHARP_REF
    )  # relative, so a dim face is not "blurred"

    if mean < GOOD_MEAN[0]:
        exposure = max(0.0, (mean - BAD_MEAN[0]) / (GOOD_MEAN[0] - BAD_MEAN[0]))
    elif mean > GOOD_MEAN[1]:
        exposure = max(0.0, (BAD_MEAN[1] - mean) / (BAD_MEAN[1] - GOOD_MEAN[1]))
    else:
        exposure = 1.0
    clipping = 1.0 - min(1.0, max(0.0, clipped - CLIP_ALLOWED) / (CLIP_FATAL - CLIP_ALLOWED))
    quality = round(exposure * clipping * sharpness, 3)

    problems = []
    if mean < GOOD_MEAN[0]:
        problems.append("too dark")
    elif mean > GOOD_MEAN[1]:
        problems.append("too bright")
    if clipping < 1.0:
        problems.append("clipped")
    if sharpness < 0.5:
        problems.append("blurred")
    detail = (
        f"{width}x{height}, mean brightness {mean:.0f}, clipped {clipped:.1%}, sharpness {sharpness:.2f}, "
        f"quality {quality:.2f}" + (f" ({', '.join(problems)})" if problems else "")
    )
    return ImageReport(width, height, mean, clipped, sharpness, quality, detail)
