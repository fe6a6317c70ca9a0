"""The fingerprint scanner the agent calls: handshake, self-test, capture of one finger's image."""

from __future__ import annotations

import time
from dataclasses import dataclass

from PIL import Image, ImageStat

from drivers.errors import (
    CaptureRejected,
    DeviceDisconnected,
    DeviceProtocolError,
    DeviceReportedError,
    DeviceTimeout,
    DriverError,
)
from drivers.fingerprint.frames import Frame, encode
from drivers.fingerprint.messages import (
    DEFAULT_ADDRESS,
    DEFAULT_PASSWORD,
    Ack,
    Command,
    Confirmation,
    Instruction,
    MessageError,
    PacketId,
    SystemParameters,
    image_dimensions,
    unpack_image,
)
from drivers.fingerprint.protocol import FingerprintStream
from drivers.health import Problem, SelfTestResult, failed_self_test, passed_self_test
from drivers.serial_link import SerialLink

DEFAULT_BAUD = 57600
REPLY_TIMEOUT_S = 1.0  # per packet; the module answers a command within a few ms plus the line time
FINGER_TIMEOUT_S = 10.0  # how long capture_finger polls GenImg for a finger before recording its absence
FINGER_POLL_S = 0.08  # GenImg polling period while no finger is on the glass
SLOW_ANSWER_S = 0.25  # a self-test handshake slower than this reports "degraded"
DEFAULT_RETRIES = 2  # extra captures of the same finger when quality is below the floor
MIN_QUALITY = 0.40  # the quality floor of an accepted image
COMMAND_RETRIES = 1  # resend an idempotent command once after a corrupt reply
IMAGE_MAX_BYTES = 64 * 1024  # cap on an uploaded image (R307: 36,864 bytes)

NAME = "fingerprint"


@dataclass(frozen=True, slots=True)
class FingerCapture:
    """One finger: 8-bit grayscale pixels with a quality 0..1, or None and the reason (``exception``)."""

    position: int  # ISO/IEC 19794-4 finger position 1..10
    width: int
    height: int
    pixels: bytes | None
    quality: float
    exception: str | None
    attempts: int
    handshake_s: float = 0.0  # how long the handshake that opened this capture took


