"""The signature pad driver against the simulated ISDV4 pad on a real pty: capture, pace, baud probing, faults."""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

import drivers.signature.device as sig_device
import hw_sim.pty_link as pty_link
import hw_sim.signature as sim_signature
from drivers.errors import DeviceDisconnected, DeviceProtocolError, DeviceReportedError, DeviceTimeout
from drivers.health import DeviceState
from drivers.signature import SignaturePad
from hw_sim.faults import FaultBoard, FaultKind
from hw_sim.residents import SIG_MAX_P, SIG_MAX_X, SIG_MAX_Y, ResidentDesk, synthetic_resident
from hw_sim.server import SimServer
from hw_sim.signature import SimSignaturePad


@pytest.fixture(autouse=True)
def fast_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sig_device, "QUERY_TIMEOUT_S", 0.4)
    monkeypatch.setattr(sig_device, "STOP_SETTLE_S", 0.01)
    monkeypatch.setattr(sig_device, "PEN_UP_QUIET_S", 0.1)
    monkeypatch.setattr(sig_device, "MAX_SIGNATURE_S", 2.0)
    monkeypatch.setattr(sig_device, "SLOW_ANSWER_S", 0.08)
    monkeypatch.setattr(pty_link, "SIM_SLOW_DELAY_S", 0.1)
    monkeypatch.setattr(sim_signature, "SIM_PEN_INTERVAL_S", 0.0)  # the real pace has its own test


@pytest.fixture
def sim() -> Iterator[SimServer]:
    tmp = Path(tempfile.mkdtemp(prefix="ektp-sig-"))
    server = SimServer(tmp, ("signature",), seed=5)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(tmp)


@pytest.fixture
def pad(sim: SimServer) -> Iterator[SignaturePad]:
    device = SignaturePad(str(sim.sim_dir / "signature"), 19200)  # the simulated pad's rate: no probing
    yield device
    device.close()


def _fault(sim: SimServer, kind: FaultKind) -> None:
    assert sim.handle({"op": "fault", "device": "signature", "kind": kind.value})["ok"]


def _clear(sim: SimServer) -> None:
    assert sim.handle({"op": "clear", "device": "signature"})["ok"]


def test_self_test_reads_the_pads_maxima(pad: SignaturePad) -> None:
    result = pad.self_test()
    assert result.state is DeviceState.OK, result
    assert (
        f"{SIG_MAX_X} x {SIG_MAX_Y}" in result.detail and f"{SIG_MAX_P + 1} pressure levels" in result.detail
    )


def test_capture_keeps_the_strokes_and_renders_a_png(pad: SignaturePad) -> None:
    capture = pad.capture_signature()
    expected = synthetic_resident(5).signature_strokes()
    assert [list(s) for s in capture.strokes] == expected
    assert (capture.max_x, capture.max_y, capture.max_pressure) == (SIG_MAX_X, SIG_MAX_Y, SIG_MAX_P)
    image = Image.open(io.BytesIO(capture.png))
    assert image.format == "PNG" and image.size == (capture.width, capture.height) == (800, 600)
    assert image.convert("L").getextrema()[0] == 0  # there is ink
    assert capture.quality > 0.7


def test_a_signature_never_written_has_quality_zero() -> None:
    assert sig_device.signature_quality((), 8000, 6000) == 0.0
    png, width, height = sig_device.render_png((), 8000, 6000, 1023)
    assert Image.open(io.BytesIO(png)).convert("L").getextrema() == (255, 255) and (width, height) == (
        800,
        600,
    )


def test_falls_back_to_38400_baud(tmp_path: Path) -> None:
    sim_dir = Path(tempfile.mkdtemp(prefix="ektp-sig-"))
    device = SimSignaturePad(sim_dir, FaultBoard(), ResidentDesk(), baud=38400)
    device.start()
    pad = SignaturePad(str(sim_dir / "signature"), baud=19200)
    try:
        result = pad.self_test()
        assert result.state is DeviceState.DEGRADED and "set 38400 in the config" in result.detail
        assert pad.baud == 38400
        assert pad.capture_signature().quality > 0.7
        assert device.status()["baud_mismatches"] >= 1
    finally:
        pad.close()
        device.stop()
        shutil.rmtree(sim_dir)


def test_low_quality_signature_scores_low(sim: SimServer, pad: SignaturePad) -> None:
    _fault(sim, FaultKind.LOW_QUALITY)
    poor = pad.capture_signature()
    assert sum(len(s) for s in poor.strokes) == 6 and poor.quality < 0.1
    assert poor.quality < pad.min_quality == sig_device.MIN_QUALITY  # the agent reports the pad degraded
    _clear(sim)
    assert pad.capture_signature().quality > 0.7 > pad.min_quality


def test_garbage_is_skipped_and_reported_as_degraded(sim: SimServer, pad: SignaturePad) -> None:
    _fault(sim, FaultKind.GARBAGE)
    result = pad.self_test()
    assert result.state is DeviceState.DEGRADED and "broken packets" in result.detail
    capture = pad.capture_signature()
    assert [list(s) for s in capture.strokes] == synthetic_resident(5).signature_strokes()
    assert capture.bad_packets == pad.bad_packets > 0  # the capture says what it skipped
    _clear(sim)
    assert pad.self_test().state is DeviceState.OK
    assert pad.capture_signature().bad_packets == 0


