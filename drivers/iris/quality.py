"""A host-side quality score of an iris image (8-bit grayscale), in the spirit of ISO/IEC 29794-6.

The iris camera scores its own captures; this scores an image the host holds, so that a
change to it (the record's JPEG 2000 compression, bench/record_size.py) can be measured with
the same yardstick before and after. The score is in 0..1, the product of three terms:

- **focus** (29794-6 "sharpness"): the RMS of a Laplacian over the iris's bounding box,
  measured on a 2x box-downscaled copy, so that pixel noise (which a 2x2 mean divides by two)
  does not count as detail; mapped as x^2 / (x^2 + c^2), the standard's form, with c
  (``FOCUS_C``) between a sharp and a blurred image of the simulator. The form saturates: a
  sharp image's score moves little when its Laplacian energy falls by a few per cent;
- **contrast**: iris-pupil contrast, a Weber ratio (iris - pupil) / (iris + pupil), and
  iris-sclera contrast, (sclera - iris) / (sclera + iris - 2 pupil), each divided by the value
  where it stops limiting the score (``IPC_GOOD``, ``ISC_GOOD``) and capped at 1. The first
  falls when the image's contrast is squeezed; the second is what segments the iris;
- **margin** (usable iris area): the share of the iris's bounding box inside the frame.

The pupil is the darkest blob (pixels below a threshold between the darkest percentile and
the median, spread along each axis as a disc's are), its centre and radius from that blob's
centroid and area; the iris boundary is
the strongest dark-to-bright step of the mean gray level on rings around the pupil, in the
lateral sectors (eyelids cover the top and bottom of a real eye). An image without a pupil
(flat, or no dark blob of a plausible size) scores 0. This is no match for a real iris SDK's
segmentation (no eyelid, eyelash or reflection detection): it is a yardstick for change to
one image, calibrated on the simulator's images (a sharp one scores about 0.93, one blurred
as the simulator blurs a poor capture below 0.1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from PIL import Image, ImageFilter, ImageStat

ANALYSIS_SCALE = 2  # box-downscale before anything: pixel noise averages out, iris texture does not
# Laplacian RMS (gray levels, downscaled copy, over the iris) scoring 0.5: the geometric mean of the
# simulator's sharp irises (~23) and its blurred ones (~1.6), halfway between them on a log scale
FOCUS_C = 6.0
IPC_GOOD = 0.5  # iris-pupil Weber contrast from which the term is 1 (the simulator's sharp eyes: ~0.75)
ISC_GOOD = 0.1  # iris-sclera contrast from which the term is 1 (the simulator's: ~0.25)
MIN_RANGE = 12  # gray levels between the darkest percentile and the median: less is a flat image
PUPIL_THRESHOLD = 0.3  # pupil pixels: darker than this fraction of the way from darkest to median
PUPIL_AREA = (0.002, 0.25)  # plausible pupil area, as a share of the image
ROUND = (0.3, 0.8)  # a disc's pixels spread r/2 along each axis: the dark blob's spread, over its radius
RING_ANGLES = 24  # samples per sector and ring
_LAPLACIAN = ImageFilter.Kernel((3, 3), [0, -1, 0, -1, 4, -1, 0, -1, 0], scale=1, offset=128)
_LATERAL = ((-math.pi / 4, math.pi / 4), (3 * math.pi / 4, 5 * math.pi / 4))  # right, left of the pupil


@dataclass(frozen=True, slots=True)
class IrisReport:
    quality: float
    focus: float
    iris_pupil_contrast: float
    iris_sclera_contrast: float
    margin: float
    pupil: tuple[float, float, float]  # centre x, y and radius, in the image's pixels
    iris_radius: float
    detail: str


def iris_quality(pixels: bytes, width: int, height: int) -> float:
    """0..1: focus x contrast x margin of an 8-bit grayscale iris image (see the module's docstring)."""
    return assess_iris(pixels, width, height).quality


def assess_iris(pixels: bytes, width: int, height: int) -> IrisReport:
    """The score with its terms and the segmentation it rests on.

    :raises ValueError: ``pixels`` is not ``width`` x ``height`` bytes
    """
    if width < 8 or height < 8 or len(pixels) != width * height:
        raise ValueError(f"{len(pixels)} bytes are not a {width}x{height} 8-bit grayscale image")
    small = Image.frombytes("L", (width, height), pixels).reduce(ANALYSIS_SCALE)
    w, h = small.size
    hist = small.histogram()
    darkest, median = _percentile(hist, 0.005), _percentile(hist, 0.5)
    if median - darkest < MIN_RANGE:
        return _none(f"flat image (darkest {darkest}, median {median})")
    threshold = darkest + PUPIL_THRESHOLD * (median - darkest)
    mask = small.point([255 if v <= threshold else 0 for v in range(256)])
    cols = _profile(mask.resize((w, 1), Image.Resampling.BOX))
    rows = _profile(mask.resize((1, h), Image.Resampling.BOX))
    area = sum(cols) * h / 255
    if not PUPIL_AREA[0] <= area / (w * h) <= PUPIL_AREA[1]:
        return _none(f"no pupil: a dark blob of {area / (w * h):.1%} of the image")
    cx = sum(i * v for i, v in enumerate(cols)) / sum(cols)
    cy = sum(i * v for i, v in enumerate(rows)) / sum(rows)
    rp = math.sqrt(area / math.pi)
    sx = math.sqrt(sum((i - cx) ** 2 * v for i, v in enumerate(cols)) / sum(cols))
    sy = math.sqrt(sum((i - cy) ** 2 * v for i, v in enumerate(rows)) / sum(rows))
    if not (ROUND[0] * rp <= sx <= ROUND[1] * rp and ROUND[0] * rp <= sy <= ROUND[1] * rp):
        return _none(f"no pupil: the dark pixels spread {sx:.0f} x {sy:.0f}, not a disc of radius {rp:.0f}")
    data = small.tobytes()

    def ring(r: float, sectors: tuple[tuple[float, float], ...] = _LATERAL) -> float | None:
        values = []
        for a0, a1 in sectors:
            for k in range(RING_ANGLES):
                a = a0 + (a1 - a0) * (k + 0.5) / RING_ANGLES
                x, y = round(cx + r * math.cos(a)), round(cy + r * math.sin(a))
                if 0 <= x < w and 0 <= y < h:
                    values.append(data[y * w + x])
        return sum(values) / len(values) if values else None

    r_max = int(min(max(cx, w - 1 - cx), max(w, h)))
    profile = {r: m for r in range(int(1.4 * rp), r_max) if (m := ring(r)) is not None}
    steps = {r: profile[r + 3] - profile[r - 3] for r in profile if r - 3 in profile and r + 3 in profile}
    if not steps:
        return _none("no iris boundary: the pupil fills the frame")
    ri = float(max(steps, key=lambda r: steps[r]))
    everywhere = ((0.0, 2 * math.pi),)
    pupil = _mean(ring(rp * f, everywhere) for f in (0.0, 0.2, 0.4, 0.6))
    iris = _mean(ring(rp + (ri - rp) * f) for f in (0.25, 0.4, 0.55, 0.7))
    sclera = _mean(ring(ri * f) for f in (1.15, 1.25, 1.35))
    if pupil is None or iris is None:
        return _none("segmentation failed")
    ipc = max(0.0, iris - pupil) / max(1.0, iris + pupil)
    isc = 0.0 if sclera is None else max(0.0, sclera - iris) / max(1.0, sclera + iris - 2 * pupil)
    contrast = min(1.0, ipc / IPC_GOOD) * min(1.0, isc / ISC_GOOD)

    box = (cx - ri, cy - ri, cx + ri, cy + ri)
    inside = (min(w, box[2]) - max(0.0, box[0])) * (min(h, box[3]) - max(0.0, box[1]))
    margin = max(0.0, min(1.0, inside / (2 * ri) ** 2))
    crop = (max(1, int(box[0])), max(1, int(box[1])), min(w - 1, int(box[2])), min(h - 1, int(box[3])))
    if crop[2] - crop[0] < 4 or crop[3] - crop[1] < 4:
        return _none("the iris is outside the frame")
    x = ImageStat.Stat(small.filter(_LAPLACIAN).crop(crop)).stddev[0]
    focus = x * x / (x * x + FOCUS_C * FOCUS_C)

    quality = round(focus * contrast * margin, 3)
    s = ANALYSIS_SCALE
    problems = [p for p, bad in (("blurred", focus < 0.5), ("low contrast", contrast < 0.5)) if bad]
    detail = (
        f"pupil r={rp * s:.0f} at ({cx * s:.0f}, {cy * s:.0f}), iris r={ri * s:.0f}; focus {focus:.2f} "
        f"(Laplacian RMS {x:.1f}), iris-pupil contrast {ipc:.2f}, iris-sclera {isc:.2f}, margin {margin:.2f}, "
        f"quality {quality:.2f}" + (f" ({', '.join(problems)})" if problems else "")
    )
    return IrisReport(quality, focus, ipc, isc, margin, (cx * s, cy * s, rp * s), ri * s, detail)


def _percentile(hist: list[int], share: float) -> int:
    target, seen = share * sum(hist), 0
    for value, count in enumerate(hist):
        seen += count
        if seen >= target and count:
            return value
    return 255


def _profile(line: Image.Image) -> list[int]:
    return list(line.tobytes())


def _mean(values: Iterable[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return sum(found) / len(found) if found else None


def _none(why: str) -> IrisReport:
    return IrisReport(0.0, 0.0, 0.0, 0.0, 0.0, (0.0, 0.0, 0.0), 0.0, f"quality 0.00 ({why})")


__all__ = ["IrisReport", "assess_iris", "iris_quality"]
