"""Synthetic enrollment records built straight from the simulator's resident generator.

For load tests and benchmarks (`enroll` with ``"direct": true`` in the local API): the
record a kiosk would build for a synthetic resident, without driving the peripherals.
Rendering biometrics costs a few hundred milliseconds, so ``SyntheticRecords`` renders
a small pool once and gives every seed its own NIK and demographics on top of one of
the pooled biometric sets. Imports the simulator lazily: a production kiosk never
loads it.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw

from agent.compression import compress_record
from wire.nik import Sex
from wire.record import (
    Demographics,
    EnrollmentRecord,
    FaceImage,
    FingerException,
    FingerPosition,
    Fingerprint,
    IrisImage,
    Point,
    Signature,
)

if TYPE_CHECKING:
    from hw_sim.residents import Resident

FACE_JPEG_QUALITY = 85
SIGNATURE_SCALE = 20  # pad units per pixel of the rendered signature
POOL_SIZE = 16
_NIBBLE_TO_8BIT = bytes((v >> 4) * 17 for v in range(256))  # 4-bit sample scaled to 0..255


def demographics_of(resident: Resident) -> Demographics:
    return Demographics(
        name=resident.name,
        sex=Sex(resident.sex),
        birth_date=resident.birth_date,
        birth_place=resident.birth_place,
        address=resident.address,
        religion=resident.religion,
    )


def record_from_resident(
    resident: Resident, *, finger_bits: int = 4, compressed: bool = True
) -> EnrollmentRecord:
    """The record the kiosk would build for this synthetic resident.

    ``finger_bits=4`` keeps 16 gray levels, as the R30x module's UpImage delivers them;
    ``finger_bits=8`` keeps the simulator's full 8-bit texture. ``compressed`` (the kiosk's
    way since record version 2) sends fingers and irises as JPEG 2000 and the face as a smaller
    JPEG (agent.compression); without it the images stay as record version 1 sent them,
    lossless PNGs and the camera's JPEG (about 250 KB of biometrics with 4-bit fingers).
    """
    from hw_sim.residents import FINGER_H, FINGER_W, IRIS_H, IRIS_W, SIG_MAX_X, SIG_MAX_Y, encode_png_gray

    face = resident.face_rgb()
    fingers: dict[int, Fingerprint] = {}
    for pos in FingerPosition:
        raw = resident.finger_gray(pos)
        if raw is not None and finger_bits == 4:
            raw = raw.translate(_NIBBLE_TO_8BIT)
        if raw is None:
            fingers[pos] = Fingerprint(pos, None, 0, 0, 0, attempts=0, exception=FingerException.MISSING)
        else:
            png = encode_png_gray(raw, FINGER_W, FINGER_H)
            fingers[pos] = Fingerprint(pos, png, FINGER_W, FINGER_H, quality=80, attempts=1)
    strokes = resident.signature_strokes()
    sig_w, sig_h = SIG_MAX_X // SIGNATURE_SCALE, SIG_MAX_Y // SIGNATURE_SCALE
    record = EnrollmentRecord(
        nik=resident.nik,
        demographics=demographics_of(resident),
        face=FaceImage(jpeg_of(face), face.width, face.height, quality=90),
        fingerprints=fingers,
        right_iris=IrisImage(encode_png_gray(resident.iris_gray(0), IRIS_W, IRIS_H), IRIS_W, IRIS_H, 85),
        left_iris=IrisImage(encode_png_gray(resident.iris_gray(1), IRIS_W, IRIS_H), IRIS_W, IRIS_H, 85),
        signature=Signature(strokes, render_signature(strokes, sig_w, sig_h), sig_w, sig_h),
    )
    return compress_record(record) if compressed else record


def jpeg_of(image: Image.Image, quality: int = FACE_JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def render_signature(strokes: Sequence[Sequence[Point]], width: int, height: int) -> bytes:
    img = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(img)
    for stroke in strokes:
        pts = [(x / SIGNATURE_SCALE, y / SIGNATURE_SCALE) for x, y, _ in stroke]
        if len(pts) > 1:
            draw.line(pts, fill=0, width=2)
        else:
            draw.point(pts, fill=0)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class SyntheticRecords:
    """Records for seeds: each seed's own identity over one of ``POOL_SIZE`` rendered biometric sets."""

    def __init__(self, pool_size: int = POOL_SIZE) -> None:
        self.pool_size = pool_size
        self._pool: dict[int, EnrollmentRecord] = {}

    def record(self, seed: int) -> EnrollmentRecord:
        from hw_sim.residents import synthetic_resident

        slot = seed % self.pool_size
        if slot not in self._pool:
            self._pool[slot] = record_from_resident(synthetic_resident(slot + 1_000_000))
        resident = synthetic_resident(seed)
        return dataclasses.replace(self._pool[slot], nik=resident.nik, demographics=demographics_of(resident))
