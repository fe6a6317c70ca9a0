"""A simulated R307 fingerprint module on a pty: the driver's R30x codec run in reverse.

It answers the R30x command set a host library uses, with the confirmation codes and
ack lengths of the datasheet (12 bytes; 14 for TemplateNum and Match, 16 for Search and
GetRandomCode, 28 for ReadSysPara, 44 for ReadIndexTable): GenImg, Img2Tz, Match, Search
(and HighSpeedSearch), RegModel, Store, LoadChar, UpChar, DownChar, UpImage, DownImage,
DeletChar, Empty, SetSysPara, ReadSysPara, SetPwd, VfyPwd, GetRandomCode, TemplateNum,
ReadIndexTable. An instruction it does not define gets 0x19 ("no definition error"); a
command packet too short for its parameters gets 0x01. It verifies the checksum of every
packet it receives (0x01 on a bad one), keeps the status register (PWD after a good
VfyPwd, ImgBufStat after an image, Pass after a match) and a template library of 1,000
pages in memory.

Features: the real module's char file is proprietary; the simulated one (512 bytes, as
the R307's) lists minutiae (x u16, y u16, angle u8) derived from the finger on the glass,
with a small per-impression jitter, so two impressions of one finger match (score well
above the threshold) and two fingers do not (score near 0). The threshold follows the
security level, as on the module.

The module cannot know which finger is on the glass: the simulated resident places
fingers 1..10 in ISO order, moving to the next finger at each new capture session (a
VfyPwd after a GenImg); ``present`` restarts at finger 1 or at the finger it names. A
resident's missing finger answers GenImg with 0x02 (no finger); a resident told to repeat
a finger (``Resident.with_repeated_finger``) places that earlier finger instead.

Faults: unplug, timeout and slow as every serial device; garbage = line noise before
each reply and spliced into it; bad-checksum = every reply's checksum corrupted;
low-quality = images of faint ridges (and Img2Tz finds too few features, 0x07);
device-error = 0x03 (image capture failed) to GenImg and 0x01 (receive error) to every
other command.
"""

from __future__ import annotations

import functools
import hashlib
import random
import struct
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from drivers.errors import DeviceProtocolError
from drivers.fingerprint import frames
from drivers.fingerprint.frames import ChecksumError, Frame
from drivers.fingerprint.messages import (
    DEFAULT_ADDRESS,
    DEFAULT_PASSWORD,
    INDEX_PAGE_TEMPLATES,
    Ack,
    Command,
    Confirmation,
    Instruction,
    PacketId,
    StatusRegister,
    SysParaRegister,
    SystemParameters,
    pack_image,
    pack_index_table,
)
from drivers.fingerprint.protocol import FingerprintStream
from hw_sim.faults import FaultBoard, FaultKind
from hw_sim.pty_link import SerialSimDevice
from hw_sim.residents import ResidentDesk, synthetic_resident

LOW_QUALITY = 0.05  # ridge contrast of a low-quality capture (1.0 = crisp)
GARBAGE_BYTES = (6, 20)  # noise bytes per burst
LIBRARY_SIZE = 1000
CHAR_FILE_BYTES = 512  # an R307 char file / template
MINUTIAE = 40  # minutiae of a simulated finger
KEEP_RATE = 0.85  # share of a finger's minutiae one impression shows
NEAR_PX, NEAR_ANGLE = 6, 10  # two minutiae pair up within these
SCORE_PER_PAIR = 5
THRESHOLDS = {1: 30, 2: 40, 3: 50, 4: 65, 5: 80}  # match score needed at each security level
_NOISE = bytes(b for b in range(256) if b != frames.START[0])  # noise never fakes a start marker

Minutia = tuple[int, int, int]  # x, y, angle (0..255 for a full turn)


@functools.lru_cache(maxsize=32)
def _packed_finger(seed: int, position: int, quality: float) -> bytes | None:
    gray = synthetic_resident(seed).finger_gray(position, quality)
    return None if gray is None else pack_image(gray)


def minutiae(identity: str, impression: int) -> list[Minutia]:
    """One impression of a finger: most of its minutiae, each moved a little."""
    base = random.Random(f"minutiae-{identity}")
    points = [
        (base.randrange(16, 240), base.randrange(16, 272), base.randrange(256)) for _ in range(MINUTIAE)
    ]
    jitter = random.Random(f"impression-{identity}-{impression}")
    return [
        (x + jitter.randint(-2, 2), y + jitter.randint(-2, 2), (a + jitter.randint(-4, 4)) % 256)
        for x, y, a in points
        if jitter.random() < KEEP_RATE
    ]


