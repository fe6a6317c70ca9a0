"""The fingerprint driver against the simulated module on a real pty: captures, every fault, recovery."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

import drivers.fingerprint.device as fp_device
import hw_sim.pty_link as pty_link
from drivers.errors import (
    CaptureRejected,
    DeviceDisconnected,
    DeviceProtocolError,
    DeviceReportedError,
    DeviceTimeout,
)
from drivers.fingerprint import FingerprintScanner, frames
from drivers.fingerprint.frames import Frame
from drivers.fingerprint.messages import (
    Command,
    Confirmation,
    Instruction,
    PacketId,
    pack_image,
    unpack_image,
)
from drivers.health import DeviceState
from hw_sim.faults import FaultKind
from hw_sim.residents import synthetic_resident
from hw_sim.server import SimServer

ADDR = 0xFFFFFFFF


@pytest.fixture(autouse=True)
def fast_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fp_device, "REPLY_TIMEOUT_S", 0.3)
    monkeypatch.setattr(fp_device, "FINGER_TIMEOUT_S", 0.2)
    monkeypatch.setattr(fp_device, "FINGER_POLL_S", 0.01)
    monkeypatch.setattr(fp_device, "SLOW_ANSWER_S", 0.1)
    monkeypatch.setattr(pty_link, "SIM_SLOW_DELAY_S", 0.12)


@pytest.fixture
def sim() -> Iterator[SimServer]:
    tmp = Path(tempfile.mkdtemp(prefix="ektp-fp-"))
    server = SimServer(tmp, ("fingerprint",))
    server.start()
    yield server
    server.stop()
    shutil.rmtree(tmp)


@pytest.fixture
def scanner(sim: SimServer) -> Iterator[FingerprintScanner]:
    device = FingerprintScanner(str(sim.sim_dir / "fingerprint"))
    yield device
    device.close()


def _fault(sim: SimServer, kind: FaultKind) -> None:
    assert sim.handle({"op": "fault", "device": "fingerprint", "kind": kind.value})["ok"]


def _clear(sim: SimServer) -> None:
    assert sim.handle({"op": "clear", "device": "fingerprint"})["ok"]


def _expected_pixels(seed: int, position: int) -> bytes:
    gray = synthetic_resident(seed).finger_gray(position)
    assert gray is not None
    return unpack_image(pack_image(gray))


def _seed_with_missing_finger() -> tuple[int, int]:
    for seed in range(1, 500):
        missing = synthetic_resident(seed).missing_finger
        if missing is not None and missing < 10:
            return seed, missing
    raise AssertionError("no synthetic resident with a missing finger")


def test_self_test_ok(scanner: FingerprintScanner) -> None:
    result = scanner.self_test()
    assert result.state is DeviceState.OK, result
    assert "library 1000" in result.detail and "128-byte packets" in result.detail
    assert "VfyPwd" in result.tried and "57600" in result.tried


def test_capture_returns_the_residents_finger_in_order(sim: SimServer, scanner: FingerprintScanner) -> None:
    sim.handle({"op": "present", "seed": 4, "finger": None})
    first = scanner.capture_finger(1)
    second = scanner.capture_finger(2)
    assert (first.width, first.height, first.attempts, first.exception) == (256, 288, 1, None)
    assert first.pixels == _expected_pixels(4, 1)
    assert second.pixels == _expected_pixels(4, 2)
    assert first.quality >= fp_device.MIN_QUALITY and second.quality >= fp_device.MIN_QUALITY
    assert scanner.self_test().passed  # a self-test between captures does not move the resident's finger
    assert scanner.capture_finger(3).pixels == _expected_pixels(4, 3)


def test_missing_finger_is_recorded_not_raised(sim: SimServer, scanner: FingerprintScanner) -> None:
    seed, missing = _seed_with_missing_finger()
    sim.handle({"op": "present", "seed": seed, "finger": missing})
    capture = scanner.capture_finger(missing)
    assert capture.pixels is None and capture.exception == "no finger presented"
    assert capture.position == missing and capture.quality == 0.0
    following = scanner.capture_finger(missing + 1)  # the resident moves on to the next finger
    assert following.pixels == _expected_pixels(seed, missing + 1)


def test_low_quality_is_retried_then_rejected(sim: SimServer, scanner: FingerprintScanner) -> None:
    _fault(sim, FaultKind.LOW_QUALITY)
    with pytest.raises(CaptureRejected) as info:
        scanner.capture_finger(1)
    assert info.value.quality < 0.3
    assert "after 3 attempts" in str(info.value)
    _clear(sim)
    assert scanner.capture_finger(1).quality > 0.7  # the same quality measure separates the two clearly


@pytest.mark.parametrize(
    ("kind", "error", "state"),
    [
        (FaultKind.TIMEOUT, DeviceTimeout, DeviceState.FAULT),
        (FaultKind.GARBAGE, DeviceProtocolError, DeviceState.FAULT),
        (FaultKind.BAD_CHECKSUM, DeviceProtocolError, DeviceState.FAULT),
        (FaultKind.DEVICE_ERROR, DeviceReportedError, DeviceState.FAULT),
        (FaultKind.UNPLUG, DeviceDisconnected, DeviceState.ABSENT),
    ],
)
def test_fault_gives_a_typed_error_and_clears_without_reopening(
    sim: SimServer, scanner: FingerprintScanner, kind: FaultKind, error: type[Exception], state: DeviceState
) -> None:
    assert scanner.self_test().state is DeviceState.OK  # the port is open before the fault
    _fault(sim, kind)
    with pytest.raises(error) as info:
        scanner.capture_finger(1)
    assert getattr(info.value, "device", None) == "fingerprint"
    result = scanner.self_test()
    assert result.state is state, result
    assert scanner.port in result.hint
    _clear(sim)
    capture = scanner.capture_finger(1)
    assert capture.pixels is not None and capture.exception is None


def test_timeout_hint_names_port_and_baud(sim: SimServer, scanner: FingerprintScanner) -> None:
    _fault(sim, FaultKind.TIMEOUT)
    result = scanner.self_test()
    assert result.hint.startswith(f"no answer from the fingerprint module on {scanner.port} at 57600 baud")
    assert "raspi-config" in result.hint


def test_device_error_codes(sim: SimServer, scanner: FingerprintScanner) -> None:
    scanner.handshake()
    _fault(sim, FaultKind.DEVICE_ERROR)
    with pytest.raises(DeviceReportedError) as info:
        scanner.handshake()
    assert info.value.code == Confirmation.PACKET_RECEIVE_ERR
    with pytest.raises(DeviceReportedError) as info:
        scanner._wait_for_finger()
    assert info.value.code == Confirmation.IMAGE_FAIL and "GenImg" in str(info.value)


def test_unplug_removes_the_port_and_replug_restores_it(sim: SimServer, scanner: FingerprintScanner) -> None:
    link = sim.sim_dir / "fingerprint"
    scanner.open()
    _fault(sim, FaultKind.UNPLUG)
    assert not link.is_symlink()  # the fault reply comes once the device is unplugged
    with pytest.raises(DeviceDisconnected):
        scanner.handshake()
    _clear(sim)
    assert str(link.readlink()).startswith("/dev/pts/")
    assert scanner.handshake().packet_size == 128


def test_slow_is_degraded_but_works(sim: SimServer, scanner: FingerprintScanner) -> None:
    _fault(sim, FaultKind.SLOW)
    result = scanner.self_test()
    assert result.state is DeviceState.DEGRADED and "slow" in result.detail
    capture = scanner.capture_finger(1)
    assert capture.pixels is not None and capture.handshake_s > fp_device.SLOW_ANSWER_S  # the agent notes it
    _clear(sim)
    assert scanner.capture_finger(2).handshake_s < fp_device.SLOW_ANSWER_S
    assert scanner.self_test().state is DeviceState.OK


def test_self_test_that_had_to_recover_is_degraded(
    sim: SimServer, scanner: FingerprintScanner, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = sim.devices["fingerprint"]
    send = module.send
    replies: list[bytes] = []

    def flaky(raw: bytes) -> None:
        replies.append(raw)
        if len(replies) == 1:  # a corrupt checksum: the driver sends the command again
            raw = raw[:-1] + bytes([raw[-1] ^ 0x5A])
        elif len(replies) == 2:  # line noise before a good reply: skipped by the resync
            raw = b"\x00\x13\x37" + raw
        send(raw)

    monkeypatch.setattr(module, "send", flaky)
    result = scanner.self_test()
    assert result.state is DeviceState.DEGRADED, result
    assert "recovered from 1 corrupt replies" in result.detail and "line noise skipped" in result.detail
    assert "ground" in result.hint
    monkeypatch.setattr(module, "send", send)
    assert scanner.self_test().state is DeviceState.OK  # counted per self-test, not for ever


def test_fault_with_duration_ends_by_itself(sim: SimServer, scanner: FingerprintScanner) -> None:
    sim.handle({"op": "fault", "device": "fingerprint", "kind": "timeout", "for": 0.2})
    with pytest.raises(DeviceTimeout):
        scanner.handshake()
    time.sleep(0.25)
    assert scanner.handshake().library_size == 1000


def test_wrong_baud_gets_no_answer(sim: SimServer) -> None:
    scanner = FingerprintScanner(str(sim.sim_dir / "fingerprint"), baud=115200)
    try:
        result = scanner.self_test()
    finally:
        scanner.close()
    assert result.state is DeviceState.FAULT and "115200 baud" in result.hint
    assert sim.devices["fingerprint"].status()["baud_mismatches"] == 1


def test_wrong_password_is_reported(sim: SimServer) -> None:
    scanner = FingerprintScanner(str(sim.sim_dir / "fingerprint"), password=0x1234)
    try:
        with pytest.raises(DeviceReportedError) as info:
            scanner.handshake()
        assert info.value.code == Confirmation.PASSWORD_FAIL
        assert "password" in scanner.self_test().hint
    finally:
        scanner.close()


def test_absent_port() -> None:
    scanner = FingerprintScanner("/nonexistent/ttyAMA9")
    result = scanner.self_test()
    assert result.state is DeviceState.ABSENT and not result.passed
    assert "/nonexistent/ttyAMA9" in result.hint
    with pytest.raises(DeviceDisconnected) as info:
        scanner.open()
    assert isinstance(info.value.__cause__, serial.SerialException)


def _read_exact_reply(port: serial.Serial) -> bytes:
    reply = port.read(64)  # more than any ack: the timeout ends the read
    return reply


@pytest.mark.parametrize(
    ("command", "length"),
    [
        (Command.verify_password(0), 12),
        (Command(Instruction.READ_SYS_PARA), 28),
        (Command(Instruction.GEN_IMG), 12),
    ],
)
def test_sim_sends_the_ack_lengths_host_libraries_read(sim: SimServer, command: Command, length: int) -> None:
    with serial.Serial(str(sim.sim_dir / "fingerprint"), 57600, timeout=0.3) as port:
        port.write(frames.encode(Frame(ADDR, PacketId.COMMAND, command.to_bytes())))
        reply = _read_exact_reply(port)
    assert len(reply) == length
    frame, used = frames.decode(reply)
    assert used == length and frame is not None and frame.pid == PacketId.ACK


def test_sim_verifies_checksums_and_answers_receive_error(sim: SimServer) -> None:
    raw = bytearray(frames.encode(Frame(ADDR, PacketId.COMMAND, Command.verify_password(0).to_bytes())))
    raw[-1] ^= 0xFF
    with serial.Serial(str(sim.sim_dir / "fingerprint"), 57600, timeout=0.3) as port:
        port.write(bytes(raw))
        reply = _read_exact_reply(port)
    frame, _ = frames.decode(reply)
    assert frame is not None and frame.payload == bytes([Confirmation.PACKET_RECEIVE_ERR])
    assert sim.devices["fingerprint"].status()["bad_frames"] == 1
