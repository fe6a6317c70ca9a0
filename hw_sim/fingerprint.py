"""A simulated R307 fingerprint module on a pty: the driver's R30x codec run in reverse.

It answers VfyPwd, ReadSysPara, GenImg and UpImage as the module's firmware does, with
acks of the lengths host libraries read (12 bytes; 28 for ReadSysPara), verifies the
checksum of every packet it receives (0x01 on a bad one) and shows the current
resident's fingers. The module cannot know which finger is on the glass: the simulated
resident places fingers 1..10 in ISO order, moving to the next finger at each new
capture session (a VfyPwd after a GenImg); ``present`` restarts at finger 1 or at the
finger it names. A resident's missing finger answers GenImg with 0x02 (no finger).

Faults: unplug, timeout and slow as every serial device; garbage = line noise before
each reply and spliced into it; bad-checksum = every reply's checksum corrupted;
low-quality = images of faint ridges; device-error = 0x03 (image capture failed) to
GenImg and 0x01 (receive error) to every other command.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import ClassVar

from drivers.errors import DeviceProtocolError
from drivers.fingerprint import frames
from drivers.fingerprint.frames import ChecksumError, Frame
from drivers.fingerprint.messages import (
    DEFAULT_ADDRESS,
    DEFAULT_PASSWORD,
    Ack,
    Command,
    Confirmation,
    Instruction,
    PacketId,
    SystemParameters,
    pack_image,
)
from drivers.fingerprint.protocol import FingerprintStream
from hw_sim.faults import FaultBoard, FaultKind
from hw_sim.pty_link import SerialSimDevice
from hw_sim.residents import ResidentDesk, synthetic_resident

LOW_QUALITY = 0.05  # ridge contrast of a low-quality capture (1.0 = crisp)
GARBAGE_BYTES = (6, 20)  # noise bytes per burst
_NOISE = bytes(b for b in range(256) if b != frames.START[0])  # noise never fakes a start marker


@functools.lru_cache(maxsize=32)
def _packed_finger(seed: int, position: int, quality: float) -> bytes | None:
    gray = synthetic_resident(seed).finger_gray(position, quality)
    return None if gray is None else pack_image(gray)


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
            library_size=1000,
            security_level=3,
            address=address,
            packet_size_code=packet_size_code,
            baud_multiplier=self.baud // 9600,
        )
        self.stream = FingerprintStream()
        self.finger = 1  # the finger the resident places next
        self._session_used = False  # a GenImg happened since the last VfyPwd
        self._image: bytes | None = None  # the packed image buffer

    def status(self) -> dict[str, object]:
        return {**super().status(), "finger": self.finger, "resident": self.desk.current().seed}

    def on_present(self, seed: int, finger: int | None = None) -> None:
        self.finger = finger or 1
        self._session_used = False
        self._image = None

    def reset_stream(self) -> None:
        self.stream.reset()

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

    def _handle(self, frame: Frame, fault: FaultKind | None) -> None:
        if frame.pid != PacketId.COMMAND or not frame.payload:
            self._reply(Ack(Confirmation.PACKET_RECEIVE_ERR), fault)
            return
        command = Command.from_bytes(frame.payload)
        if fault is FaultKind.DEVICE_ERROR:
            gen_img = command.instruction == Instruction.GEN_IMG
            self._reply(Ack(Confirmation.IMAGE_FAIL if gen_img else Confirmation.PACKET_RECEIVE_ERR), fault)
            return
        if command.instruction == Instruction.VFY_PWD:
            self._verify_password(command, fault)
        elif command.instruction == Instruction.READ_SYS_PARA:
            self._reply(Ack(Confirmation.OK, self.parameters.to_bytes()), fault)
        elif command.instruction == Instruction.GEN_IMG:
            self._gen_img(fault)
        elif command.instruction == Instruction.UP_IMAGE:
            self._up_image(fault)
        else:
            self._reply(Ack(Confirmation.PACKET_RECEIVE_ERR), fault)  # not simulated

    def _verify_password(self, command: Command, fault: FaultKind | None) -> None:
        if len(command.params) != 4 or int.from_bytes(command.params, "big") != self.password:
            self._reply(Ack(Confirmation.PASSWORD_FAIL), fault)
            return
        if self._session_used:  # a new capture session: the resident moves to the next finger
            self.finger = self.finger % 10 + 1
            self._session_used = False
        self._reply(Ack(Confirmation.OK), fault)

    def _gen_img(self, fault: FaultKind | None) -> None:
        self._session_used = True
        quality = LOW_QUALITY if fault is FaultKind.LOW_QUALITY else 1.0
        image = _packed_finger(self.desk.current().seed, self.finger, quality)
        if image is None:
            self._reply(Ack(Confirmation.NO_FINGER), fault)
            return
        self._image = image
        self._reply(Ack(Confirmation.OK), fault)

    def _up_image(self, fault: FaultKind | None) -> None:
        if self._image is None:
            self._reply(Ack(Confirmation.UPLOAD_FAIL), fault)
            return
        self._reply(Ack(Confirmation.OK), fault)
        size = self.parameters.packet_size
        chunks = [self._image[i : i + size] for i in range(0, len(self._image), size)]
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
