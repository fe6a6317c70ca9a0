"""The signature pad the agent calls: pen query (with baud fallback), self-test, capture of a signature."""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import time
from dataclasses import dataclass

from PIL import Image, ImageDraw

from drivers.errors import (
    DeviceDisconnected,
    DeviceProtocolError,
    DeviceReportedError,
    DeviceTimeout,
    DriverError,
)
from drivers.health import DeviceState, SelfTestResult, failed_self_test
from drivers.serial_link import SerialLink
from drivers.signature.frames import Frame
from drivers.signature.messages import HostCommand, MessageError, PenReport, QueryReply
from drivers.signature.protocol import SignatureStream

BAUD_RATES = (38400, 19200)  # probed in this order: newer ISDV4 models, then older ones, as host drivers do
QUERY_TIMEOUT_S = 1.0  # wacom_w8001.c waits 1 s (HZ) for the query reply
STOP_SETTLE_S = 0.25  # wacom_w8001.c waits 250 ms after '0' (stop) before querying
PEN_UP_QUIET_S = 1.5  # a signature is over when the pen has stayed up this long
MAX_SIGNATURE_S = 30.0  # hard end of a capture, pen or no pen
PACKET_POLL_S = 0.05  # how often the capture loop looks at the clock while no packet comes
SLOW_ANSWER_S = 0.25  # a query slower than this makes the self-test report "degraded"
MAX_POINTS = 20_000  # cap on the points of one signature (about 150 s of pen at 133 reports/s)
MAX_BAD_PACKETS = 50  # broken packets tolerated in a capture; beyond, only while good ones outnumber them 1:2
RENDER_WIDTH = 800  # PNG width; height follows the pad's aspect ratio
GOOD_POINTS = 100  # a signature with this many points or more is not short
GOOD_EXTENT = 0.25  # ... and one whose ink spans this fraction of the pad's diagonal is not tiny
MIN_QUALITY = 0.30  # below this a signature is a scribble or a dot: the agent reports the pad degraded

NAME = "signature"

Point = tuple[int, int, int]  # x, y, pressure in the pad's units
Stroke = tuple[Point, ...]


@dataclass(frozen=True, slots=True)
class SignatureCapture:
    """Pen strokes in pad units (until pen-up), the rendered PNG, and a quality 0..1."""

    strokes: tuple[Stroke, ...]
    png: bytes
    width: int  # of the PNG
    height: int
    quality: float
    max_x: int  # the pad's coordinate maxima from its query reply
    max_y: int
    max_pressure: int
    bad_packets: int = 0  # broken packets skipped (resynced past) during the query and the capture
    query_s: float = 0.0  # how long the pen query that opened this capture took, the stop's settle time aside