@pytest.mark.parametrize(
    ("kind", "error", "state"),
    [
        (FaultKind.TIMEOUT, DeviceTimeout, DeviceState.FAULT),
        (FaultKind.BAD_CHECKSUM, DeviceProtocolError, DeviceState.FAULT),
        (FaultKind.DEVICE_ERROR, DeviceReportedError, DeviceState.FAULT),
        (FaultKind.UNPLUG, DeviceDisconnected, DeviceState.ABSENT),
    ],
)
def test_fault_gives_a_typed_error_and_clears_without_reopening(
    sim: SimServer, pad: SignaturePad, kind: FaultKind, error: type[Exception], state: DeviceState
) -> None:
    assert pad.self_test().state is DeviceState.OK
    _fault(sim, kind)
    with pytest.raises(error) as info:
        pad.capture_signature()
    assert getattr(info.value, "device", None) == "signature"
    result = pad.self_test()
    assert result.state is state, result
    assert pad.port in result.hint
    _clear(sim)
    assert pad.capture_signature().quality > 0.7
    assert pad.baud == 19200


def test_timeout_tries_both_rates(sim: SimServer, pad: SignaturePad) -> None:
    _fault(sim, FaultKind.TIMEOUT)
    with pytest.raises(DeviceTimeout, match="19200 or 38400 baud"):  # the configured rate first
        pad.query()


def test_slow_pad_is_degraded(sim: SimServer, pad: SignaturePad) -> None:
    _fault(sim, FaultKind.SLOW)
    result = pad.self_test()
    assert result.state is DeviceState.DEGRADED and "slow answer" in result.detail
    capture = pad.capture_signature()
    assert capture.quality > 0.7 and capture.query_s > sig_device.SLOW_ANSWER_S  # the agent notes it
    _clear(sim)
    assert pad.capture_signature().query_s < sig_device.SLOW_ANSWER_S
    assert pad.self_test().state is DeviceState.OK


@pytest.mark.parametrize("rate", [38400, 19200])
def test_an_unconfigured_pad_is_found_at_either_rate(rate: int, monkeypatch: pytest.MonkeyPatch) -> None:
    sim_dir = Path(tempfile.mkdtemp(prefix="ektp-sig-"))
    device = SimSignaturePad(sim_dir, FaultBoard(), ResidentDesk(), baud=rate)
    device.start()
    pad = SignaturePad(str(sim_dir / "signature"))  # no rate configured: 38400, then 19200
    try:
        result = pad.self_test()
        assert result.state is DeviceState.OK, result  # the rate that did not answer is no problem
        assert pad.baud == rate and f"at {rate} baud" in result.detail
        mismatches = device.status()["baud_mismatches"]
        assert mismatches > 0 if rate == 19200 else mismatches == 0  # 38400 was tried first
        assert pad.self_test().passed and device.status()["baud_mismatches"] == mismatches  # then its rate
    finally:
        pad.close()
        device.stop()
        shutil.rmtree(sim_dir)


def test_a_signature_at_the_real_pace_is_parsed_completely(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sim_signature, "SIM_PEN_INTERVAL_S", 1 / 133)  # the default, as a real pad
    seed = next(s for s in range(1, 100) if sum(map(len, synthetic_resident(s).signature_strokes())) < 150)
    expected = synthetic_resident(seed).signature_strokes()
    packets = sum(len(s) + 1 for s in expected) + 1  # pen reports, a tip-up after each stroke, proximity out
    sim_dir = Path(tempfile.mkdtemp(prefix="ektp-sig-"))
    desk = ResidentDesk()
    desk.present(seed)
    device = SimSignaturePad(sim_dir, FaultBoard(), desk, baud=38400)
    device.start()
    pad = SignaturePad(
        str(sim_dir / "signature"), 38400, quiet_s=0.3, max_duration_s=10.0
    )  # room for a stall
    try:
        pad.query()
        started = time.monotonic()
        capture = pad.capture_signature()
        elapsed = time.monotonic() - started
    finally:
        pad.close()
        device.stop()
        shutil.rmtree(sim_dir)
    assert [list(s) for s in capture.strokes] == expected and capture.bad_packets == 0
    assert elapsed >= 0.9 * packets / 133, (elapsed, packets)  # streamed at the pen's pace, not at once


def test_instant_pad_streams_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sim_signature, "SIM_PEN_INTERVAL_S", 1 / 133)
    sim_dir = Path(tempfile.mkdtemp(prefix="ektp-sig-"))
    device = SimSignaturePad(sim_dir, FaultBoard(), ResidentDesk(), instant=True)
    device.start()
    pad = SignaturePad(str(sim_dir / "signature"), 19200, quiet_s=0.1)
    try:
        pad.query()
        started = time.monotonic()
        capture = pad.capture_signature()
        assert time.monotonic() - started < 0.9 * sum(map(len, capture.strokes)) / 133
    finally:
        pad.close()
        device.stop()
        shutil.rmtree(sim_dir)
    assert capture.quality > 0.7


def test_the_simulated_pad_speaks_only_the_isdv4_rates(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="19200 or 38400"):
        SimSignaturePad(tmp_path, FaultBoard(), ResidentDesk(), baud=57600)
