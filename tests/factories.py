"""Builders of enrollment records for tests: from a synthetic resident, or tiny ones."""

from __future__ import annotations

import datetime as dt
import io
import random
from collections.abc import Sequence

from PIL import Image, ImageDraw

from agent.nik import Sex
from agent.record import (
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
from hw_sim.residents import (
    FINGER_H,
    FINGER_W,
    IRIS_H,
    IRIS_W,
    SIG_MAX_X,
    SIG_MAX_Y,
    Resident,
    encode_png_gray,
)

FACE_JPEG_QUALITY = 85
SIGNATURE_SCALE = 20  # pad units per pixel of the rendered signature
_NIBBLE_TO_8BIT = bytes((v >> 4) * 17 for v in range(256))  # 4-bit sample scaled to 0..255


def record_from_resident(resident: Resident, *, finger_bits: int = 4) -> EnrollmentRecord:
    """The record the kiosk would build for this synthetic resident.

    ``finger_bits=4`` keeps 16 gray levels, as the R30x module's UpImage delivers them
    (about 280 KB of biometrics); ``finger_bits=8`` keeps the simulator's full 8-bit
    texture (about 560 KB).
    """
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
    return EnrollmentRecord(
        nik=resident.nik,
        demographics=Demographics(
            name=resident.name,
            sex=Sex(resident.sex),
            birth_date=resident.birth_date,
            birth_place=resident.birth_place,
            address=resident.address,
            religion=resident.religion,
        ),
        face=FaceImage(jpeg_of(face), face.width, face.height, quality=90),
        fingerprints=fingers,
        right_iris=IrisImage(encode_png_gray(resident.iris_gray(0), IRIS_W, IRIS_H), IRIS_W, IRIS_H, 85),
        left_iris=IrisImage(encode_png_gray(resident.iris_gray(1), IRIS_W, IRIS_H), IRIS_W, IRIS_H, 85),
        signature=Signature(strokes, render_signature(strokes, sig_w, sig_h), sig_w, sig_h),
    )


def jpeg_of(image: Image.Image, quality: int = FACE_JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png_gray(width: int, height: int, seed: int = 0) -> bytes:
    """A real 8-bit grayscale PNG of noise (its size grows with width x height)."""
    raw = random.Random(seed).randbytes(width * height)
    return encode_png_gray(raw, width, height)


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


SMALL_NIK = "3171014501010001"  # a woman born 5 Jan 2001, Jakarta Selatan


def small_demographics(**overrides: object) -> Demographics:
    values: dict[str, object] = {
        "name": "Siti Rahmawati",
        "sex": Sex.FEMALE,
        "birth_date": dt.date(2001, 1, 5),
        "birth_place": "Jakarta",
        "address": "Jl. Merdeka No. 1, RT 001/RW 002",
        "religion": "Islam",
    }
    values.update(overrides)
    return Demographics(**values)  # type: ignore[arg-type]


def small_fingers(missing: int | None = 4, side: int = 4) -> dict[int, Fingerprint]:
    fingers: dict[int, Fingerprint] = {}
    for pos in FingerPosition:
        if pos == missing:
            fingers[pos] = Fingerprint(pos, None, 0, 0, 0, attempts=3, exception=FingerException.UNUSABLE)
        else:
            fingers[pos] = Fingerprint(pos, png_gray(side, side, pos), side, side, quality=70, attempts=1)
    return fingers


def small_record(**overrides: object) -> EnrollmentRecord:
    """A valid record with tiny images (a packet of a couple of kilobytes)."""
    values: dict[str, object] = {
        "nik": SMALL_NIK,
        "demographics": small_demographics(),
        "face": FaceImage(jpeg_of(Image.new("RGB", (8, 8), (200, 150, 120)), 50), 8, 8, 90),
        "fingerprints": small_fingers(),
        "right_iris": IrisImage(png_gray(6, 4, 11), 6, 4, 80),
        "left_iris": IrisImage(png_gray(6, 4, 12), 6, 4, 81),
        "signature": Signature([[(1, 2, 300), (3, 4, 500)], [(9, 9, 1)]], png_gray(5, 3, 13), 5, 3),
    }
    values.update(overrides)
    return EnrollmentRecord(**values)  # type: ignore[arg-type]
