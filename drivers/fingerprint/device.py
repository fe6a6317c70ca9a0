"""The fingerprint scanner the agent calls: handshake, self-test, capture of one finger's image.

A capture also extracts the finger's features on the module (Img2Tz) and matches them
(Match) against the fingers already taken in the same enrollment, so that one finger
cannot be enrolled twice::

    CaptureRejected
     └── RepeatedFinger      the finger matches one taken before (position, like, score)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
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
from drivers.fingerprint.messages import (
    CHAR_BUFFER_1,
    CHAR_BUFFER_2,
    DEFAULT_ADDRESS,
    DEFAULT_PASSWORD,
    Command,
    Confirmation,
    Instruction,
    MessageError,
    SystemParameters,
    image_dimensions,
    unpack_image,
)
from drivers.fingerprint.module import NAME, R30xModule
from drivers.health import Problem, SelfTestResult, failed_self_test, passed_self_test

DEFAULT_BAUD = 57600
REPLY_TIMEOUT_S = 1.0  # per packet; the module answers a command within a few ms plus the line time
FINGER_TIMEOUT_S = 10.0  # how long capture_finger polls GenImg for a finger before recording its absence
FINGER_POLL_S = 0.08  # GenImg polling period while no finger is on the glass
SLOW_ANSWER_S = 0.25  # a self-test handshake slower than this reports "degraded"
DEFAULT_RETRIES = 2  # extra captures of the same finger when quality is below the floor
MIN_QUALITY = 0.40  # the quality floor of an accepted image
IMAGE_MAX_BYTES = 64 * 1024  # cap on an uploaded image (R307: 36,864 bytes)

# ISO/IEC 19794-4 finger positions, as an operator is told to place them
FINGER_NAMES = {
    1: "right thumb",
    2: "right index finger",
    3: "right middle finger",
    4: "right ring finger",
    5: "right little finger",
    6: "left thumb",
    7: "left index finger",
    8: "left middle finger",
    9: "left ring finger",
    10: "left little finger",
}


@dataclass(frozen=True, slots=True)
class FingerTemplate:
    """A finger's features as the module extracted them (its char file, opaque), for one enrollment only."""

    position: int
    char: bytes


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
    template: FingerTemplate | None = None  # its features, to check the fingers taken after it
    scores: tuple[tuple[int, int], ...] = ()  # (earlier position, the module's match score) per finger taken


class RepeatedFinger(CaptureRejected):
    """The finger on the glass matches one already taken in this enrollment."""

    def __init__(
        self, message: str, *, port: str, quality: float, position: int, like: int, score: int
    ) -> None:
        super().__init__(message, device=NAME, port=port, quality=quality)
        self.position = position
        self.like = like
        self.score = score


class FingerprintScanner(R30xModule):
    """An R30x-family module on a UART."""

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
        super().__init__(
            port, baud, address=address, timeout_s=REPLY_TIMEOUT_S if timeout_s is None else timeout_s
        )
        self.password = password
        self.finger_timeout_s = FINGER_TIMEOUT_S if finger_timeout_s is None else finger_timeout_s
        self.retries = DEFAULT_RETRIES if retries is None else retries
        self.min_quality = MIN_QUALITY if min_quality is None else min_quality

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
        return self.read_sys_para()

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

    def capture_finger(self, position: int, taken: Sequence[FingerTemplate] = ()) -> FingerCapture:
        """Wait for the finger, upload its image, retry on poor quality; check it against ``taken``.

        A finger that never comes is returned with ``pixels=None`` and ``exception`` set. A
        good image's features are extracted on the module (Img2Tz, UpChar) and matched with
        each finger taken before it in this enrollment (DownChar, Match).

        :raises RepeatedFinger: the module matches it with a finger in ``taken``
        :raises CaptureRejected: quality (or the module's features) below the floor after every retry
        :raises DeviceTimeout: :raises DeviceDisconnected: :raises DeviceProtocolError:
        :raises DeviceReportedError:
        """
        if not 1 <= position <= 10:
            raise ValueError(f"finger position {position} outside 1..10")
        started = time.monotonic()
        self.handshake()  # also marks a new capture session
        handshake_s = time.monotonic() - started
        best_quality = 0.0
        few_features = False  # a sharp image the module still could not extract features from
        attempts = 0
        for attempts in range(1, self.retries + 2):
            if not self._wait_for_finger():
                return FingerCapture(position, 0, 0, None, 0.0, "no finger presented", attempts, handshake_s)
            width, height, pixels = self._upload_image()
            quality = image_quality(pixels, width, height)
            if quality >= self.min_quality:
                char = self._features()
                if char is not None:
                    scores = self._compare(position, quality, taken)
                    return FingerCapture(
                        position,
                        width,
                        height,
                        pixels,
                        quality,
                        None,
                        attempts,
                        handshake_s,
                        FingerTemplate(position, char),
                        tuple((t.position, score) for t, score in zip(taken, scores, strict=True)),
                    )
                few_features = True
            best_quality = max(best_quality, quality)
        why = (
            "the module found too few features (Img2Tz)"
            if few_features
            else f"image quality {best_quality:.2f} below {self.min_quality:.2f}"
        )
        raise CaptureRejected(
            f"finger {position}: {why} after "
            f"{attempts} attempts; clean the glass and the finger, then capture again",
            device=NAME,
            port=self.port,
            quality=best_quality,
        )

    # -- exchanges --------------------------------------------------------------------

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
        packed = self._upload(Command(Instruction.UP_IMAGE), "to upload the image (UpImage)", IMAGE_MAX_BYTES)
        try:
            width, height = image_dimensions(len(packed))
        except MessageError as exc:
            raise self._protocol_error(str(exc)) from exc
        return width, height, unpack_image(packed)

    def _features(self) -> bytes | None:
        """Img2Tz into char buffer 1 and its char file; None when the module finds too few features."""
        try:
            self.extract_features(CHAR_BUFFER_1)
        except DeviceReportedError as exc:
            if exc.code in (Confirmation.IMAGE_MESSY, Confirmation.FEATURE_FAIL):
                return None
            raise
        return self.upload_char(CHAR_BUFFER_1)

    def _compare(self, position: int, quality: float, taken: Sequence[FingerTemplate]) -> tuple[int, ...]:
        """Match char buffer 1 against each finger taken before (loaded into buffer 2); their scores.

        :raises RepeatedFinger: the module matches it with one of them
        """
        scores: list[int] = []
        for earlier in taken:
            self.download_char(CHAR_BUFFER_2, earlier.char)
            matched, score = self.match()
            scores.append(score)
            if matched:
                raise RepeatedFinger(
                    f"finger {position} looks like finger {earlier.position}: place the "
                    f"{FINGER_NAMES.get(position, f'finger {position}')}",
                    port=self.port,
                    quality=quality,
                    position=position,
                    like=earlier.position,
                    score=score,
                )
        return tuple(scores)


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


__all__ = ["FingerCapture", "FingerTemplate", "FingerprintScanner", "RepeatedFinger", "image_quality"]
