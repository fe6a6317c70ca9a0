"""One UART link shared by the serial drivers: a port opened by path, a reader thread, one request in flight.

The reader thread owns reading: it feeds every byte to the driver's protocol layer (a
``StreamDecoder``) and queues what comes out (frames, or the protocol errors met while
resyncing). The caller's thread owns writing, under the request lock, so there is one
request in flight per link. A lost port (unplug, EIO) fails the waiting request with
``DeviceDisconnected``; the next request reopens the port by its path.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Generic, Protocol, TypeVar

import serial

from drivers.errors import DeviceDisconnected, DeviceProtocolError, DeviceTimeout

READ_POLL_S = 0.2  # the reader's read timeout; close() wakes it sooner with cancel_read()
WRITE_TIMEOUT_S = 2.0  # a pty or UART that takes longer than this to accept bytes is stuck
EVENT_QUEUE_MAX = 8192  # frames waiting for the device layer; beyond this the oldest are dropped

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class StreamDecoder(Protocol[T_co]):
    """A driver's protocol layer: bytes in, frames (or the protocol errors of a resync) out."""

    def feed(self, data: bytes) -> Sequence[T_co | DeviceProtocolError]: ...

    def reset(self) -> None: ...


class _LinkLost:
    """Queued by the reader thread when the port fails; the waiter turns it into DeviceDisconnected."""

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause


class SerialLink(Generic[T]):
    """A serial port opened by path, read by its own thread, with one request in flight."""

    def __init__(self, port: str, baud: int, *, device: str, decoder: StreamDecoder[T]) -> None:
        self.port = port
        self.device = device
        self._baud = baud
        self._decoder = decoder
        self._decoder_lock = threading.Lock()
        self._request_lock = threading.RLock()
        self._events: queue.Queue[T | DeviceProtocolError | _LinkLost] = queue.Queue(EVENT_QUEUE_MAX)
        self._serial: serial.Serial | None = None
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()

    # -- public -----------------------------------------------------------------------

    @property
    def baud(self) -> int:
        return self._baud

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def set_baud(self, baud: int) -> None:
        """Change the line speed (applied at once when open). :raises DeviceDisconnected:"""
        self._baud = baud
        ser = self._serial
        if ser is None:
            return
        try:
            ser.baudrate = baud
        except (serial.SerialException, OSError) as exc:
            self._drop()
            raise self._disconnected(f"cannot set {baud} baud", exc) from exc

    def open(self) -> None:
        """Open the port by its path and start the reader. :raises DeviceDisconnected:"""
        with self._request_lock:
            if self._serial is not None:
                return
            ser = serial.Serial(
                baudrate=self._baud,
                bytesize=serial.EIGHTBITS,
                parity=serial.PARITY_NONE,
                stopbits=serial.STOPBITS_ONE,
                timeout=READ_POLL_S,
                write_timeout=WRITE_TIMEOUT_S,
                exclusive=True,
            )
            ser.port = self.port
            try:
                ser.open()
            except (serial.SerialException, OSError) as exc:
                raise self._disconnected("cannot open the port", exc) from exc
            with self._decoder_lock:
                self._decoder.reset()
                self._drain()
            self._stop = threading.Event()
            self._serial = ser
            self._reader = threading.Thread(
                target=self._read_loop, args=(ser, self._stop), name=f"{self.device}-reader", daemon=True
            )
            self._reader.start()

    def close(self) -> None:
        """Stop the reader and release the port; safe to call twice."""
        with self._request_lock:
            self._drop()

    @contextmanager
    def request(self) -> Iterator[None]:
        """Hold the link for one exchange: reopen if the port was lost, forget stale replies."""
        with self._request_lock:
            if self._reader is not None and not self._reader.is_alive():
                self._drop()  # the port failed since the last request: reopen it by path
            self.open()
            with self._decoder_lock:
                self._decoder.reset()
                self._drain()
            yield

    def send(self, data: bytes) -> None:
        """Write ``data``. :raises DeviceDisconnected: :raises DeviceTimeout:"""
        ser = self._serial
        if ser is None:
            raise DeviceDisconnected(
                f"{self.device} port {self.port} is not open", device=self.device, port=self.port
            )
        try:
            ser.write(data)
        except serial.SerialTimeoutException as exc:
            raise DeviceTimeout(
                f"{self.device} on {self.port} did not accept {len(data)} bytes within {WRITE_TIMEOUT_S} s",
                device=self.device,
                port=self.port,
            ) from exc
        except (serial.SerialException, OSError) as exc:
            self._drop()
            raise self._disconnected("write failed", exc) from exc

    def receive(self, timeout_s: float) -> T:
        """The next frame from the device.

        :raises DeviceTimeout: nothing within ``timeout_s``
        :raises DeviceProtocolError: the protocol layer met a corrupt frame
        :raises DeviceDisconnected: the port failed while waiting
        """
        try:
            event = self._events.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            raise DeviceTimeout(
                f"no answer from the {self.device} on {self.port} at {self._baud} baud within {timeout_s:g} s",
                device=self.device,
                port=self.port,
            ) from None
        if isinstance(event, _LinkLost):
            self._drop()
            raise self._disconnected("the port went away", event.cause) from event.cause
        if isinstance(event, DeviceProtocolError):
            raise event
        return event

    def pause(self, seconds: float) -> None:
        """Sleep while holding the link (a settle time the protocol asks for)."""
        time.sleep(seconds)

    def discard_pending(self) -> None:
        """Forget frames already received (e.g. a stream the host has just stopped)."""
        with self._decoder_lock:
            self._decoder.reset()
            self._drain()

    # -- private ----------------------------------------------------------------------

    def _disconnected(self, what: str, exc: BaseException) -> DeviceDisconnected:
        return DeviceDisconnected(
            f"{self.device} port {self.port}: {what} ({exc}); check that the device is plugged in "
            "and the port path is right",
            device=self.device,
            port=self.port,
        )

    def _drain(self) -> None:
        while True:
            try:
                self._events.get_nowait()
            except queue.Empty:
                return

    def _post(self, event: T | DeviceProtocolError | _LinkLost) -> None:
        try:
            self._events.put_nowait(event)
        except queue.Full:
            with contextlib.suppress(queue.Empty):
                self._events.get_nowait()  # nobody is listening: keep the newest
            self._events.put_nowait(event)

    def _read_loop(self, ser: serial.Serial, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                data = ser.read(max(1, ser.in_waiting))
            except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
                # TypeError/AttributeError: pyserial's fd vanished under a concurrent close
                if not stop.is_set():
                    self._post(_LinkLost(exc))
                return
            if not data:
                continue
            with self._decoder_lock:
                if stop.is_set():
                    return
                for event in self._decoder.feed(data):
                    self._post(event)

    def _drop(self) -> None:
        ser, reader = self._serial, self._reader
        self._serial, self._reader = None, None
        self._stop.set()
        if ser is not None:
            # the port may already be gone: then the reader's read fails and it exits by itself
            with contextlib.suppress(serial.SerialException, OSError, AttributeError, TypeError):
                ser.cancel_read()
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=5.0)
        if ser is not None:
            with contextlib.suppress(serial.SerialException, OSError):  # a vanished port: nothing to release
                ser.close()


__all__ = ["SerialLink", "StreamDecoder"]
