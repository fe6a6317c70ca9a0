"""The host-side iris quality score (drivers/iris/quality.py) on the simulator's eyes: a sharp
eye scores well above a blurred one, and the score falls when the image is blurred or its
contrast is squeezed; a flat image scores 0."""

from __future__ import annotations

import random

import pytest
from PIL import Image, ImageFilter

from drivers.iris.quality import assess_iris, iris_quality
from hw_sim.residents import IRIS_H, IRIS_W, synthetic_resident

SEEDS = (0, 1, 7, 42)


def _image(pixels: bytes) -> Image.Image:
    return Image.frombytes("L", (IRIS_W, IRIS_H), pixels)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("eye", [0, 1])
def test_a_sharp_simulated_eye_scores_well_above_a_blurred_one(seed: int, eye: int) -> None:
    resident = synthetic_resident(seed)
    sharp = iris_quality(resident.iris_gray(eye, 1.0), IRIS_W, IRIS_H)
    blurred = iris_quality(resident.iris_gray(eye, 0.3), IRIS_W, IRIS_H)
    assert sharp > 0.7, sharp
    assert blurred < 0.4, blurred
    assert sharp - blurred > 0.5


def test_the_segmentation_finds_the_simulators_pupil_and_iris() -> None:
    # hw_sim/residents.py draws the pupil with radius 45 and the iris with radius 150 near the centre
    report = assess_iris(synthetic_resident(3).iris_gray(0), IRIS_W, IRIS_H)
    cx, cy, rp = report.pupil
    assert abs(cx - IRIS_W / 2) <= 25 and abs(cy - IRIS_H / 2) <= 20, report.detail
    assert 40 <= rp <= 50 and 140 <= report.iris_radius <= 160, report.detail
    assert report.margin == 1.0 and report.focus > 0.8, report.detail


@pytest.mark.parametrize("radius", [1.0, 2.0, 4.0])
def test_the_score_falls_as_the_image_is_blurred(radius: float) -> None:
    pixels = synthetic_resident(5).iris_gray(1)
    sharp = iris_quality(pixels, IRIS_W, IRIS_H)
    softer = _image(pixels).filter(ImageFilter.GaussianBlur(radius)).tobytes()
    much_softer = _image(pixels).filter(ImageFilter.GaussianBlur(radius * 2)).tobytes()
    q1, q2 = iris_quality(softer, IRIS_W, IRIS_H), iris_quality(much_softer, IRIS_W, IRIS_H)
    assert sharp > q1 > q2, (sharp, q1, q2)


def test_the_score_falls_when_the_contrast_is_removed() -> None:
    pixels = synthetic_resident(9).iris_gray(0)
    gray = Image.new("L", (IRIS_W, IRIS_H), 128)
    sharp = iris_quality(pixels, IRIS_W, IRIS_H)
    half = iris_quality(Image.blend(_image(pixels), gray, 0.5).tobytes(), IRIS_W, IRIS_H)
    squeezed = assess_iris(Image.blend(_image(pixels), gray, 0.85).tobytes(), IRIS_W, IRIS_H)
    assert sharp > half > squeezed.quality, (sharp, half, squeezed.detail)
    assert squeezed.quality < 0.2 and squeezed.iris_pupil_contrast < 0.1, squeezed.detail


def test_a_flat_image_scores_zero() -> None:
    for value in (0, 128, 255):
        report = assess_iris(bytes([value]) * (IRIS_W * IRIS_H), IRIS_W, IRIS_H)
        assert report.quality == 0.0 and "flat" in report.detail


def test_an_image_without_a_pupil_scores_zero() -> None:
    # a bright frame with a gradient: no dark blob of a pupil's size
    img = Image.linear_gradient("L").resize((IRIS_W, IRIS_H)).point(lambda v: 120 + v // 2)
    report = assess_iris(img.tobytes(), IRIS_W, IRIS_H)
    assert report.quality == 0.0, report.detail


def test_scores_stay_in_range_for_noise_and_odd_sizes() -> None:
    rnd = random.Random(1)
    for width, height in ((640, 480), (64, 48), (9, 9), (333, 211)):
        for _ in range(3):
            q = iris_quality(rnd.randbytes(width * height), width, height)
            assert 0.0 <= q <= 1.0
    eye = _image(synthetic_resident(2).iris_gray(0)).resize((320, 240)).tobytes()
    assert 0.0 <= iris_quality(eye, 320, 240) <= 1.0


def test_an_eye_off_the_frame_loses_its_margin() -> None:
    pixels = synthetic_resident(4).iris_gray(0)
    shifted = Image.new("L", (IRIS_W, IRIS_H), 180)
    shifted.paste(_image(pixels), (220, 0))  # the iris half out of the frame on the right
    whole, cut = assess_iris(pixels, IRIS_W, IRIS_H), assess_iris(shifted.tobytes(), IRIS_W, IRIS_H)
    assert cut.margin < 0.9 and cut.quality < whole.quality, (whole.detail, cut.detail)


def test_a_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError, match="640x480"):
        iris_quality(b"\x00" * 100, 640, 480)