class SignaturePad:
    """A Wacom ISDV4 (W8001) serial pen tablet."""

    name = NAME

    def __init__(
        self,
        port: str,
        baud: int | None = None,
        *,
        timeout_s: float | None = None,
        quiet_s: float | None = None,
        max_duration_s: float | None = None,
        min_quality: float | None = None,
    ) -> None:
        self.port = port
        self.configured_baud = baud  # None: no rate configured, probe 38400 then 19200
        self.timeout_s = QUERY_TIMEOUT_S if timeout_s is None else timeout_s
        self.quiet_s = PEN_UP_QUIET_S if quiet_s is None else quiet_s
        self.max_duration_s = MAX_SIGNATURE_S if max_duration_s is None else max_duration_s
        self.min_quality = MIN_QUALITY if min_quality is None else min_quality
        self.bad_packets = 0  # broken packets skipped during the last query or capture
        self.query_s = 0.0  # how long the last query's answering attempt took, the stop's settle time aside
        first = baud or BAUD_RATES[0]
        self._link: SerialLink[Frame] = SerialLink(port, first, device=NAME, decoder=SignatureStream())

    @property
    def baud(self) -> int:
        """The rate the pad answered at (after a fallback, not necessarily the configured one)."""
        return self._link.baud

    def open(self) -> None:
        """Open the port. :raises DeviceDisconnected:"""
        self._link.open()

    def close(self) -> None:
        self._link.close()

    def __enter__(self) -> SignaturePad:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def query(self) -> QueryReply:
        """Stop the pad and ask its maxima; on no answer, retry at the other baud rate.

        The rate tried first is the one that last answered, else the configured one, else
        38400; then the others in BAUD_RATES order.

        :raises DeviceTimeout: no answer at either rate
        :raises DeviceReportedError: the pad reports a zero-size sensor (code 0)
        :raises DeviceProtocolError: :raises DeviceDisconnected:
        """
        rates = [self._link.baud] + [b for b in BAUD_RATES if b != self._link.baud]
        garbled: DeviceProtocolError | None = None
        for baud in rates:
            self._link.set_baud(baud)
            started = time.monotonic()
            try:
                reply = self._query_once()
            except DeviceTimeout:
                continue
            except DeviceProtocolError as exc:  # a real UART at the wrong rate reads garbage, not silence
                garbled = garbled or exc
                continue
            self.query_s = time.monotonic() - started - STOP_SETTLE_S
            return reply
        self._link.set_baud(rates[0])
        if garbled is not None:
            raise garbled
        raise DeviceTimeout(
            f"no answer from the signature pad on {self.port} at {' or '.join(str(b) for b in rates)} baud",
            device=NAME,
            port=self.port,
        )

    def self_test(self) -> SelfTestResult:
        """Query the pad, timed; degraded when slow, at the other baud or after skipping broken packets; never raises."""
        tried = f"stop and pen query on {self.port} at {' then '.join(str(b) for b in BAUD_RATES)} baud"
        try:
            reply = self.query()
        except DriverError as exc:
            return failed_self_test(
                NAME,
                exc,
                tried,
                {
                    DeviceDisconnected: f"no signature pad port at {self.port}: check its USB-serial cable and "
                    "the port path",
                    DeviceTimeout: f"no answer from the signature pad on {self.port} at 38400 or 19200 baud: "
                    "check the cable and the pad's power",
                    DeviceProtocolError: f"garbled packets from the signature pad on {self.port} at {self.baud} "
                    "baud: check the cable, its ground and its length",
                    DeviceReportedError: f"the signature pad on {self.port} reports a sensor of zero size: "
                    "power-cycle it; replace it if this stays",
                },
            )
        elapsed = self.query_s
        detail = (
            f"pad answers on {self.port} at {self.baud} baud: {reply.max_x} x {reply.max_y}, "
            f"{reply.max_pressure + 1} pressure levels, firmware {reply.version}"
        )
        problems: list[str] = []
        if self.configured_baud is not None and self.baud != self.configured_baud:
            problems.append(f"configured for {self.configured_baud} baud: set {self.baud} in the config")
        if self.bad_packets:
            problems.append(
                f"recovered from {self.bad_packets} broken packets (skipped): check the cable and its ground"
            )
        if elapsed > SLOW_ANSWER_S:
            problems.append(
                f"slow answer ({elapsed * 1000:.0f} ms, usually under {SLOW_ANSWER_S * 1000:.0f} ms): "
                "check the cable and the pad's power"
            )
        if problems:
            return SelfTestResult(
                NAME,
                DeviceState.DEGRADED,
                detail=f"{detail}; {'; '.join(problems)}",
                hint=problems[0],
                tried=tried,
            )
        return SelfTestResult(NAME, DeviceState.OK, detail=detail, tried=tried)

    def capture_signature(self) -> SignatureCapture:
        """Start the pad and collect strokes until the pen stays up ``quiet_s`` (or ``max_duration_s``).

        A signature never written comes back with no strokes and quality 0.

        :raises DeviceTimeout: :raises DeviceDisconnected: :raises DeviceProtocolError:
        :raises DeviceReportedError:
        """
        reply = self.query()
        query_s = self.query_s
        with self._link.request():
            self._link.send(HostCommand.START.value)
            try:
                strokes = self._collect_strokes()
            finally:
                # if the port went while capturing, the error that ended the capture tells
                with contextlib.suppress(DeviceDisconnected):
                    self._link.send(HostCommand.STOP.value)
        png, width, height = render_png(strokes, reply.max_x, reply.max_y, reply.max_pressure)
        return SignatureCapture(
            strokes=strokes,
            png=png,
            width=width,
            height=height,
            quality=signature_quality(strokes, reply.max_x, reply.max_y),
            max_x=reply.max_x,
            max_y=reply.max_y,
            max_pressure=reply.max_pressure,
            bad_packets=self.bad_packets,
            query_s=query_s,
        )

    # -- exchanges --------------------------------------------------------------------

    def _query_once(self) -> QueryReply:
        self.bad_packets = 0
        with self._link.request():
            self._link.send(HostCommand.STOP.value)
            self._link.pause(STOP_SETTLE_S)
            self._link.discard_pending()  # pen packets sent before the stop took effect
            self._link.send(HostCommand.PEN_QUERY.value)
            deadline = time.monotonic() + self.timeout_s
            while True:
                try:
                    frame = self._link.receive(deadline - time.monotonic())
                except DeviceProtocolError:
                    self.bad_packets += 1  # resync and keep waiting for the reply
                    continue
                except DeviceTimeout:
                    if self.bad_packets:
                        raise DeviceProtocolError(
                            f"signature pad on {self.port}: only broken packets ({self.bad_packets}) "
                            f"at {self._link.baud} baud, no query reply",
                            device=NAME,
                            port=self.port,
                        ) from None
                    raise
                if frame.is_control:
                    break  # pen packets still in flight are skipped
        try:
            reply = QueryReply.from_frame(frame)
        except MessageError as exc:
            raise DeviceProtocolError(str(exc), device=NAME, port=self.port) from exc
        if reply.max_x == 0 or reply.max_y == 0:
            raise DeviceReportedError(
                f"signature pad on {self.port} reports a zero-size sensor ({reply.max_x} x {reply.max_y})",
                device=NAME,
                port=self.port,
                code=0,
            )
        return reply

    def _collect_strokes(self) -> tuple[Stroke, ...]:
        strokes: list[Stroke] = []
        current: list[Point] = []
        points = 0
        good_packets = 0
        started = time.monotonic()
        pen_up_since: float | None = None
        while True:
            now = time.monotonic()
            if now - started >= self.max_duration_s:
                break
            if strokes and not current and pen_up_since is not None and now - pen_up_since >= self.quiet_s:
                break
            try:
                frame = self._link.receive(PACKET_POLL_S)
            except DeviceTimeout:
                continue
            except DeviceProtocolError:
                self.bad_packets += 1
                if self.bad_packets > MAX_BAD_PACKETS and self.bad_packets > 2 * good_packets:
                    raise  # mostly noise: the line is too bad to trust the strokes
                continue
            good_packets += 1
            if frame.is_control:
                continue
            report = PenReport.from_frame(frame)
            if report.tip and report.proximity:
                if points < MAX_POINTS:
                    current.append((report.x, report.y, report.pressure))
                    points += 1
                pen_up_since = None
            else:
                if current:
                    strokes.append(tuple(current))
                    current = []
                if pen_up_since is None:
                    pen_up_since = time.monotonic()
        if current:
            strokes.append(tuple(current))
        return tuple(strokes)


