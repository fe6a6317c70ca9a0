"""The R30x command set against the simulated module on a real pty.

Golden frames: every command and reply below is typed from the R307 / R30x user manual
(packet layout, instruction codes, parameters, confirmation codes, reply lengths), with
the checksum worked out by hand, never produced by our encoder. Then the driver's own
methods for the same instructions, and the distinct-finger check of an enrollment.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

import drivers.fingerprint.device as fp_device
from drivers.errors import CaptureRejected, DeviceReportedError
from drivers.fingerprint import FingerprintScanner, FingerTemplate, RepeatedFinger
from drivers.fingerprint.messages import Ack, Confirmation, Instruction, SysParaRegister
from hw_sim.residents import synthetic_resident
from hw_sim.server import SimServer


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# commands (pid 01) ---------------------------------------------------------------------
VFY_PWD_0 = h("EF01 FFFFFFFF 01 0007 13 00000000 001B")
GEN_IMG = h("EF01 FFFFFFFF 01 0003 01 0005")
IMG2TZ_1 = h("EF01 FFFFFFFF 01 0004 02 01 0008")
MATCH = h("EF01 FFFFFFFF 01 0003 03 0007")
SEARCH_1_0_1000 = h("EF01 FFFFFFFF 01 0008 04 01 0000 03E8 00F9")
REG_MODEL = h("EF01 FFFFFFFF 01 0003 05 0009")
STORE_1_5 = h("EF01 FFFFFFFF 01 0006 06 01 0005 0013")
STORE_1_1000 = h("EF01 FFFFFFFF 01 0006 06 01 03E8 00F9")
LOAD_CHAR_2_5 = h("EF01 FFFFFFFF 01 0006 07 02 0005 0015")
LOAD_CHAR_2_6 = h("EF01 FFFFFFFF 01 0006 07 02 0006 0016")
UP_CHAR_1 = h("EF01 FFFFFFFF 01 0004 08 01 000E")
UP_CHAR_2 = h("EF01 FFFFFFFF 01 0004 08 02 000F")
DOWN_CHAR_2 = h("EF01 FFFFFFFF 01 0004 09 02 0010")
DELET_CHAR_5_1 = h("EF01 FFFFFFFF 01 0007 0C 0005 0001 001A")
EMPTY = h("EF01 FFFFFFFF 01 0003 0D 0011")
SET_SECURITY_4 = h("EF01 FFFFFFFF 01 0005 0E 05 04 001D")
SET_REGISTER_9 = h("EF01 FFFFFFFF 01 0005 0E 09 01 001E")
SET_PACKET_SIZE_7 = h("EF01 FFFFFFFF 01 0005 0E 06 07 0021")
READ_SYS_PARA = h("EF01 FFFFFFFF 01 0003 0F 0013")
SET_PWD_1 = h("EF01 FFFFFFFF 01 0007 12 00000001 001B")
VFY_PWD_1 = h("EF01 FFFFFFFF 01 0007 13 00000001 001C")
GET_RANDOM_CODE = h("EF01 FFFFFFFF 01 0003 14 0018")
TEMPLATE_NUM = h("EF01 FFFFFFFF 01 0003 1D 0021")
READ_INDEX_TABLE_0 = h("EF01 FFFFFFFF 01 0004 1F 00 0024")
UNDEFINED_0X50 = h("EF01 FFFFFFFF 01 0003 50 0054")
IMG2TZ_NO_BUFFER = h("EF01 FFFFFFFF 01 0003 02 0006")  # a parameter short

# acknowledges (pid 07) -----------------------------------------------------------------
OK = h("EF01 FFFFFFFF 07 0003 00 000A")
RECEIVE_ERROR = h("EF01 FFFFFFFF 07 0003 01 000B")
TEMPLATES_0 = h("EF01 FFFFFFFF 07 0005 00 0000 000C")
TEMPLATES_1 = h("EF01 FFFFFFFF 07 0005 00 0001 000D")
INDEX_EMPTY = h("EF01 FFFFFFFF 07 0023 00" + "00" * 32 + "002A")
INDEX_PAGE_5 = h("EF01 FFFFFFFF 07 0023 00 20" + "00" * 31 + "004A")  # byte 0, bit 5: page 5
NO_VALID_IMAGE = h("EF01 FFFFFFFF 07 0003 15 001F")
NO_MATCH_0 = h("EF01 FFFFFFFF 07 0005 08 0000 0014")
NOT_FOUND = h("EF01 FFFFFFFF 07 0007 09 0000 0000 0017")
COMBINE_FAIL = h("EF01 FFFFFFFF 07 0003 0A 0014")
BAD_LOCATION = h("EF01 FFFFFFFF 07 0003 0B 0015")
READ_TEMPLATE_FAIL = h("EF01 FFFFFFFF 07 0003 0C 0016")
UPLOAD_CHAR_FAIL = h("EF01 FFFFFFFF 07 0003 0D 0017")
WRONG_PASSWORD = h("EF01 FFFFFFFF 07 0003 13 001D")
NO_DEFINITION = h("EF01 FFFFFFFF 07 0003 19 0023")
INVALID_REGISTER = h("EF01 FFFFFFFF 07 0003 1A 0024")
INCORRECT_CONFIG = h("EF01 FFFFFFFF 07 0003 1B 0025")
# status PWD|ImgBufStat (0x000C), system id 0, library 1000, security 3, address FFFFFFFF,
# packet size code 2 (128 bytes), baud multiplier 6 (57600)
SYS_PARA_AFTER_IMAGE = h("EF01 FFFFFFFF 07 0013 00 000C 0000 03E8 0003 FFFFFFFF 0002 0006 0518")


def hand_checksum(frame: bytes) -> int:
    """The datasheet's sum, from the pid byte to the last payload byte (not our encoder's)."""
    return sum(frame[6:-2]) & 0xFFFF


@pytest.fixture
def sim() -> Iterator[SimServer]:
    tmp = Path(tempfile.mkdtemp(prefix="ektp-fpc-"))
    server = SimServer(tmp, ("fingerprint",), seed=4)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(tmp)


@pytest.fixture
def port(sim: SimServer) -> Iterator[serial.Serial]:
    with serial.Serial(str(sim.sim_dir / "fingerprint"), 57600, timeout=1.0) as line:
        yield line


def exchange(port: serial.Serial, command: bytes, length: int) -> bytes:
    """Send one command and read exactly ``length`` reply bytes; nothing more may follow."""
    port.write(command)
    reply = port.read(length)
    port.timeout, saved = 0.03, port.timeout
    extra = port.read(64)
    port.timeout = saved
    assert extra == b"", f"{len(extra)} bytes after the {length}-byte reply"
    return bytes(reply)


def test_library_commands_golden(port: serial.Serial) -> None:
    assert exchange(port, TEMPLATE_NUM, 14) == TEMPLATES_0
    assert exchange(port, READ_INDEX_TABLE_0, 44) == INDEX_EMPTY
    assert exchange(port, IMG2TZ_1, 12) == NO_VALID_IMAGE  # no image yet
    assert exchange(port, VFY_PWD_0, 12) == OK
    assert exchange(port, GEN_IMG, 12) == OK
    assert exchange(port, READ_SYS_PARA, 28) == SYS_PARA_AFTER_IMAGE
    assert exchange(port, IMG2TZ_1, 12) == OK
    assert exchange(port, MATCH, 14) == NO_MATCH_0  # buffer 2 is empty
    assert exchange(port, REG_MODEL, 12) == COMBINE_FAIL
    assert exchange(port, SEARCH_1_0_1000, 16) == NOT_FOUND
    assert exchange(port, STORE_1_5, 12) == OK
    assert exchange(port, STORE_1_1000, 12) == BAD_LOCATION
    assert exchange(port, TEMPLATE_NUM, 14) == TEMPLATES_1
    assert exchange(port, READ_INDEX_TABLE_0, 44) == INDEX_PAGE_5
    found = exchange(port, SEARCH_1_0_1000, 16)
    assert found[:12] == h("EF01 FFFFFFFF 07 0007 00 0005")  # found at page 5, then the score
    assert int.from_bytes(found[12:14], "big") >= 50 and int.from_bytes(found[14:], "big") == hand_checksum(
        found
    )
    assert exchange(port, LOAD_CHAR_2_6, 12) == READ_TEMPLATE_FAIL  # an empty page
    assert exchange(port, LOAD_CHAR_2_5, 12) == OK
    matched = exchange(port, MATCH, 14)
    assert matched[:10] == h("EF01 FFFFFFFF 07 0005 00") and int.from_bytes(matched[10:12], "big") >= 50
    assert int.from_bytes(matched[12:], "big") == hand_checksum(matched)
    assert exchange(port, REG_MODEL, 12) == OK
    assert exchange(port, DELET_CHAR_5_1, 12) == OK
    assert exchange(port, TEMPLATE_NUM, 14) == TEMPLATES_0
    assert exchange(port, STORE_1_5, 12) == OK
    assert exchange(port, EMPTY, 12) == OK
    assert exchange(port, READ_INDEX_TABLE_0, 44) == INDEX_EMPTY


def test_char_upload_and_download_golden(port: serial.Serial) -> None:
    assert exchange(port, UP_CHAR_2, 12) == UPLOAD_CHAR_FAIL  # nothing in buffer 2
    exchange(port, GEN_IMG, 12)
    assert exchange(port, IMG2TZ_1, 12) == OK
    # an OK ack, then 512 bytes in 128-byte data packets: three pid 02, the last pid 08
    upload = exchange(port, UP_CHAR_1, 12 + 4 * 139)
    assert upload[:12] == OK
    packets = [upload[12 + 139 * i : 12 + 139 * (i + 1)] for i in range(4)]
    assert [p[:9] for p in packets] == [h("EF01 FFFFFFFF 02 0082")] * 3 + [h("EF01 FFFFFFFF 08 0082")]
    assert all(int.from_bytes(p[-2:], "big") == hand_checksum(p) for p in packets)
    assert exchange(port, DOWN_CHAR_2, 12) == OK  # the module waits for the host's data packets
    port.write(b"".join(packets))  # the same char file back, into buffer 2: the module does not ack data
    matched = exchange(port, MATCH, 14)
    assert matched[:10] == h("EF01 FFFFFFFF 07 0005 00")


def test_system_commands_golden(port: serial.Serial) -> None:
    random_code = exchange(port, GET_RANDOM_CODE, 16)
    assert random_code[:10] == h("EF01 FFFFFFFF 07 0007 00")
    assert int.from_bytes(random_code[-2:], "big") == hand_checksum(random_code)
    assert exchange(port, SET_SECURITY_4, 12) == OK
    assert exchange(port, SET_REGISTER_9, 12) == INVALID_REGISTER
    assert exchange(port, SET_PACKET_SIZE_7, 12) == INCORRECT_CONFIG
    assert exchange(port, UNDEFINED_0X50, 12) == NO_DEFINITION  # not 0x01, which blames the cable
    assert exchange(port, IMG2TZ_NO_BUFFER, 12) == RECEIVE_ERROR  # a malformed package is 0x01
    assert exchange(port, SET_PWD_1, 12) == OK
    assert exchange(port, VFY_PWD_0, 12) == WRONG_PASSWORD
    assert exchange(port, VFY_PWD_1, 12) == OK


# -- the driver's methods ----------------------------------------------------------------


@pytest.fixture
def scanner(sim: SimServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[FingerprintScanner]:
    monkeypatch.setattr(fp_device, "FINGER_POLL_S", 0.01)
    device = FingerprintScanner(str(sim.sim_dir / "fingerprint"), timeout_s=0.5, finger_timeout_s=0.3)
    yield device
    device.close()


def test_driver_library_round_trip(scanner: FingerprintScanner) -> None:
    scanner.handshake()
    assert scanner.template_count() == 0 and scanner.read_index_table() == frozenset()
    capture = scanner.capture_finger(1)
    assert capture.template is not None and len(capture.template.char) == 512
    scanner.store(1, 7)
    assert scanner.template_count() == 1 and scanner.read_index_table(0) == {7}
    found = scanner.search(1, 0, 1000)
    assert found is not None and found[0] == 7 and found[1] >= 50
    scanner.load_char(2, 7)
    assert scanner.match()[0]
    scanner.register_model()
    scanner.download_char(2, capture.template.char)
    assert scanner.upload_char(2) == capture.template.char
    with pytest.raises(DeviceReportedError) as info:
        scanner.load_char(2, 8)
    assert info.value.code == Confirmation.DB_READ_FAIL
    scanner.delete_templates(7, 1)
    assert scanner.search(1, 0, 1000) is None
    scanner.store(1, 300)
    assert scanner.read_index_table(1) == {300}
    scanner.empty_library()
    assert scanner.template_count() == 0
    assert scanner.random_code() != scanner.random_code()


def test_driver_set_sys_para_security_and_baud(sim: SimServer, scanner: FingerprintScanner) -> None:
    scanner.set_sys_para(SysParaRegister.SECURITY_LEVEL, 5)
    assert scanner.handshake().security_level == 5
    scanner.set_sys_para(SysParaRegister.BAUD_CONTROL, 12)  # 115200: the ack comes at 57600
    assert scanner.baud == 115200
    assert scanner.handshake().baud == 115200
    with pytest.raises(DeviceReportedError) as info:
        scanner.set_sys_para(SysParaRegister.PACKET_SIZE, 9)
    assert info.value.code == Confirmation.INCORRECT_CONFIG


# -- distinct fingers --------------------------------------------------------------------


def _enroll(scanner: FingerprintScanner, positions: range) -> list[FingerTemplate]:
    taken: list[FingerTemplate] = []
    for position in positions:
        capture = scanner.capture_finger(position, taken)
        assert capture.template is not None
        assert [p for p, _ in capture.scores] == [t.position for t in taken]
        assert all(score < 30 for _, score in capture.scores), capture.scores  # ten distinct fingers
        taken.append(capture.template)
    return taken


def test_ten_distinct_fingers_pass(sim: SimServer, scanner: FingerprintScanner) -> None:
    sim.handle({"op": "present", "seed": 4, "finger": None})
    assert len(_enroll(scanner, range(1, 11))) == 10


def test_a_repeated_finger_is_refused(sim: SimServer, scanner: FingerprintScanner) -> None:
    sim.desk.present_resident(synthetic_resident(4).with_repeated_finger(3, 1))
    sim.devices["fingerprint"].on_present(4)
    taken = _enroll(scanner, range(1, 3))
    with pytest.raises(RepeatedFinger) as info:
        scanner.capture_finger(3, taken)
    assert str(info.value) == "finger 3 looks like finger 1: place the right middle finger"
    assert (info.value.position, info.value.like) == (3, 1) and info.value.score >= 50
    assert info.value.device == "fingerprint"


def test_too_few_features_is_retried_then_rejected(sim: SimServer, scanner: FingerprintScanner) -> None:
    module = sim.devices["fingerprint"]
    module._handlers[Instruction.IMG_2_TZ] = lambda params, fault: module._reply(  # type: ignore[attr-defined]
        Ack(Confirmation.FEATURE_FAIL), fault
    )
    with pytest.raises(CaptureRejected) as info:
        scanner.capture_finger(1)
    assert not isinstance(info.value, RepeatedFinger)
    assert "too few features (Img2Tz) after 3 attempts" in str(info.value) and info.value.quality > 0.4