class FingerprintScanner:
    """An R30x-family module on a UART."""

    name = NAME

    def __init__(
        self,
        port: str,
        baud: int = DEFAULT_BAUD,
        *,
        address: int = DEFAULT_ADDRESS,
        password: int = DEFAULT_PASSWORD,
        timeout_s: float | None = None,
        finger_timeout_s: float | None = None,
        retries: int | None = None,
        min_quality: float | None = None,
    ) -> None:
        self.port = port
        self.baud = baud
        self.address = address
        self.password = password
        self.timeout_s = REPLY_TIMEOUT_S if timeout_s is None else timeout_s
        self.finger_timeout_s = FINGER_TIMEOUT_S if finger_timeout_s is None else finger_timeout_s
        self.retries = DEFAULT_RETRIES if retries is None else retries
        self.min_quality = MIN_QUALITY if min_quality is None else min_quality
        self.parameters: SystemParameters | None = None
        self.resent = 0  # commands sent again after a corrupt reply (a running count)
        self._stream = FingerprintStream()
        self._link: SerialLink[Frame] = SerialLink(port, baud, device=NAME, decoder=self._stream)

    def open(self) -> None:
        """Open the port. :raises DeviceDisconnected:"""
        self._link.open()

    def close(self) -> None:
        self._link.close()

    def __enter__(self) -> FingerprintScanner:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def handshake(self) -> SystemParameters:
        """VfyPwd then ReadSysPara.

        :raises DeviceTimeout: :raises DeviceDisconnected: :raises DeviceProtocolError:
        :raises DeviceReportedError: e.g. 0x13 wrong password
        """
        self._expect_ok(self._command(Command.verify_password(self.password)), "password check")
        ack = self._expect_ok(self._command(Command(Instruction.READ_SYS_PARA)), "ReadSysPara")
        try:
            self.parameters = SystemParameters.from_bytes(ack.data)
        except MessageError as exc:
            raise self._protocol_error(f"unreadable system parameters: {exc}") from exc
        return self.parameters

    def self_test(self) -> SelfTestResult:
        """Handshake with the module, timed; degraded when slow or when the driver had to recover; never raises."""
        where = f"{self.port} at {self.baud} baud"
        tried = f"VfyPwd and ReadSysPara on {where}"
        resent_before, noise_before = self.resent, self._stream.discarded
        started = time.monotonic()
        try:
            params = self.handshake()
        except DriverError as exc:
            reported = (
                f"the fingerprint module on {self.port} refuses password 0: it was given a password "
                "elsewhere; reset it to 0 with the vendor's tool or replace the module"
                if exc.code == Confirmation.PASSWORD_FAIL
                else f"the fingerprint module on {self.port} reports an error: power-cycle it; replace it if "
                "the error stays"
            )
            return failed_self_test(
                NAME,
                exc,
                tried,
                {
                    DeviceDisconnected: f"no fingerprint module port at {self.port}: check the USB-serial adapter "
                    "or that the UART is enabled in raspi-config, and the port path in the config",
                    DeviceTimeout: f"no answer from the fingerprint module on {where}: check the cable and that "
                    "the port is enabled in raspi-config",
                    DeviceProtocolError: f"garbled answers from the fingerprint module on {where}: check the baud "
                    "rate, the ground wire and the cable length",
                    DeviceReportedError: reported,
                },
            )
        elapsed = time.monotonic() - started
        detail = (
            f"module answers on {where}: library {params.library_size}, security level "
            f"{params.security_level}, {params.packet_size}-byte packets"
        )
        problems: list[Problem] = []
        if elapsed > SLOW_ANSWER_S:
            problems.append(
                (
                    f"slow handshake ({elapsed * 1000:.0f} ms, usually under {SLOW_ANSWER_S * 1000:.0f} ms)",
                    "the module answers slowly: check the cable and the power supply",
                )
            )
        resent = self.resent - resent_before
        noise = self._stream.discarded - noise_before
        if resent or noise:
            what = [f"{resent} corrupt replies (commands sent again)"] if resent else []
            what += [f"{noise} bytes of line noise skipped"] if noise else []
            problems.append(
                (
                    f"recovered from {' and '.join(what)}",
                    f"noise on the line to the fingerprint module on {where}: check the ground wire, the "
                    "cable length and its distance from the power supply",
                )
            )
        return passed_self_test(NAME, detail, tried, problems)

    def capture_finger(self, position: int) -> FingerCapture:
        """Wait for the finger, upload its image, retry on poor quality.

        A finger that never comes is returned with ``pixels=None`` and ``exception`` set.

        :raises CaptureRejected: quality below the floor after every retry
        :raises DeviceTimeout: :raises DeviceDisconnected: :raises DeviceProtocolError:
        :raises DeviceReportedError:
        """
        if not 1 <= position <= 10:
            raise ValueError(f"finger position {position} outside 1..10")
        started = time.monotonic()
        self.handshake()  # also marks a new capture session
        handshake_s = time.monotonic() - started
        best_quality = 0.0
        attempts = 0
        for attempts in range(1, self.retries + 2):
            if not self._wait_for_finger():
                return FingerCapture(position, 0, 0, None, 0.0, "no finger presented", attempts, handshake_s)
            width, height, pixels = self._upload_image()
            quality = image_quality(pixels, width, height)
            if quality >= self.min_quality:
                return FingerCapture(position, width, height, pixels, quality, None, attempts, handshake_s)
            best_quality = max(best_quality, quality)
        raise CaptureRejected(
            f"finger {position}: image quality {best_quality:.2f} below {self.min_quality:.2f} after "
            f"{attempts} attempts; clean the glass and the finger, then capture again",
            device=NAME,
            port=self.port,
            quality=best_quality,
        )

    # -- exchanges --------------------------------------------------------------------

    def _command(self, command: Command) -> Ack:
        for attempt in range(COMMAND_RETRIES + 1):
            try:
                with self._link.request():
                    self._send(command)
                    return self._receive_ack()
            except DeviceProtocolError:
                if attempt == COMMAND_RETRIES:
                    raise
                self.resent += 1
        raise AssertionError("unreachable")

    def _send(self, command: Command) -> None:
        self._link.send(encode(Frame(self.address, PacketId.COMMAND, command.to_bytes())))

    def _receive_frame(self) -> Frame:
        frame = self._link.receive(self.timeout_s)
        if frame.address != self.address:
            raise self._protocol_error(
                f"reply from address 0x{frame.address:08x}, expected 0x{self.address:08x}"
            )
        return frame

    def _receive_ack(self) -> Ack:
        frame = self._receive_frame()
        if frame.pid != PacketId.ACK:
            raise self._protocol_error(f"expected an acknowledge packet, got packet id 0x{frame.pid:02x}")
        try:
            return Ack.from_bytes(frame.payload)
        except MessageError as exc:
            raise self._protocol_error(str(exc)) from exc

    def _expect_ok(self, ack: Ack, what: str) -> Ack:
        if not ack.ok:
            raise DeviceReportedError(
                f"fingerprint module on {self.port} refused {what}: {Confirmation.describe(ack.code)}",
                device=NAME,
                port=self.port,
                code=ack.code,
            )
        return ack

    def _wait_for_finger(self) -> bool:
        deadline = time.monotonic() + self.finger_timeout_s
        while True:
            ack = self._command(Command(Instruction.GEN_IMG))
            if ack.ok:
                return True
            if ack.code != Confirmation.NO_FINGER:
                self._expect_ok(ack, "to capture an image (GenImg); clean the sensor glass")
            if time.monotonic() + FINGER_POLL_S > deadline:
                return False
            time.sleep(FINGER_POLL_S)

    def _upload_image(self) -> tuple[int, int, bytes]:
        for attempt in range(COMMAND_RETRIES + 1):
            try:
                with self._link.request():
                    self._send(Command(Instruction.UP_IMAGE))
                    self._expect_ok(self._receive_ack(), "to upload the image (UpImage)")
                    packed = self._receive_image_data()
                break
            except DeviceProtocolError:
                if attempt == COMMAND_RETRIES:
                    raise
                self.resent += 1
        try:
            width, height = image_dimensions(len(packed))
        except MessageError as exc:
            raise self._protocol_error(str(exc)) from exc
        return width, height, unpack_image(packed)

    def _receive_image_data(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            frame = self._receive_frame()
            if frame.pid not in (PacketId.DATA, PacketId.END_OF_DATA):
                raise self._protocol_error(f"packet id 0x{frame.pid:02x} inside an image upload")
            chunks.append(frame.payload)
            total += len(frame.payload)
            if total > IMAGE_MAX_BYTES:
                raise self._protocol_error(f"image upload exceeds {IMAGE_MAX_BYTES} bytes")
            if frame.pid == PacketId.END_OF_DATA:
                return b"".join(chunks)

    def _protocol_error(self, message: str) -> DeviceProtocolError:
        return DeviceProtocolError(
            f"fingerprint module on {self.port}: {message}", device=NAME, port=self.port
        )


QUALITY_BLOCK = 16  # pixels per side of the blocks whose contrast is measured
QUALITY_RIDGE_STDDEV = (
    60.0  # mean block standard deviation of a crisp ridge pattern (a sharp R307 image: ~52)
)
QUALITY_FOREGROUND_STDDEV = 6.0  # blocks flatter than this are background, not finger


def image_quality(pixels: bytes, width: int, height: int) -> float:
    """0..1 from ridge contrast: mean standard deviation of the finger's blocks times the finger's coverage."""
    image = Image.frombytes("L", (width, height), pixels)
    deviations: list[float] = []
    blocks = 0
    for top in range(0, height - QUALITY_BLOCK + 1, QUALITY_BLOCK):
        for left in range(0, width - QUALITY_BLOCK + 1, QUALITY_BLOCK):
            blocks += 1
            box = (left, top, left + QUALITY_BLOCK, top + QUALITY_BLOCK)
            deviation = ImageStat.Stat(image.crop(box)).stddev[0]
            if deviation >= QUALITY_FOREGROUND_STDDEV:
                deviations.append(deviation)
    if not deviations or blocks == 0:
        return 0.0
    contrast = min(1.0, sum(deviations) / len(deviations) / QUALITY_RIDGE_STDDEV)
    coverage = min(1.0, len(deviations) / blocks / 0.35)  # a finger covers well over a third of the glass
    return round(contrast * coverage, 3)


__all__ = ["FingerCapture", "FingerprintScanner", "image_quality"]
