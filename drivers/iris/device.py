"""The iris camera driver: find it on USB, claim its vendor interface, capture an eye.

One request is in flight at a time (a lock around every public call). After the device
stops answering or goes away the link is dropped and the next call finds it again with
``usb.core.find``, so an unplug/replug needs no restart.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import usb.core
import usb.util

from drivers.errors import (
    DeviceDisconnected,
    DeviceProtocolError,
    DeviceReportedError,
    DeviceTimeout,
    DriverError,
)
from drivers.health import Problem, SelfTestResult, failed_self_test, passed_self_test
from drivers.iris.messages import (
    Abort,
    CaptureState,
    Eye,
    GetInfo,
    GetStatus,
    ImageChunk,
    InfoReply,
    ReadImage,
    Request,
    StartCapture,
    Status,
    StatusReply,
    split_reply,
    status_text,
)
from drivers.iris.protocol import EP_IN, EP_OUT, BulkLink, usb_error

# pid.codes test VID:PID (https://pid.codes/1209/0001/): for development and test only; a
# production device needs its own PID. Both are configurable.
DEFAULT_VID = 0x1209
DEFAULT_PID = 0x0001
VENDOR_CLASS = 0xFF

DEFAULT_TIMEOUT_S = 1.0  # one USB exchange (request written, reply read)
CAPTURE_TIMEOUT_S = 10.0  # START_CAPTURE until READY/FAILED
POLL_INTERVAL_S = 0.05  # GET_STATUS period while capturing
DEFAULT_MIN_QUALITY = 0.5
DEFAULT_ATTEMPTS = 3
SLOW_ANSWER_S = 0.25  # a self-test exchange slower than this reports "degraded" (a USB round trip takes ms)
MAX_CHUNK = 16384  # the host never asks for more per READ_IMAGE, whatever the device offers
MAX_IMAGE = 4096 * 4096

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class IrisCapture:
    """One eye's image: 8-bit grayscale, row-major, ``width * height`` bytes."""

    eye: int
    width: int
    height: int
    pixels: bytes
    quality: float  # 0..1 as the camera scored it
    attempts: int
    slowest_answer_s: float = 0.0  # the slowest request/reply exchange of the capture
    serial: str = ""  # the camera's serial number (GET_INFO), for the record's device identifier


@dataclass(frozen=True, slots=True)
class IrisInfo:
    firmware: str
    serial: str
    width: int
    height: int
    max_chunk: int
    manufacturer: str
    product: str


