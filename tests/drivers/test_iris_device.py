"""The iris driver through pyusb's real usb.core paths, SimUsbBackend and an in-process SimIris."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import usb.core
import usb.util

import hw_sim.iris as sim_iris
from drivers.errors import DeviceDisconnected, DeviceProtocolError, DeviceReportedError, DeviceTimeout
from drivers.health import DeviceState
from drivers.iris import DEFAULT_PID, DEFAULT_VID, IrisCamera, device, frames, messages
from drivers.iris.frames import Frame
from drivers.iris.protocol import EP_IN, EP_OUT
from hw_sim.faults import FaultBoard, FaultKind
from hw_sim.iris import SimIris
from hw_sim.residents import ResidentDesk
from hw_sim.usb_backend import SimUsbBackend

TIMEOUT_S = 0.25


@pytest.fixture
def board() -> FaultBoard:
    return FaultBoard()


@pytest.fixture
def sim(tmp_path: Path, board: FaultBoard, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimIris]:
    monkeypatch.setattr(sim_iris, "CAPTURE_S", 0.01)
    monkeypatch.setattr(sim_iris, "SLOW_REPLY_S", 0.03)
    monkeypatch.setattr(device, "POLL_INTERVAL_S", 0.005)
    dev = SimIris(tmp_path, board, ResidentDesk())
    dev.start()
    yield dev
    dev.stop()


@pytest.fixture
def iris(sim: SimIris, tmp_path: Path) -> Iterator[IrisCamera]:
    cam = IrisCamera(backend=SimUsbBackend(tmp_path), timeout_s=TIMEOUT_S, capture_timeout_s=1.0)
    yield cam
    cam.close()


def test_pyusb_finds_the_simulated_device_and_reads_its_strings(sim: SimIris, tmp_path: Path) -> None:
    dev = usb.core.find(idVendor=DEFAULT_VID, idProduct=DEFAULT_PID, backend=SimUsbBackend(tmp_path))
    assert dev is not None
    try:
        assert (dev.manufacturer, dev.product, dev.serial_number) == (
            sim_iris.MANUFACTURER,
            sim_iris.PRODUCT,
            sim_iris.SERIAL,
        )
        cfg = dev.get_active_configuration()
        intf = cfg[(0, 0)]
        assert intf.bInterfaceClass == 0xFF
        assert [ep.bEndpointAddress for ep in intf] == [EP_OUT, EP_IN]
        # a raw request with a corrupt CRC is answered BAD_CRC, echoing op and seq
        wire = bytearray(frames.encode(Frame(messages.Op.GET_INFO, 77, b"")))
        wire[-1] ^= 0xFF
        dev.write(EP_OUT, wire, 500)
        reply, _ = frames.decode(bytes(dev.read(EP_IN, 1024, 500)))
        assert reply == Frame(messages.Op.GET_INFO | 0x80, 77, bytes([messages.Status.BAD_CRC]))
        dev.write(EP_OUT, frames.encode(Frame(0x7E, 78, b"")), 500)
        reply, _ = frames.decode(bytes(dev.read(EP_IN, 1024, 500)))
        assert reply == Frame(0xFE, 78, bytes([messages.Status.BAD_REQUEST]))
        with pytest.raises(usb.core.USBTimeoutError):
            dev.read(EP_IN, 1024, 30)
    finally:
        usb.util.dispose_resources(dev)


def test_capture_both_eyes(iris: IrisCamera, sim: SimIris) -> None:
    result = iris.self_test()
    assert result.state == DeviceState.OK, result
    assert "serial SIM-IRIS-0001" in result.detail
    for eye in (0, 1):
        cap = iris.capture_iris(eye)
        assert (cap.eye, cap.width, cap.height, cap.attempts) == (eye, 640, 480, 1)
        assert cap.pixels == sim.desk.current().iris_gray(eye, sim_iris.GOOD_QUALITY)
        assert cap.quality == pytest.approx(0.92)
    with pytest.raises(ValueError):
        iris.capture_iris(2)


@pytest.mark.parametrize("limit", [61, 512])
def test_capture_with_replies_split_across_transfers(iris: IrisCamera, sim: SimIris, limit: int) -> None:
    sim.in_transfer_limit = limit
    assert iris.info().serial == sim_iris.SERIAL
    if limit == 512:
        assert len(iris.capture_iris(1).pixels) == 640 * 480


def test_slow_device_is_late_but_within_the_timeout(iris: IrisCamera, board: FaultBoard) -> None:
    board.inject("iris", FaultKind.SLOW)
    started = time.monotonic()
    assert iris.self_test().state == DeviceState.OK
    assert time.monotonic() - started >= 2 * sim_iris.SLOW_REPLY_S  # GET_INFO and GET_STATUS, each late
    assert iris.capture_iris(0).quality == pytest.approx(0.92)


def test_slow_answer_makes_the_self_test_degraded(
    iris: IrisCamera, board: FaultBoard, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sim_iris, "SLOW_REPLY_S", 0.08)
    monkeypatch.setattr(device, "SLOW_ANSWER_S", 0.05)
    assert iris.self_test().state == DeviceState.OK
    board.inject("iris", FaultKind.SLOW)
    result = iris.self_test()
    assert result.state == DeviceState.DEGRADED and result.passed, result
    assert "slow answer (GET_STATUS took" in result.detail and "usually under 50 ms" in result.detail
    assert "USB" in result.hint
    assert iris.capture_iris(0).slowest_answer_s >= sim_iris.SLOW_REPLY_S  # the agent notes it
    board.clear("iris")
    assert iris.self_test().state == DeviceState.OK
    assert iris.capture_iris(1).slowest_answer_s < device.SLOW_ANSWER_S


def test_garbage_before_a_good_reply_is_skipped_and_reported(
    iris: IrisCamera, sim: SimIris, monkeypatch: pytest.MonkeyPatch
) -> None:
    iris.info()  # read once per plug-in: the self-test then sends only GET_STATUS
    queue = sim._queue
    noisy = [True]

    def with_noise(reply: Frame, fault: FaultKind | None) -> None:
        queue(reply, fault)
        if noisy[0]:
            ready_at, data = sim._in_queue.pop()
            sim._in_queue.append((ready_at, b"\x00noise" + data))

    monkeypatch.setattr(sim, "_queue", with_noise)
    result = iris.self_test()
    assert result.state == DeviceState.DEGRADED, result
    assert "recovered from 6 bytes of garbage before a valid reply" in result.detail
    noisy[0] = False
    assert iris.self_test().state == DeviceState.OK


ERRORS = {
    FaultKind.UNPLUG: (DeviceDisconnected, DeviceState.ABSENT),
    FaultKind.TIMEOUT: (DeviceTimeout, DeviceState.FAULT),
    FaultKind.GARBAGE: (DeviceProtocolError, DeviceState.FAULT),
    FaultKind.BAD_CHECKSUM: (DeviceProtocolError, DeviceState.FAULT),
    FaultKind.DEVICE_ERROR: (DeviceReportedError, DeviceState.FAULT),
}


@pytest.mark.parametrize("kind", list(ERRORS))
def test_fault_gives_typed_error_and_recovers_after_clear(
    iris: IrisCamera, board: FaultBoard, kind: FaultKind
) -> None:
    error, state = ERRORS[kind]
    iris.open()
    board.inject("iris", kind)
    with pytest.raises(error) as excinfo:
        iris.capture_iris(0)
    assert excinfo.value.device == "iris"
    assert "1209:0001" in excinfo.value.port
    if kind == FaultKind.DEVICE_ERROR:
        assert excinfo.value.code == messages.Status.HARDWARE_ERROR
    result = iris.self_test()
    assert result.state == state and result.hint
    board.clear("iris")
    assert iris.capture_iris(1).attempts == 1  # no reopen by hand
    assert iris.self_test().state == DeviceState.OK


def test_low_quality_gives_a_degraded_capture_after_every_attempt(
    iris: IrisCamera, board: FaultBoard
) -> None:
    board.inject("iris", FaultKind.LOW_QUALITY)
    cap = iris.capture_iris(0)
    assert cap.quality == pytest.approx(0.3) and cap.attempts == iris.attempts == 3
    assert len(cap.pixels) == 640 * 480
    board.clear()
    assert iris.capture_iris(0).quality == pytest.approx(0.92)


def test_unplug_replug_between_calls_refinds_the_device(
    iris: IrisCamera, board: FaultBoard, sim: SimIris
) -> None:
    iris.open()
    board.inject("iris", FaultKind.UNPLUG)
    assert sim.describe.__self__ is sim  # the sim is up; the device is just not on the bus
    assert usb.core.find(idVendor=DEFAULT_VID, backend=SimUsbBackend(sim.sim_dir)) is None
    board.clear()  # replugged: a new generation; the driver's handle is stale (ENODEV)
    assert iris.capture_iris(0).width == 640
    assert sim.status()["generation"] == 2


def test_late_reply_of_a_timed_out_request_is_skipped(
    iris: IrisCamera, board: FaultBoard, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sim_iris, "SLOW_REPLY_S", TIMEOUT_S * 1.5)
    board.inject("iris", FaultKind.SLOW)
    with pytest.raises(DeviceTimeout):
        iris.info()
    board.clear()
    time.sleep(TIMEOUT_S)  # the late reply is now waiting on bulk IN
    iris.open()
    link = iris._link
    assert link is not None
    assert iris.info().width == 640
    assert link.stale_replies == 1


def test_busy_camera_is_aborted_and_restarted(iris: IrisCamera) -> None:
    iris.open()
    link = iris._link
    assert link is not None
    start = messages.StartCapture(messages.Eye.RIGHT, 1000, 50)
    link.exchange(start.OP, start.to_bytes(), TIMEOUT_S)  # a capture left running
    assert iris.capture_iris(1).eye == 1


def test_absent_device_and_absent_simulator(tmp_path: Path) -> None:
    gone = IrisCamera(backend=SimUsbBackend(tmp_path / "nothing"), timeout_s=TIMEOUT_S)
    with pytest.raises(DeviceDisconnected, match="not found on USB"):
        gone.open()
    assert gone.self_test().state == DeviceState.ABSENT


def test_other_pid_is_not_found(sim: SimIris, tmp_path: Path) -> None:
    other = IrisCamera(pid=0x0002, backend=SimUsbBackend(tmp_path))
    result = other.self_test()
    assert result.state == DeviceState.ABSENT and "1209:0002" in result.detail
    wrong_serial = IrisCamera(backend=SimUsbBackend(tmp_path), serial="OTHER")
    assert wrong_serial.self_test().state == DeviceState.ABSENT
