"""The face camera driver against the simulator's picamera2-shaped backend, the real picamera2
backend on a machine without picamera2, and the image checks."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageFilter, ImageStat

import hw_sim.camera as sim_camera
from drivers.camera import FaceCamera, Picamera2Backend, Picamera2Missing
from drivers.camera.picamera_backend import INSTALL_HINT
from drivers.camera.quality import assess_jpeg
from drivers.errors import DeviceDisconnected, DeviceProtocolError, DeviceReportedError, DeviceTimeout
from drivers.health import DeviceState
from hw_sim.camera import SimCamera, SimCameraBackend
from hw_sim.faults import FaultBoard, FaultKind
from hw_sim.residents import ResidentDesk, synthetic_resident

TIMEOUT_S = 0.3


@pytest.fixture
def board() -> FaultBoard:
    return FaultBoard()


@pytest.fixture
def sim(tmp_path: Path, board: FaultBoard, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimCamera]:
    monkeypatch.setattr(sim_camera, "SLOW_S", 0.05)
    dev = SimCamera(tmp_path, board, ResidentDesk())
    dev.start()
    yield dev
    dev.stop()


@pytest.fixture
def camera(sim: SimCamera, tmp_path: Path) -> Iterator[FaceCamera]:
    cam = FaceCamera(SimCameraBackend(tmp_path), timeout_s=TIMEOUT_S)
    yield cam
    cam.close()


def _jpeg(img: Image.Image, **options: int) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", **options)
    return out.getvalue()


def test_capture_is_the_residents_face(camera: FaceCamera, sim: SimCamera) -> None:
    sim.desk.present(7)
    cap = camera.capture_face()
    assert (cap.width, cap.height) == (480, 640)
    assert cap.quality > 0.8
    with Image.open(io.BytesIO(cap.jpeg)) as img:
        assert img.format == "JPEG"
        got = img.convert("L").resize((48, 64))
    want = synthetic_resident(7).face_rgb().convert("L").resize((48, 64))
    assert ImageStat.Stat(ImageChops.difference(got, want)).mean[0] < 6  # this resident, not another
    other = synthetic_resident(8).face_rgb().convert("L").resize((48, 64))
    assert ImageStat.Stat(ImageChops.difference(got, other)).mean[0] > 6
    assert camera.self_test().state == DeviceState.OK
    assert sim.status()["captures"] == 2


def test_slow_camera_is_late_but_answers(camera: FaceCamera, board: FaultBoard) -> None:
    board.inject("camera", FaultKind.SLOW)
    started = time.monotonic()
    assert camera.capture_face().quality > 0.8
    assert time.monotonic() - started >= sim_camera.SLOW_S


def test_slow_frame_makes_the_self_test_degraded(sim: SimCamera, board: FaultBoard, tmp_path: Path) -> None:
    camera = FaceCamera(SimCameraBackend(tmp_path), timeout_s=TIMEOUT_S, slow_frame_s=0.03)
    try:
        assert camera.self_test().state == DeviceState.OK
        board.inject("camera", FaultKind.SLOW)
        assert camera.capture_face().frame_s >= sim_camera.SLOW_S
        result = camera.self_test()
        assert result.state == DeviceState.DEGRADED and "slow frame" in result.detail, result
        assert "usually under 30 ms" in result.detail and "ribbon" in result.hint
        board.clear()
        assert camera.self_test().state == DeviceState.OK
    finally:
        camera.close()


ERRORS = {
    FaultKind.UNPLUG: (DeviceDisconnected, DeviceState.ABSENT),
    FaultKind.TIMEOUT: (DeviceTimeout, DeviceState.FAULT),
    FaultKind.GARBAGE: (DeviceProtocolError, DeviceState.FAULT),
    FaultKind.BAD_CHECKSUM: (DeviceProtocolError, DeviceState.FAULT),
    FaultKind.DEVICE_ERROR: (DeviceReportedError, DeviceState.FAULT),
}


@pytest.mark.parametrize("kind", list(ERRORS))
@pytest.mark.parametrize("opened_before", [True, False])
def test_fault_gives_typed_error_and_recovers_after_clear(
    camera: FaceCamera, board: FaultBoard, kind: FaultKind, opened_before: bool
) -> None:
    error, state = ERRORS[kind]
    if opened_before:
        camera.open()
    board.inject("camera", kind)
    with pytest.raises(error) as excinfo:
        camera.capture_face()
    assert excinfo.value.device == "camera"
    result = camera.self_test()
    assert result.state == state and result.hint
    board.clear("camera")
    assert camera.capture_face().quality > 0.8  # no reopen by hand
    assert camera.self_test().state == DeviceState.OK


def test_low_quality_is_a_degraded_capture(camera: FaceCamera, board: FaultBoard) -> None:
    board.inject("camera", FaultKind.LOW_QUALITY)
    cap = camera.capture_face()
    assert cap.quality < 0.3
    assert "too dark" in cap.detail and "blurred" in cap.detail
    result = camera.self_test()
    assert result.state == DeviceState.DEGRADED and "lighting" in result.hint
    assert "below 0.50" in result.detail
    board.clear()
    assert camera.capture_face().quality > 0.8


def test_no_simulator_means_no_camera(tmp_path: Path) -> None:
    backend = SimCameraBackend(tmp_path / "nothing")
    assert backend.global_camera_info() == []
    with pytest.raises(IndexError):
        backend.open_camera(0)
    assert FaceCamera(backend).self_test().state == DeviceState.ABSENT


def test_picamera2_backend_without_picamera2_is_absent_with_install_hint() -> None:
    """Real on this machine: picamera2 (libcamera) cannot be imported here."""
    try:
        import picamera2  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("picamera2 is importable here (a Raspberry Pi?)")
    with pytest.raises(Picamera2Missing, match="python3-picamera2") as excinfo:
        Picamera2Backend().global_camera_info()
    assert isinstance(excinfo.value, DeviceDisconnected)
    camera = FaceCamera(Picamera2Backend())
    with pytest.raises(DeviceDisconnected, match="--system-site-packages"):
        camera.open()
    result = camera.self_test()
    assert result.state == DeviceState.ABSENT
    assert result.hint == INSTALL_HINT


FACE = synthetic_resident(3).face_rgb()


@pytest.mark.parametrize(
    ("img", "low", "problem"),
    [
        (FACE, False, ""),
        (FACE.point(lambda v: v // 5), True, "too dark"),
        (FACE.point(lambda v: min(255, v * 2 + 80)), True, "too bright"),
        (FACE.filter(ImageFilter.GaussianBlur(5)), True, "blurred"),
    ],
    ids=["good", "dark", "bright", "blurred"],
)
def test_image_checks_score_exposure_and_sharpness(img: Image.Image, low: bool, problem: str) -> None:
    report = assess_jpeg(_jpeg(img, quality=85))
    assert (report.quality < 0.5) is low, report.detail
    assert problem in report.detail


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not a jpeg at all",
        _jpeg(FACE)[:5000],
        b"\xff\xd8" + bytes(100) + b"\xff\xd9",
        _jpeg(FACE.resize((100, 100))),
    ],
    ids=["empty", "text", "truncated", "markers-only", "too-small"],
)
def test_image_checks_reject_corrupt_jpeg(data: bytes) -> None:
    with pytest.raises(DeviceProtocolError):
        assess_jpeg(data)


def test_png_is_not_accepted_as_jpeg() -> None:
    out = io.BytesIO()
    FACE.save(out, format="PNG")
    with pytest.raises(DeviceProtocolError):
        assess_jpeg(out.getvalue())