def char_file(points: list[Minutia]) -> bytes:
    body = b"".join(struct.pack(">HHB", x, y, a) for x, y, a in points[:100])
    return (b"\x03\x01" + bytes([min(len(points), 100)]) + body).ljust(CHAR_FILE_BYTES, b"\x00")


def char_points(char: bytes) -> list[Minutia]:
    """The minutiae of a char file; whatever bytes a host sent, never an exception."""
    if len(char) < 3:
        return []
    count = min(char[2], (len(char) - 3) // 5)
    return [struct.unpack_from(">HHB", char, 3 + 5 * i) for i in range(count)]


def match_score(a: list[Minutia], b: list[Minutia]) -> int:
    """Pairs of minutiae close in place and angle, each used once, times SCORE_PER_PAIR."""
    free = list(b)
    pairs = 0
    for x, y, angle in a:
        for i, (u, v, w) in enumerate(free):
            turn = abs(angle - w) % 256
            if abs(x - u) <= NEAR_PX and abs(y - v) <= NEAR_PX and min(turn, 256 - turn) <= NEAR_ANGLE:
                pairs += 1
                del free[i]
                break
    return pairs * SCORE_PER_PAIR


class SimFingerprint(SerialSimDevice):
    name = "fingerprint"
    default_baud: ClassVar[int] = 57600

    def __init__(
        self,
        sim_dir: Path,
        faults: FaultBoard,
        desk: ResidentDesk,
        *,
        address: int = DEFAULT_ADDRESS,
        password: int = DEFAULT_PASSWORD,
        packet_size_code: int = 2,
        baud: int | None = None,
        throttle: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(sim_dir, faults, desk, baud=baud, throttle=throttle, seed=seed)
        self.address = address
        self.password = password
        self.parameters = SystemParameters(
            status=0,
            system_id=0,
            library_size=LIBRARY_SIZE,
            security_level=3,
            address=address,
            packet_size_code=packet_size_code,
            baud_multiplier=self.baud // 9600,
        )
        self.stream = FingerprintStream()
        self.finger = 1  # the finger the resident places next
        self.status_register = StatusRegister(0)
        self.library: dict[int, bytes] = {}  # page -> template
        self.char_buffers: dict[int, bytes] = {1: b"", 2: b""}
        self._session_used = False  # a GenImg happened since the last VfyPwd
        self._image: bytes | None = None  # the packed image buffer
        self._image_identity = ""  # which finger (or which downloaded image) is in the image buffer
        self._image_faint = False
        self._impressions = 0
        self._incoming: tuple[str, int, list[bytes]] | None = None  # DownChar/DownImage: target, buffer, data
        self._handlers: dict[int, Callable[[bytes, FaultKind | None], None]] = {
            Instruction.GEN_IMG: self._gen_img,
            Instruction.IMG_2_TZ: self._img_2_tz,
            Instruction.MATCH: self._match,
            Instruction.SEARCH: self._search,
            0x1B: self._search,  # HighSpeedSearch: same parameters and reply as Search
            Instruction.REG_MODEL: self._reg_model,
            Instruction.STORE: self._store,
            Instruction.LOAD_CHAR: self._load_char,
            Instruction.UP_CHAR: self._up_char,
            Instruction.DOWN_CHAR: self._down_char,
            Instruction.UP_IMAGE: self._up_image,
            Instruction.DOWN_IMAGE: self._down_image,
            Instruction.DELET_CHAR: self._delet_char,
            Instruction.EMPTY: self._empty,
            Instruction.SET_SYS_PARA: self._set_sys_para,
            Instruction.READ_SYS_PARA: self._read_sys_para,
            Instruction.SET_PWD: self._set_pwd,
            Instruction.VFY_PWD: self._verify_password,
            Instruction.GET_RANDOM_CODE: self._random_code,
            Instruction.TEMPLATE_NUM: self._template_num,
            Instruction.READ_INDEX_TABLE: self._read_index_table,
        }

    @property
    def threshold(self) -> int:
        return THRESHOLDS.get(self.parameters.security_level, THRESHOLDS[3])

    def status(self) -> dict[str, object]:
        return {
            **super().status(),
            "finger": self.finger,
            "resident": self.desk.current().seed,
            "templates": len(self.library),
        }

    def on_present(self, seed: int, finger: int | None = None) -> None:
        self.finger = finger or 1
        self._session_used = False
        self._image = None
        self.status_register &= ~StatusRegister.IMG_BUF_STAT

    def reset_stream(self) -> None:
        self.stream.reset()
        self._incoming = None

    def on_bytes(self, data: bytes, fault: FaultKind | None) -> None:
        for event in self.stream.feed(data):
            if isinstance(event, ChecksumError):
                self.counters["bad_frames"] += 1
                self._reply(Ack(Confirmation.PACKET_RECEIVE_ERR), fault)
            elif isinstance(event, DeviceProtocolError):
                self.counters["bad_frames"] += 1  # not a packet at all: the firmware stays silent
            elif event.address == self.address:
                self.counters["requests"] += 1
                self._handle(event, fault)

    # -- dispatch ---------------------------------------------------------------------

    def _handle(self, frame: Frame, fault: FaultKind | None) -> None:
        if frame.pid in (PacketId.DATA, PacketId.END_OF_DATA):
            self._receive_data(frame)
            return
        self._incoming = None  # a command ends a download cut short
        if frame.pid != PacketId.COMMAND or not frame.payload:
            self._reply(Ack(Confirmation.PACKET_RECEIVE_ERR), fault)
            return
        command = Command.from_bytes(frame.payload)
        if fault is FaultKind.DEVICE_ERROR:
            gen_img = command.instruction == Instruction.GEN_IMG
            self._reply(Ack(Confirmation.IMAGE_FAIL if gen_img else Confirmation.PACKET_RECEIVE_ERR), fault)
            return
        handler = self._handlers.get(command.instruction)
        if handler is None:
            self._reply(Ack(Confirmation.NO_DEFINITION), fault)
            return
        try:
            handler(command.params, fault)
        except (struct.error, IndexError):  # parameters shorter than the instruction takes
            self._reply(Ack(Confirmation.PACKET_RECEIVE_ERR), fault)

    def _receive_data(self, frame: Frame) -> None:
        if self._incoming is None:
            self.counters["bad_frames"] += 1  # data nobody asked for: the firmware ignores it
            return
        target, buffer, chunks = self._incoming
        chunks.append(frame.payload)
        if frame.pid != PacketId.END_OF_DATA:
            return
        self._incoming = None
        data = b"".join(chunks)
        if target == "char":
            self.char_buffers[buffer] = data
        else:
            self._image = data
            self._image_identity = "image-" + hashlib.sha256(data).hexdigest()
            self._image_faint = False
            self.status_register |= StatusRegister.IMG_BUF_STAT

    # -- handshake and system ---------------------------------------------------------

    def _verify_password(self, params: bytes, fault: FaultKind | None) -> None:
        if len(params) != 4 or int.from_bytes(params, "big") != self.password:
            self._reply(Ack(Confirmation.PASSWORD_FAIL), fault)
            return
        if self._session_used:  # a new capture session: the resident moves to the next finger
            self.finger = self.finger % 10 + 1
            self._session_used = False
        self.status_register |= StatusRegister.PWD
        self._reply(Ack(Confirmation.OK), fault)

    def _set_pwd(self, params: bytes, fault: FaultKind | None) -> None:
        (self.password,) = struct.unpack(">I", params[:4])
        self._reply(Ack(Confirmation.OK), fault)

    def _read_sys_para(self, params: bytes, fault: FaultKind | None) -> None:
        parameters = SystemParameters(
            int(self.status_register),
            self.parameters.system_id,
            self.parameters.library_size,
            self.parameters.security_level,
            self.parameters.address,
            self.parameters.packet_size_code,
            self.parameters.baud_multiplier,
        )
        self._reply(Ack(Confirmation.OK, parameters.to_bytes()), fault)

    def _set_sys_para(self, params: bytes, fault: FaultKind | None) -> None:
        register, value = struct.unpack(">BB", params[:2])
        limits = {
            SysParaRegister.BAUD_CONTROL: (1, 12),
            SysParaRegister.SECURITY_LEVEL: (1, 5),
            SysParaRegister.PACKET_SIZE: (0, 3),
        }
        if register not in limits:
            self._reply(Ack(Confirmation.INVALID_REG), fault)
            return
        low, high = limits[SysParaRegister(register)]
        if not low <= value <= high:
            self._reply(Ack(Confirmation.INCORRECT_CONFIG), fault)
            return
        p = self.parameters
        if register == SysParaRegister.BAUD_CONTROL:
            p = SystemParameters(p.status, p.system_id, p.library_size, p.security_level, p.address,
                                 p.packet_size_code, value)  # fmt: skip
        elif register == SysParaRegister.SECURITY_LEVEL:
            p = SystemParameters(p.status, p.system_id, p.library_size, value, p.address,
                                 p.packet_size_code, p.baud_multiplier)  # fmt: skip
        else:
            p = SystemParameters(p.status, p.system_id, p.library_size, p.security_level, p.address,
                                 value, p.baud_multiplier)  # fmt: skip
        self.parameters = p
        self._reply(Ack(Confirmation.OK), fault)  # at the old rate: the new one applies after the ack
        self.baud = p.baud

    def _random_code(self, params: bytes, fault: FaultKind | None) -> None:
        self._reply(Ack(Confirmation.OK, self.rng.getrandbits(32).to_bytes(4, "big")), fault)

    # -- images -----------------------------------------------------------------------

    def _gen_img(self, params: bytes, fault: FaultKind | None) -> None:
        self._session_used = True
        resident = self.desk.current()
        finger = resident.placed_finger(self.finger)
        faint = fault is FaultKind.LOW_QUALITY
        image = _packed_finger(resident.seed, finger, LOW_QUALITY if faint else 1.0)
        if image is None:
            self._reply(Ack(Confirmation.NO_FINGER), fault)
            return
        self._impressions += 1
        self._image = image
        self._image_identity = f"finger-{resident.seed}-{finger}"
        self._image_faint = faint
        self.status_register |= StatusRegister.IMG_BUF_STAT
        self._reply(Ack(Confirmation.OK), fault)

    def _up_image(self, params: bytes, fault: FaultKind | None) -> None:
        if self._image is None:
            self._reply(Ack(Confirmation.UPLOAD_FAIL), fault)
            return
        self._reply(Ack(Confirmation.OK), fault)
        self._send_data(self._image, fault)

    def _down_image(self, params: bytes, fault: FaultKind | None) -> None:
        self._incoming = ("image", 0, [])
        self._reply(Ack(Confirmation.OK), fault)

    # -- features, matching and the library -------------------------------------------

    @staticmethod
    def _buffer(params: bytes) -> int:
        # "BufferID of CharBuffer1 and CharBuffer2 are 1 and 2; any other value is CharBuffer2"
        return 1 if params[0] == 1 else 2

    def _img_2_tz(self, params: bytes, fault: FaultKind | None) -> None:
        buffer = self._buffer(params)
        if self._image is None:
            self._reply(Ack(Confirmation.INVALID_IMAGE), fault)
            return
        if self._image_faint:
            self._reply(Ack(Confirmation.FEATURE_FAIL), fault)
            return
        self.char_buffers[buffer] = char_file(minutiae(self._image_identity, self._impressions))
        self._reply(Ack(Confirmation.OK), fault)

    def _score(self, a: bytes, b: bytes) -> int:
        return match_score(char_points(a), char_points(b))

    def _match(self, params: bytes, fault: FaultKind | None) -> None:
        score = self._score(self.char_buffers[1], self.char_buffers[2])
        if score >= self.threshold:
            self.status_register |= StatusRegister.PASS
            self._reply(Ack(Confirmation.OK, score.to_bytes(2, "big")), fault)
        else:
            self.status_register &= ~StatusRegister.PASS
            self._reply(Ack(Confirmation.NO_MATCH, score.to_bytes(2, "big")), fault)

    def _search(self, params: bytes, fault: FaultKind | None) -> None:
        buffer_id, start, count = struct.unpack(">BHH", params[:5])
        probe = self.char_buffers[self._buffer(bytes([buffer_id]))]
        best: tuple[int, int] | None = None
        for page in range(start, min(start + count, self.parameters.library_size)):
            template = self.library.get(page)
            if template is None:
                continue
            score = self._score(probe, template)
            if score >= self.threshold and (best is None or score > best[1]):
                best = (page, score)
        if best is None:
            self.status_register &= ~StatusRegister.PASS
            self._reply(Ack(Confirmation.NOT_FOUND, b"\x00" * 4), fault)
            return
        self.status_register |= StatusRegister.PASS
        self._reply(Ack(Confirmation.OK, struct.pack(">HH", *best)), fault)

    def _reg_model(self, params: bytes, fault: FaultKind | None) -> None:
        one, two = self.char_buffers[1], self.char_buffers[2]
        if not one or not two or self._score(one, two) < self.threshold:
            self._reply(Ack(Confirmation.ENROLL_MISMATCH), fault)
            return
        self.char_buffers[2] = one  # the template lands in both buffers
        self._reply(Ack(Confirmation.OK), fault)

    def _store(self, params: bytes, fault: FaultKind | None) -> None:
        buffer_id, page = struct.unpack(">BH", params[:3])
        if page >= self.parameters.library_size:
            self._reply(Ack(Confirmation.BAD_LOCATION), fault)
            return
        self.library[page] = self.char_buffers[self._buffer(bytes([buffer_id]))]
        self._reply(Ack(Confirmation.OK), fault)

    def _load_char(self, params: bytes, fault: FaultKind | None) -> None:
        buffer_id, page = struct.unpack(">BH", params[:3])
        if page >= self.parameters.library_size:
            self._reply(Ack(Confirmation.BAD_LOCATION), fault)
            return
        template = self.library.get(page)
        if template is None:
            self._reply(Ack(Confirmation.DB_READ_FAIL), fault)
            return
        self.char_buffers[self._buffer(bytes([buffer_id]))] = template
        self._reply(Ack(Confirmation.OK), fault)

    def _up_char(self, params: bytes, fault: FaultKind | None) -> None:
        data = self.char_buffers[self._buffer(params)]
        if not data:
            self._reply(Ack(Confirmation.UPLOAD_FEATURE_FAIL), fault)
            return
        self._reply(Ack(Confirmation.OK), fault)
        self._send_data(data, fault)

    def _down_char(self, params: bytes, fault: FaultKind | None) -> None:
        self._incoming = ("char", self._buffer(params), [])
        self._reply(Ack(Confirmation.OK), fault)

    def _delet_char(self, params: bytes, fault: FaultKind | None) -> None:
        page, count = struct.unpack(">HH", params[:4])
        if count == 0 or page + count > self.parameters.library_size:
            self._reply(Ack(Confirmation.DELETE_FAIL), fault)
            return
        for p in range(page, page + count):
            self.library.pop(p, None)
        self._reply(Ack(Confirmation.OK), fault)

    def _empty(self, params: bytes, fault: FaultKind | None) -> None:
        self.library.clear()
        self._reply(Ack(Confirmation.OK), fault)

    def _template_num(self, params: bytes, fault: FaultKind | None) -> None:
        self._reply(Ack(Confirmation.OK, len(self.library).to_bytes(2, "big")), fault)

    def _read_index_table(self, params: bytes, fault: FaultKind | None) -> None:
        index_page = params[0]
        if index_page * INDEX_PAGE_TEMPLATES >= self.parameters.library_size:
            self._reply(Ack(Confirmation.BAD_LOCATION), fault)
            return
        self._reply(Ack(Confirmation.OK, pack_index_table(index_page, set(self.library))), fault)

    # -- sending ----------------------------------------------------------------------

    def _send_data(self, data: bytes, fault: FaultKind | None) -> None:
        size = self.parameters.packet_size
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        for i, chunk in enumerate(chunks):
            pid = PacketId.END_OF_DATA if i == len(chunks) - 1 else PacketId.DATA
            self._send_frame(Frame(self.address, pid, chunk), fault)

    def _reply(self, ack: Ack, fault: FaultKind | None) -> None:
        self._send_frame(Frame(self.address, PacketId.ACK, ack.to_bytes()), fault)

    def _send_frame(self, frame: Frame, fault: FaultKind | None) -> None:
        raw = bytearray(frames.encode(frame))
        if fault is FaultKind.BAD_CHECKSUM:
            raw[-1] ^= 0x5A
        if fault is FaultKind.GARBAGE:
            cut = self.rng.randrange(frames.HEADER_LEN, len(raw))
            raw[cut:cut] = self.junk(self.rng.randrange(*GARBAGE_BYTES), _NOISE)
            raw[0:0] = self.junk(self.rng.randrange(*GARBAGE_BYTES), _NOISE)
        self.send(bytes(raw))
