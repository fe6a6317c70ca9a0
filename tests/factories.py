"""Builders of enrollment records for tests: from a synthetic resident, or tiny ones."""

from __future__ import annotations

import datetime as dt
import random

from PIL import Image

from agent.synthetic import jpeg_of, record_from_resident, render_signature
from hw_sim.residents import (
    encode_png_gray,
)
from wire.image_codec import gray_jp2
from wire.nik import Sex
from wire.record import (
    Demographics,
    EnrollmentRecord,
    FaceImage,
    FingerException,
    FingerPosition,
    Fingerprint,
    IrisImage,
    Signature,
)

__all__ = ["jp2_gray", "jpeg_of", "record_from_resident", "render_signature", "small_record"]


def png_gray(width: int, height: int, seed: int = 0) -> bytes:
    """A real 8-bit grayscale PNG of noise (its size grows with width x height)."""
    raw = random.Random(seed).randbytes(width * height)
    return encode_png_gray(raw, width, height)


def jp2_gray(width: int, height: int, seed: int = 0) -> bytes:
    """A real 8-bit grayscale JPEG 2000 (JP2, lossless) of noise."""
    return gray_jp2(random.Random(seed).randbytes(width * height), width, height, ratio=None)


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
    """A valid record with tiny images (a packet of a couple of kilobytes): PNG fingers (ISO/IEC
    19794-4 has a code for PNG), JPEG 2000 irises, a JPEG face."""
    values: dict[str, object] = {
        "nik": SMALL_NIK,
        "demographics": small_demographics(),
        "face": FaceImage(jpeg_of(Image.new("RGB", (8, 8), (200, 150, 120)), 50), 8, 8, 90),
        "fingerprints": small_fingers(),
        "right_iris": IrisImage(jp2_gray(6, 4, 11), 6, 4, 80),
        "left_iris": IrisImage(jp2_gray(6, 4, 12), 6, 4, 81),
        "signature": Signature([[(1, 2, 300), (3, 4, 500)], [(9, 9, 1)]], png_gray(5, 3, 13), 5, 3),
    }
    values.update(overrides)
    return EnrollmentRecord(**values)  # type: ignore[arg-type]
