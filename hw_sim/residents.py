"""Synthetic residents, deterministic for a seed, with biometrics of realistic sizes.

A resident has a valid NIK, demographics and the raw biometrics the simulated
devices present: a face (RGB, encoded to JPEG by the camera), ten fingerprints
(256 x 288 8-bit grayscale, one sometimes missing), two irises (640 x 480 8-bit
grayscale) and a signature (pen strokes in the pad's coordinates). The texture
entropy is tuned so that a whole enrollment packs to about 300 KB.

The ``ResidentDesk`` is who stands at the kiosk now: the agent's synthetic enroll
asks the simulator to present resident N, and every device then captures them. A
resident can be told to repeat a finger (``with_repeated_finger``: asked for finger 3,
they place finger 1 again), the operator slip or fraud that enrollment must refuse.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import random
import threading
from dataclasses import dataclass, field, replace

from PIL import Image, ImageDraw, ImageFilter

FINGER_W, FINGER_H = 256, 288
IRIS_W, IRIS_H = 640, 480
FACE_W, FACE_H = 480, 640
SIG_MAX_X, SIG_MAX_Y, SIG_MAX_P = 8000, 6000, 1023

# PPKKCC district codes of first registration (province, regency/city, district).
DISTRICTS = ("320715", "317101", "327301", "350101", "510101", "720801", "730101", "120101")
GIVEN = ("Siti", "Budi", "Dewi", "Agus", "Rina", "Wayan", "Made", "Nur", "Ahmad", "Putri", "Yohanes")
FAMILY = ("Rahmawati", "Santoso", "Lestari", "Hidayat", "Pratama", "Wijaya", "Saputra", "Lamba")
RELIGIONS = ("Islam", "Kristen", "Katolik", "Hindu", "Buddha", "Khonghucu")


@dataclass(frozen=True, slots=True)
class Resident:
    seed: int
    nik: str
    name: str
    sex: str  # "M" or "F"
    birth_date: dt.date
    birth_place: str
    address: str
    religion: str
    missing_finger: int | None  # ISO/IEC 19794-4 finger position 1..10, or None
    repeats: tuple[tuple[int, int], ...] = ()  # (asked position, finger placed instead)

    def with_repeated_finger(self, position: int, placed: int) -> Resident:
        """This resident, placing finger ``placed`` again when asked for finger ``position``."""
        if not (1 <= position <= 10 and 1 <= placed <= 10) or position == placed:
            raise ValueError(f"cannot repeat finger {placed} at position {position}")
        kept = tuple((p, f) for p, f in self.repeats if p != position)
        return replace(self, repeats=(*kept, (position, placed)))

    def placed_finger(self, position: int) -> int:
        """The finger this resident places when asked for finger ``position``."""
        return dict(self.repeats).get(position, position)

    def face_rgb(self) -> Image.Image:
        return _face(self.seed)

    def finger_gray(self, position: int, quality: float = 1.0) -> bytes | None:
        """The finger's 256x288 8-bit image, None when this resident has no such finger."""
        if position == self.missing_finger:
            return None
        return _finger(self.seed, position, quality)

    def iris_gray(self, eye: int, quality: float = 1.0) -> bytes:
        """Eye 0 = right, 1 = left; 640x480 8-bit grayscale."""
        return _iris(self.seed, eye, quality)

    def signature_strokes(self) -> list[list[tuple[int, int, int]]]:
        """Pen strokes as (x, y, pressure) points in the pad's coordinates."""
        return _strokes(self.seed)


@dataclass
class ResidentDesk:
    """Who presents themselves at the kiosk now (thread-safe); devices capture this resident."""

    _seed: int = 1
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _resident: Resident | None = None  # a resident with repeats, instead of the seed's plain one

    def present(self, seed: int) -> Resident:
        with self._lock:
            self._seed, self._resident = seed, None
        return synthetic_resident(seed)

    def present_resident(self, resident: Resident) -> Resident:
        """Present this resident as given (e.g. one told to repeat a finger)."""
        with self._lock:
            self._seed, self._resident = resident.seed, resident
        return resident

    def current(self) -> Resident:
        with self._lock:
            seed, resident = self._seed, self._resident
        return resident if resident is not None else synthetic_resident(seed)


def synthetic_resident(seed: int) -> Resident:
    rnd = random.Random(f"resident-{seed}")
    sex = rnd.choice("MF")
    birth = dt.date(1950, 1, 1) + dt.timedelta(days=rnd.randrange(0, 365 * 55))
    day = birth.day + (40 if sex == "F" else 0)
    district = rnd.choice(DISTRICTS)
    nik = f"{district}{day:02d}{birth.month:02d}{birth.year % 100:02d}{rnd.randrange(1, 10000):04d}"
    missing = rnd.randrange(1, 11) if rnd.random() < 0.08 else None
    return Resident(
        seed=seed,
        nik=nik,
        name=f"{rnd.choice(GIVEN)} {rnd.choice(FAMILY)}",
        sex=sex,
        birth_date=birth,
        birth_place=rnd.choice(("Bandung", "Jakarta", "Surabaya", "Denpasar", "Palu", "Makassar")),
        address=f"Jl. Merdeka No. {rnd.randrange(1, 300)}, RT {rnd.randrange(1, 20):03d}/RW {rnd.randrange(1, 12):03d}",
        religion=rnd.choice(RELIGIONS),
        missing_finger=missing,
    )


