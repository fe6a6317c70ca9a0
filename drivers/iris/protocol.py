"""Iris protocol layer: buffers bulk IN bytes into frames (resyncing on garbage) and runs one
request/reply exchange at a time over a claimed USB interface.

It knows frames and sequence numbers, not what an op means. pyusb's exceptions stop here:
``USBTimeoutError`` becomes ``DeviceTimeout``, any other ``USBError`` ``DeviceDisconnected``.
"""

from __future__ import annotations

import errno
import time
from typing import Any

import usb.core

from drivers.errors import DeviceDisconnected, DeviceProtocolError, DeviceTimeout, DriverError
from drivers.iris import frames
from drivers.iris.frames import MAGIC, REPLY_FLAG, BadFrame, Frame

EP_OUT = 0x01
EP_IN = 0x81
# One bulk read takes up to a whole frame; the device ends each reply with a short packet.
READ_SIZE = frames.MAX_FRAME
MAX_BUFFER = 2 * frames.MAX_FRAME


class FrameReader:
    """Bytes in, frames out: skips to the next "IR" on garbage, drops frames with a bad CRC."""

    def __init__(self, *, device: str = frames.DEVICE, max_buffer: int = MAX_BUFFER) -> None:
        self.device = device
        self.max_buffer = max_buffer
        self.discarded = 0  # garbage bytes skipped since the last reset
        self._buf = bytearray()

    def reset(self) -> None:
        self._buf.clear()
        self.discarded = 0

    def feed(self, data: bytes) -> None:
        self._buf += data
        excess = len(self._buf) - self.max_buffer
        if excess > 0:  # a caller feeding without reading: keep the newest bytes only
            del self._buf[:excess]
            self.discarded += excess

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes arrive.

        :raises BadFrame: a complete frame failed its CRC (it is consumed; call again for the next)
        """
        buf = self._buf
        while buf:
            start = buf.find(MAGIC)
            if start < 0:
                keep = 1 if buf[-1:] == MAGIC[:1] else 0  # a lone "I" may start the next frame
                self._skip(len(buf) - keep)
                return None
            if start:
                self._skip(start)
            try:
                frame, used = frames.decode(buf)
            except BadFrame as exc:
                if exc.frame_size:
                    del buf[: exc.frame_size]
                    raise
                self._skip(1)
                continue
            if frame is None:
                return None
            del buf[:used]
            return frame
        return None

    def _skip(self, count: int) -> None:
        del self._buf[:count]
        self.discarded += count


def usb_error(exc: usb.core.USBError, *, device: str, port: str, doing: str) -> DriverError:
    """The driver error for a pyusb error raised while ``doing`` something."""
    if isinstance(exc, usb.core.USBTimeoutError) or exc.errno == errno.ETIMEDOUT:
        return DeviceTimeout(f"{device} on {port} did not answer while {doing}", device=device, port=port)
    if exc.errno == errno.EACCES:
        return DeviceDisconnected(
            f"no permission to use {device} on {port} while {doing}; install the udev rule "
            "(docs/operations.md) or run the agent as its service user",
            device=device,
            port=port,
        )
    return DeviceDisconnected(
        f"{device} on {port} is gone ({exc}) while {doing}; check the USB cable", device=device, port=port
    )


class BulkLink:
    """One claimed vendor interface: write a request frame, read until the reply with its seq."""

    def __init__(self, dev: Any, *, device: str, port: str, seq: int = 0) -> None:
        self.dev = dev
        self.device = device
        self.port = port
        self.reader = FrameReader(device=device)
        self.stale_replies = 0
        self.skipped_bytes = 0  # garbage skipped before replies that did come (the exchange recovered)
        self.last_round_trip_s = 0.0  # request written until its reply was read, of the last exchange
        self.slowest_round_trip_s = 0.0  # of every exchange since the caller last set it to 0
        self.seq = seq  # the last seq sent; carried over to the next link so a late reply never matches

    def exchange(self, op: int, payload: bytes, timeout_s: float) -> bytes:
        """Send ``op`` and return its reply's payload.

        :raises DeviceTimeout: no reply within ``timeout_s``
        :raises DeviceProtocolError: a corrupt reply, or only garbage within ``timeout_s``
        :raises DeviceDisconnected: the device went away
        """
        self.seq = seq = (self.seq + 1) & 0xFFFF
        self.reader.reset()  # bytes left from an earlier exchange are stale
        started = time.monotonic()
        deadline = started + timeout_s
        doing = f"sending op 0x{op:02x}"
        try:
            self.dev.write(EP_OUT, frames.encode(Frame(op, seq, payload)), _ms(timeout_s))
            doing = f"waiting for the reply to op 0x{op:02x}"
            while True:
                frame = self.reader.next_frame()
                if frame is not None:
                    if frame.seq == seq and frame.op == op | REPLY_FLAG:
                        self.skipped_bytes += self.reader.discarded
                        self.last_round_trip_s = time.monotonic() - started
                        self.slowest_round_trip_s = max(self.slowest_round_trip_s, self.last_round_trip_s)
                        return frame.payload
                    self.stale_replies += 1  # the late reply of an earlier, timed-out request
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._no_reply(op, timeout_s)
                chunk = self.dev.read(EP_IN, READ_SIZE, _ms(remaining))
                self.reader.feed(bytes(chunk))
        except usb.core.USBTimeoutError as exc:
            raise self._no_reply(op, timeout_s) from exc
        except usb.core.USBError as exc:
            raise usb_error(exc, device=self.device, port=self.port, doing=doing) from exc
        except BadFrame as exc:
            raise DeviceProtocolError(
                f"{self.device} on {self.port} sent a corrupt reply to op 0x{op:02x}: {exc}; "
                "check the USB cable and port",
                device=self.device,
                port=self.port,
            ) from exc

    def _no_reply(self, op: int, timeout_s: float) -> DriverError:
        if self.reader.discarded:
            return DeviceProtocolError(
                f"{self.device} on {self.port} sent {self.reader.discarded} bytes of garbage and no valid "
                f"reply to op 0x{op:02x}; check the USB cable and port",
                device=self.device,
                port=self.port,
            )
        return DeviceTimeout(
            f"{self.device} on {self.port} did not answer op 0x{op:02x} within {timeout_s:g} s",
            device=self.device,
            port=self.port,
        )


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