class IrisCamera:
    """The USB iris camera speaking our bulk protocol (docs/protocol.md ("Iris camera"))."""

    name = "iris"

    def __init__(
        self,
        vid: int = DEFAULT_VID,
        pid: int = DEFAULT_PID,
        *,
        backend: Any = None,
        serial: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        capture_timeout_s: float = CAPTURE_TIMEOUT_S,
        min_quality: float = DEFAULT_MIN_QUALITY,
        attempts: int = DEFAULT_ATTEMPTS,
    ) -> None:
        self.vid = vid
        self.pid = pid
        self.backend = backend
        self.serial = serial
        self.timeout_s = timeout_s
        self.capture_timeout_s = capture_timeout_s
        self.min_quality = min_quality
        self.attempts = max(1, attempts)
        self.port = f"USB {vid:04x}:{pid:04x}"
        self._lock = threading.Lock()
        self._link: BulkLink | None = None
        self._info: IrisInfo | None = None
        self._seq = random.randrange(0x10000)  # a fresh process does not reuse the last one's numbers

    # -- the agent's surface ----------------------------------------------------------------

    def open(self) -> None:
        """Find the camera and claim its interface.

        :raises DeviceDisconnected: not on the bus, no permission, or no USB backend
        """
        with self._lock:
            self._ensure_link()

    def close(self) -> None:
        """Release the interface; safe to call twice."""
        with self._lock:
            self._drop_link()

    def info(self) -> IrisInfo:
        """Firmware, serial and sensor size (GET_INFO and the USB string descriptors).

        :raises DriverError: DeviceDisconnected, DeviceTimeout, DeviceProtocolError, DeviceReportedError
        """
        return self._call(self._read_info)

    def capture_iris(self, eye: int) -> IrisCapture:
        """Capture eye 0 (right) or 1 (left); after ``attempts`` poor captures the last one is
        returned with its low quality, for the caller to keep or refuse.

        :raises ValueError: eye is not 0 or 1
        :raises DriverError: DeviceDisconnected, DeviceTimeout, DeviceProtocolError, DeviceReportedError
        """
        which = Eye(eye)
        return self._call(lambda link: self._capture(link, which))

    def self_test(self) -> SelfTestResult:
        """GET_INFO (once per plug-in) and GET_STATUS, timed; never raises."""
        tried = f"find {self.port}, GET_INFO, GET_STATUS"
        try:
            info, status, round_trip, skipped = self._call(self._probe)
        except DriverError as exc:
            return failed_self_test(
                self.name,
                exc,
                tried,
                {
                    DeviceDisconnected: "plug the iris camera in (check `lsusb` for it) and check the cable and "
                    "the udev rule",
                    DeviceTimeout: "unplug and replug the iris camera; if it keeps happening, replace it",
                    DeviceProtocolError: "corrupt USB traffic: try another cable or USB port, away from the power "
                    "supply",
                    DriverError: "the camera reports a failure: power-cycle it; if it persists, send it for repair",
                },
            )
        detail = (
            f"firmware {info.firmware}, serial {info.serial}, sensor {info.width}x{info.height}, "
            f"state {status.state.name.lower()}"
        )
        problems: list[Problem] = []
        if round_trip > SLOW_ANSWER_S:
            problems.append(
                (
                    f"slow answer (GET_STATUS took {round_trip * 1000:.0f} ms, usually under "
                    f"{SLOW_ANSWER_S * 1000:.0f} ms)",
                    "the iris camera answers slowly: plug it straight into the Pi (no hub), try another USB "
                    "cable; power-cycle it",
                )
            )
        if skipped:
            problems.append(
                (
                    f"recovered from {skipped} bytes of garbage before a valid reply",
                    "corrupt USB traffic: try another cable or USB port, away from the power supply",
                )
            )
        return passed_self_test(self.name, detail, tried, problems)

    def _probe(self, link: BulkLink) -> tuple[IrisInfo, StatusReply, float, int]:
        """The self-test's exchanges: the info (cached per plug-in), then one timed GET_STATUS."""
        skipped = link.skipped_bytes
        info = self._read_info(link)
        status = self._request(link, GetStatus(), StatusReply.from_bytes)
        return info, status, link.last_round_trip_s, link.skipped_bytes - skipped

    # -- one call at a time, re-finding the device after it went away -------------------------

    def _call(self, work: Callable[[BulkLink], T]) -> T:
        with self._lock:
            reused = self._link is not None
            link = self._ensure_link()
            try:
                return work(link)
            except DeviceDisconnected:
                self._drop_link()
                if not reused:
                    raise
            except DeviceTimeout:
                self._drop_link()
                raise
            # The handle was from before an unplug/replug (ENODEV): find the device again, once.
            link = self._ensure_link()
            try:
                return work(link)
            except (DeviceDisconnected, DeviceTimeout):
                self._drop_link()
                raise

    def _ensure_link(self) -> BulkLink:
        if self._link is not None:
            return self._link
        dev = self._find()
        try:
            try:
                cfg = dev.get_active_configuration()
            except usb.core.USBError:
                dev.set_configuration()
                cfg = dev.get_active_configuration()
            intf = usb.util.find_descriptor(cfg, bInterfaceClass=VENDOR_CLASS)
            endpoints = {ep.bEndpointAddress for ep in intf} if intf is not None else set()
            if intf is None or not {EP_OUT, EP_IN} <= endpoints:
                raise DeviceProtocolError(
                    f"{self.port} has no vendor interface with bulk endpoints 0x01/0x81: not our iris camera",
                    device=self.name,
                    port=self.port,
                )
            usb.util.claim_interface(dev, intf)
        except usb.core.USBError as exc:
            _dispose(dev)
            raise usb_error(exc, device=self.name, port=self.port, doing="claiming its interface") from exc
        except DriverError:
            _dispose(dev)
            raise
        self._link = BulkLink(dev, device=self.name, port=self.port, seq=self._seq)
        return self._link

    def _find(self) -> Any:
        def matches(dev: Any) -> bool:
            return self.serial is None or _string(dev, "serial_number") == self.serial

        try:
            dev = usb.core.find(
                idVendor=self.vid, idProduct=self.pid, backend=self.backend, custom_match=matches
            )
        except usb.core.NoBackendError as exc:
            raise DeviceDisconnected(
                "no USB backend: install libusb-1.0-0 (apt install libusb-1.0-0)",
                device=self.name,
                port=self.port,
            ) from exc
        except usb.core.USBError as exc:
            raise usb_error(exc, device=self.name, port=self.port, doing="enumerating USB") from exc
        if dev is None:
            raise DeviceDisconnected(
                f"iris camera {self.port} not found on USB; plug it in and check the cable",
                device=self.name,
                port=self.port,
            )
        return dev

    def _drop_link(self) -> None:
        link, self._link, self._info = self._link, None, None
        if link is not None:
            self._seq = link.seq
            _dispose(link.dev)

    # -- the commands -------------------------------------------------------------------------

    def _request(self, link: BulkLink, request: Request, parse: Callable[[bytes], T]) -> T:
        payload = link.exchange(request.OP, request.to_bytes(), self.timeout_s)
        status, body = split_reply(payload)
        if status != Status.OK:
            raise DeviceReportedError(
                f"iris camera answered {request.OP.name} with {status_text(status)}",
                device=self.name,
                port=self.port,
                code=status,
            )
        return parse(body)

    def _read_info(self, link: BulkLink) -> IrisInfo:
        if self._info is None:
            reply = self._request(link, GetInfo(), InfoReply.from_bytes)
            if not 0 < reply.width * reply.height <= MAX_IMAGE or reply.bits_per_pixel != 8:
                raise DeviceProtocolError(
                    f"unsupported sensor {reply.width}x{reply.height} at {reply.bits_per_pixel} bits",
                    device=self.name,
                    port=self.port,
                )
            self._info = IrisInfo(
                firmware=reply.firmware,
                serial=reply.serial,
                width=reply.width,
                height=reply.height,
                max_chunk=max(1, min(reply.max_chunk, MAX_CHUNK)),
                manufacturer=_string(link.dev, "manufacturer"),
                product=_string(link.dev, "product"),
            )
        return self._info

    def _capture(self, link: BulkLink, eye: Eye) -> IrisCapture:
        link.slowest_round_trip_s = 0.0
        info = self._read_info(link)
        start = StartCapture(eye, int(self.capture_timeout_s * 1000), round(self.min_quality * 100))
        attempt = 0
        while True:
            attempt += 1
            self._start(link, start)
            status = self._wait_capture(link)
            if status.state == CaptureState.READY:
                break
            if status.error != Status.POOR_QUALITY:
                raise DeviceReportedError(
                    f"iris capture failed: {status_text(status.error)}",
                    device=self.name,
                    port=self.port,
                    code=status.error,
                )
            if attempt >= self.attempts:
                break  # keep the last poor image: the camera leaves it readable
        expected = info.width * info.height
        if status.image_length != expected:
            raise DeviceProtocolError(
                f"iris image of {status.image_length} bytes, expected {expected}",
                device=self.name,
                port=self.port,
            )
        pixels = self._read_image(link, expected, info.max_chunk)
        return IrisCapture(
            int(eye),
            info.width,
            info.height,
            pixels,
            status.quality / 100,
            attempt,
            link.slowest_round_trip_s,
            info.serial,
        )

    def _start(self, link: BulkLink, start: StartCapture) -> None:
        try:
            self._request(link, start, _ack)
        except DeviceReportedError as exc:
            if exc.code != Status.BUSY:
                raise
            self._request(link, Abort(), _ack)  # a capture left running by an earlier, interrupted call
            self._request(link, start, _ack)

    def _wait_capture(self, link: BulkLink) -> StatusReply:
        deadline = time.monotonic() + self.capture_timeout_s + self.timeout_s
        while True:
            status = self._request(link, GetStatus(), StatusReply.from_bytes)
            if status.state in (CaptureState.READY, CaptureState.FAILED):
                return status
            if status.state == CaptureState.IDLE:
                raise DeviceProtocolError(
                    "iris camera went idle during a capture (was it reset?)", device=self.name, port=self.port
                )
            if time.monotonic() >= deadline:
                self._request(link, Abort(), _ack)
                raise DeviceTimeout(
                    f"iris capture did not finish within {self.capture_timeout_s:g} s",
                    device=self.name,
                    port=self.port,
                )
            time.sleep(POLL_INTERVAL_S)

    def _read_image(self, link: BulkLink, size: int, chunk: int) -> bytes:
        image = bytearray()
        while len(image) < size:
            want = min(chunk, size - len(image))
            part = self._request(link, ReadImage(len(image), want), ImageChunk.from_bytes)
            if part.offset != len(image) or not 0 < len(part.data) <= want:
                raise DeviceProtocolError(
                    f"READ_IMAGE at {len(image)} answered offset {part.offset} with {len(part.data)} bytes",
                    device=self.name,
                    port=self.port,
                )
            image += part.data
        return bytes(image)


def _ack(body: bytes) -> None:
    if body:
        raise DeviceProtocolError(f"unexpected {len(body)} bytes after an OK status", device="iris")


def _string(dev: Any, attribute: str) -> str:
    """A USB string descriptor, "" when the device has none or does not answer."""
    try:
        value = getattr(dev, attribute)
    except (usb.core.USBError, ValueError):
        return ""
    return str(value) if value is not None else ""


def _dispose(dev: Any) -> None:
    with contextlib.suppress(usb.core.USBError):  # the device is already gone: nothing left to release
        usb.util.dispose_resources(dev)