def _noise(rnd: random.Random, n: int, amplitude: int) -> bytes:
    table = bytes(i * amplitude // 255 for i in range(256))
    return rnd.randbytes(n).translate(table)


def _finger(seed: int, position: int, quality: float) -> bytes:
    rnd = random.Random(f"finger-{seed}-{position}")
    cx, cy = rnd.uniform(100, 156), rnd.uniform(110, 178)
    period = rnd.uniform(7.0, 9.5)
    img = Image.new("L", (FINGER_W, FINGER_H), 235)
    px = img.load()
    assert px is not None
    contrast = 100 * max(0.05, min(1.0, quality))
    for y in range(FINGER_H):
        for x in range(FINGER_W):
            dx, dy = (x - cx) / 1.0, (y - cy) / 1.25
            r = math.hypot(dx, dy)
            if r > 118:
                continue  # outside the finger's pad: background
            ridge = math.sin(r / period * 2 * math.pi + 0.15 * math.atan2(dy, dx) * position)
            px[x, y] = int(130 + contrast * ridge)
    noisy = Image.frombytes("L", img.size, _noise(rnd, FINGER_W * FINGER_H, 14))
    return Image.blend(img, noisy, 0.12).tobytes()


def _iris(seed: int, eye: int, quality: float) -> bytes:
    rnd = random.Random(f"iris-{seed}-{eye}")
    img = Image.new("L", (IRIS_W, IRIS_H), 180)
    draw = ImageDraw.Draw(img)
    cx, cy = IRIS_W // 2 + rnd.randrange(-20, 20), IRIS_H // 2 + rnd.randrange(-15, 15)
    draw.ellipse((cx - 150, cy - 150, cx + 150, cy + 150), fill=110)
    for _ in range(90):  # radial crypts and furrows
        a = rnd.uniform(0, 2 * math.pi)
        r0, r1 = rnd.uniform(45, 80), rnd.uniform(100, 148)
        shade = rnd.randrange(60, 160)
        draw.line(
            (cx + r0 * math.cos(a), cy + r0 * math.sin(a), cx + r1 * math.cos(a), cy + r1 * math.sin(a)),
            fill=shade,
            width=rnd.randrange(1, 4),
        )
    draw.ellipse((cx - 45, cy - 45, cx + 45, cy + 45), fill=15)
    if quality < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(6))
    noisy = Image.frombytes("L", img.size, _noise(rnd, IRIS_W * IRIS_H, 10))
    return Image.blend(img, noisy, 0.06).tobytes()


def _face(seed: int) -> Image.Image:
    rnd = random.Random(f"face-{seed}")
    bg = (rnd.randrange(150, 230), rnd.randrange(150, 230), rnd.randrange(180, 250))
    img = Image.new("RGB", (FACE_W, FACE_H), bg)
    draw = ImageDraw.Draw(img)
    skin = (rnd.randrange(140, 220), rnd.randrange(100, 170), rnd.randrange(70, 130))
    draw.ellipse((110, 120, 370, 470), fill=skin)
    draw.rectangle(
        (60, 470, 420, 640), fill=(rnd.randrange(0, 255), rnd.randrange(0, 255), rnd.randrange(0, 255))
    )
    for ex in (180, 300):
        draw.ellipse((ex - 18, 250, ex + 18, 275), fill=(250, 250, 250))
        draw.ellipse((ex - 8, 254, ex + 8, 271), fill=(40, 25, 20))
    draw.arc((190, 340, 290, 400), 20, 160, fill=(120, 40, 40), width=5)
    noisy = Image.frombytes("RGB", img.size, _noise(rnd, FACE_W * FACE_H * 3, 255))
    return Image.blend(img, noisy, 0.08)


def _strokes(seed: int) -> list[list[tuple[int, int, int]]]:
    rnd = random.Random(f"signature-{seed}")
    strokes: list[list[tuple[int, int, int]]] = []
    x0 = 800
    for _ in range(rnd.randrange(2, 5)):
        pts: list[tuple[int, int, int]] = []
        amp, freq = rnd.uniform(400, 1400), rnd.uniform(0.004, 0.012)
        for i in range(rnd.randrange(40, 90)):
            x = x0 + i * 28
            y = int(3000 + amp * math.sin(freq * x + rnd.uniform(-0.05, 0.05)))
            pts.append((min(x, SIG_MAX_X), max(0, min(y, SIG_MAX_Y)), rnd.randrange(300, 900)))
        strokes.append(pts)
        x0 = min(x0 + 2600, SIG_MAX_X - 2600)
    return strokes


def encode_png_gray(raw: bytes, width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("L", (width, height), raw).save(buf, format="PNG", optimize=False)
    return buf.getvalue()