def render_png(
    strokes: tuple[Stroke, ...], max_x: int, max_y: int, max_pressure: int
) -> tuple[bytes, int, int]:
    """Draw the strokes black on white, line width from pressure; returns PNG bytes, width, height."""
    width = RENDER_WIDTH
    height = max(1, round(RENDER_WIDTH * max_y / max(1, max_x)))
    scale = width / max(1, max_x)
    image = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(image)
    for stroke in strokes:
        for (x0, y0, p0), (x1, y1, _) in itertools.pairwise(stroke):
            line_width = 1 + round(3 * p0 / max(1, max_pressure))
            draw.line((x0 * scale, y0 * scale, x1 * scale, y1 * scale), fill=0, width=line_width)
        if len(stroke) == 1:
            x, y, _ = stroke[0]
            draw.point((x * scale, y * scale), fill=0)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue(), width, height


def signature_quality(strokes: tuple[Stroke, ...], max_x: int, max_y: int) -> float:
    """0..1: enough points, and ink spread over enough of the pad."""
    points = [p for stroke in strokes for p in stroke]
    if not points:
        return 0.0
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    extent = math.hypot(max(xs) - min(xs), max(ys) - min(ys)) / max(1.0, math.hypot(max_x, max_y))
    return round(min(1.0, len(points) / GOOD_POINTS) * min(1.0, extent / GOOD_EXTENT), 3)
