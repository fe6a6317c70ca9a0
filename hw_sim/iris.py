"""The simulated USB iris camera: our bulk protocol's firmware, behind ``hw_sim.usb_backend``'s cable.

It is the driver's codec run in reverse: requests are decoded with ``drivers.iris.frames`` and
``messages``, replies encoded with them. Faults (``faults.active("iris")``, read on every cable
request) act as the real device would fail:

    unplug        not enumerated; every open handle gets ENODEV; replug is a new generation
    timeout       requests are swallowed and nothing comes back on bulk IN
    garbage       each reply is replaced by random bytes
    bad-checksum  each reply's CRC is corrupted
    slow          each reply comes SLOW_REPLY_S late (within the driver's default timeout)
    low-quality   captures are blurred and score LOW_QUALITY (FAILED / POOR_QUALITY)
    device-error  every request is answered with HARDWARE_ERROR
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from drivers.errors import DeviceProtocolError
from drivers.iris import frames
from drivers.iris.device import DEFAULT_PID, DEFAULT_VID, VENDOR_CLASS
from drivers.iris.frames import REPLY_FLAG, BadFrame, Frame
from drivers.iris.messages import (
    Abort,
    CaptureState,
    GetInfo,
    GetStatus,
    ImageChunk,
    InfoReply,
    ReadImage,
    Request,
    StartCapture,
    Status,
    StatusReply,
    parse_request,
    reply_payload,
)
from drivers.iris.protocol import EP_IN, EP_OUT, FrameReader
from hw_sim.device import SimDevice
from hw_sim.faults import FaultKind
from hw_sim.residents import IRIS_H, IRIS_W
from hw_sim.unix_socket import UnixSocketService
from hw_sim.usb_backend import SOCKET_NAME, CableError, CableStatus, serve_cable

CAPTURE_S = 0.05  # START_CAPTURE until the image is ready
SLOW_REPLY_S = 0.3  # extra reply latency under the slow fault
IN_POLL_S = 0.02  # how often a waiting bulk IN re-reads the fault board
GOOD_QUALITY = 0.92
LOW_QUALITY = 0.3
MAX_CHUNK = 16384
FIRMWARE = (1, 2, 0)
SERIAL = "SIM-IRIS-0001"
MANUFACTURER = "ektp-agent simulator"
PRODUCT = "Iris camera (simulated)"
LANGID_EN_US = 0x0409
BULK = 0x02


@dataclass(slots=True)
class _Capture:
    state: CaptureState = CaptureState.IDLE
    eye: int = 0
    ready_at: float = 0.0
    timeout_s: float = 0.0
    min_quality: int = 0
    quality: int = 0
    error: int = 0
    image: bytes = b""


class SimIris(SimDevice):
    """Serves ``DIR/iris.sock``; the driver reaches it through ``SimUsbBackend(DIR)``."""

    name = "iris"
    in_transfer_limit = 1 << 16  # most bytes one bulk IN transfer returns (tests shrink it to split replies)

    def start(self) -> None:
        self._cond = threading.Condition()
        self._in_queue: deque[tuple[float, bytes]] = deque()  # (ready at, bytes) on bulk IN
        self._reader = FrameReader(device="iris-sim")
        self._capture = _Capture()
        self._plugged = True
        self._generation = 1
        self._requests = 0
        self._rng = random.Random(0x1215)
        self._service = UnixSocketService(self.sim_dir / SOCKET_NAME, self._serve, name="sim-iris")
        self._service.start()

    def stop(self) -> None:
        if not hasattr(self, "_service"):
            return  # never started
        self._service.stopping.set()
        with self._cond:
            self._cond.notify_all()
        self._service.stop()

    def status(self) -> dict[str, object]:
        with self._cond:
            return {
                "endpoint": str(self._service.path),
                "usb": f"{DEFAULT_VID:04x}:{DEFAULT_PID:04x}",
                "serial": SERIAL,
                "plugged": self._plugged,
                "generation": self._generation,
                "requests": self._requests,
                "capture_state": self._capture.state.name.lower(),
                "fault": (self.faults.active(self.name) or ""),
            }

    def _serve(self, conn: socket.socket) -> None:
        serve_cable(conn, self)

    # -- the cable's gadget side ----------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        with self._cond:
            self._check_plug()
            return {
                "generation": self._generation,
                "vid": DEFAULT_VID,
                "pid": DEFAULT_PID,
                "bcd_device": FIRMWARE[0] << 8 | FIRMWARE[1],
                "interface_class": VENDOR_CLASS,
                "endpoints": [[EP_OUT, BULK, 512], [EP_IN, BULK, 512]],
            }

    def bulk_out(self, generation: int, endpoint: int, data: bytes) -> int:
        with self._cond:
            self._check_handle(generation)
            if endpoint != EP_OUT:
                raise CableError(CableStatus.STALL, f"no OUT endpoint 0x{endpoint:02x}")
            fault = self.faults.active(self.name)
            self._reader.feed(data)
            while True:
                try:
                    frame = self._reader.next_frame()
                except BadFrame as exc:
                    self._queue(Frame(exc.op | REPLY_FLAG, exc.seq, reply_payload(Status.BAD_CRC)), fault)
                    continue
                if frame is None:
                    break
                self._requests += 1
                if fault == FaultKind.TIMEOUT:
                    continue  # the firmware has hung: requests go nowhere
                self._queue(Frame(frame.op | REPLY_FLAG, frame.seq, self._answer(frame, fault)), fault)
            self._cond.notify_all()
            return len(data)

    def bulk_in(self, generation: int, endpoint: int, size: int, timeout_ms: int) -> bytes:
        deadline = None if timeout_ms == 0 else time.monotonic() + timeout_ms / 1000
        with self._cond:
            while True:
                self._check_handle(generation)
                if endpoint != EP_IN:
                    raise CableError(CableStatus.STALL, f"no IN endpoint 0x{endpoint:02x}")
                now = time.monotonic()
                hung = self.faults.active(self.name) == FaultKind.TIMEOUT
                if self._in_queue and self._in_queue[0][0] <= now and not hung:
                    return self._pop_in(size)
                if self._service.stopping.is_set() or (deadline is not None and now >= deadline):
                    raise CableError(CableStatus.TIMEOUT)
                wake = IN_POLL_S if deadline is None else min(IN_POLL_S, deadline - now)
                if self._in_queue and not hung:
                    wake = min(wake, max(0.0, self._in_queue[0][0] - now))
                self._cond.wait(wake)

    def control(self, generation: int, setup: tuple[int, int, int, int, int], data: bytes) -> bytes:
        with self._cond:
            self._check_handle(generation)
        request_type, request, value, index, length = setup
        if request_type == 0x80 and request == 0x06 and value >> 8 == 0x03:  # GET_DESCRIPTOR (string)
            number = value & 0xFF
            if number == 0:
                return bytes([4, 0x03]) + LANGID_EN_US.to_bytes(2, "little")
            strings = {1: MANUFACTURER, 2: PRODUCT, 3: SERIAL}
            if number in strings and index == LANGID_EN_US:
                text = strings[number].encode("utf-16-le")
                return (bytes([2 + len(text), 0x03]) + text)[:length]
        raise CableError(CableStatus.STALL, "unsupported control request")

    # -- plug state -----------------------------------------------------------------------------

    def _check_plug(self) -> None:
        """Follow the unplug fault: unplugging loses all state, plugging back is a new generation."""
        unplugged = self.faults.active(self.name) == FaultKind.UNPLUG
        if unplugged and self._plugged:
            self._plugged = False
            self._in_queue.clear()
            self._reader.reset()
            self._capture = _Capture()
        elif not unplugged and not self._plugged:
            self._plugged = True
            self._generation += 1
        if not self._plugged:
            raise CableError(CableStatus.NO_DEVICE)

    def _check_handle(self, generation: int) -> None:
        self._check_plug()
        if generation != self._generation:
            raise CableError(CableStatus.NO_DEVICE)

    # -- the firmware ---------------------------------------------------------------------------

    def _queue(self, reply: Frame, fault: FaultKind | None) -> None:
        data = frames.encode(reply)
        ready_at = time.monotonic()
        if fault == FaultKind.GARBAGE:
            data = self._rng.randbytes(self._rng.randrange(16, 256)).replace(frames.MAGIC, b"ir")
        elif fault == FaultKind.BAD_CHECKSUM:
            data = data[:-1] + bytes([data[-1] ^ 0xA5])
        elif fault == FaultKind.SLOW:
            ready_at += SLOW_REPLY_S
        self._in_queue.append((ready_at, data))

    def _pop_in(self, size: int) -> bytes:
        size = min(size, self.in_transfer_limit)
        ready_at, data = self._in_queue.popleft()
        if len(data) > size:
            self._in_queue.appendleft((ready_at, data[size:]))
            data = data[:size]
        return data

    def _answer(self, frame: Frame, fault: FaultKind | None) -> bytes:
        if fault == FaultKind.DEVICE_ERROR:
            return reply_payload(Status.HARDWARE_ERROR)
        try:
            request = parse_request(frame.op, frame.payload)
        except DeviceProtocolError:
            return reply_payload(Status.BAD_REQUEST)
        return self._handle(request, fault)

    def _handle(self, request: Request, fault: FaultKind | None) -> bytes:
        cap = self._capture
        if isinstance(request, GetInfo):
            info = InfoReply(*FIRMWARE, IRIS_W, IRIS_H, 8, MAX_CHUNK, SERIAL)
            return reply_payload(Status.OK, info.to_bytes())
        if isinstance(request, StartCapture):
            if cap.state == CaptureState.CAPTURING:
                return reply_payload(Status.BUSY)
            self._capture = _Capture(
                CaptureState.CAPTURING,
                int(request.eye),
                time.monotonic() + CAPTURE_S,
                request.timeout_ms / 1000,
                request.min_quality,
            )
            return reply_payload(Status.OK)
        if isinstance(request, GetStatus):
            self._advance(fault)
            cap = self._capture
            length = len(cap.image)
            reply = StatusReply(cap.state, cap.quality, cap.eye, cap.error, length)
            return reply_payload(Status.OK, reply.to_bytes())
        if isinstance(request, ReadImage):
            readable = cap.state == CaptureState.READY or cap.error == Status.POOR_QUALITY
            if not cap.image or not readable:
                return reply_payload(Status.NOT_READY)
            if not 0 < request.length <= MAX_CHUNK or request.offset >= len(cap.image):
                return reply_payload(Status.BAD_REQUEST)
            chunk = cap.image[request.offset : request.offset + request.length]
            return reply_payload(Status.OK, ImageChunk(request.offset, chunk).to_bytes())
        assert isinstance(request, Abort)
        self._capture = _Capture()
        return reply_payload(Status.OK)

    def _advance(self, fault: FaultKind | None) -> None:
        cap = self._capture
        if cap.state != CaptureState.CAPTURING or time.monotonic() < cap.ready_at:
            return
        if cap.timeout_s < CAPTURE_S:
            cap.state, cap.error = CaptureState.FAILED, Status.NO_EYE
            return
        quality = LOW_QUALITY if fault == FaultKind.LOW_QUALITY else GOOD_QUALITY
        cap.image = self.desk.current().iris_gray(cap.eye, quality)
        cap.quality = round(quality * 100)
        if cap.quality < cap.min_quality:
            cap.state, cap.error = CaptureState.FAILED, Status.POOR_QUALITY
        else:
            cap.state, cap.error = CaptureState.READY, 0
