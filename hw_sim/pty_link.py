"""Serial ports for simulated devices: a raw pty pair whose slave is exposed as a stable symlink.

The driver opens the symlink (``DIR/fingerprint`` -> ``/dev/pts/N``) with pyserial, exactly
as it opens ``/dev/ttyAMA0`` on a kiosk. Unplugging closes the master (the driver's
reads fail with EIO) and removes the symlink (a reopen fails as for a missing port);
replugging makes a new pty behind the same symlink path.

``SerialSimDevice`` is the common core of the simulated UART devices: a thread that
reads what the driver sends, applies the fault board (unplug, timeout, slow, garbage;
the device-specific faults are the subclass's), checks the line speed the driver set
and lets the subclass answer with the driver's own codec.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import os
import random
import select
import termios
import threading
import time
import tty
from pathlib import Path
from typing import ClassVar

from hw_sim.device import SimDevice
from hw_sim.faults import FaultBoard, FaultKind
from hw_sim.residents import ResidentDesk

SIM_POLL_S = 0.05  # how often a device thread looks at the fault board and its stop flag
SIM_SLOW_DELAY_S = 0.5  # the "slow" fault's extra latency per exchange; below the drivers' 1 s timeouts
WRITE_STALL_S = 2.0  # a driver that reads nothing for this long loses the rest of a reply (as on a UART)

_SPEEDS = {
    getattr(termios, f"B{rate}"): rate
    for rate in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)
    if hasattr(termios, f"B{rate}")
}


class PtyPort:
    """One pseudo-terminal pair, its slave reachable through ``link``."""

    def __init__(self, link: Path, *, throttle_baud: int | None = None) -> None:
        self.link = link
        self.throttle_baud = throttle_baud  # real-speed writes: 10 bit times per byte
        self._master: int | None = None
        self._slave: int | None = None
        self.slave_name: str | None = None

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def plug(self) -> None:
        if self._master is not None:
            return
        master, slave = os.openpty()
        tty.setraw(slave)  # a fresh pty is cooked: echo and CR/LF translation would mangle frames
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.slave_name = os.ttyname(slave)
        tmp = self.link.with_name(f".{self.link.name}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(self.slave_name)
        os.replace(tmp, self.link)  # atomic: a driver never sees the path half-made

    def unplug(self) -> None:
        # Only our own link: a simulator that took this path over since (a service started
        # again while this one was still stopping) keeps its device. Compared while our pty
        # is still open, so its name cannot have been given to the other one.
        with contextlib.suppress(OSError):
            if self.slave_name is not None and os.readlink(self.link) == self.slave_name:
                self.link.unlink()
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None
        self.slave_name = None

    def line_baud(self) -> int | None:
        """The speed the driver set on its side of the line (a pty stores it and ignores it)."""
        if self._slave is None:
            return None
        try:
            speed = termios.tcgetattr(self._slave)[5]
        except termios.error:
            return None
        return _SPEEDS.get(speed)

    def read(self, timeout_s: float) -> bytes:
        master = self._master
        if master is None:
            time.sleep(timeout_s)
            return b""
        ready, _, _ = select.select([master], [], [], timeout_s)
        if not ready:
            return b""
        try:
            return os.read(master, 4096)
        except BlockingIOError:
            return b""
        except OSError as exc:
            if exc.errno == errno.EIO:  # nobody holds the slave: nothing to read
                return b""
            raise

    def write(self, data: bytes, stop: threading.Event | None = None) -> None:
        master = self._master
        if master is None:
            return
        if self.throttle_baud:
            time.sleep(len(data) * 10 / self.throttle_baud)
        view = memoryview(data)
        deadline = time.monotonic() + WRITE_STALL_S
        while view:
            try:
                sent = os.write(master, view)
            except BlockingIOError:
                sent = 0
            except OSError:
                return  # the pty went away under us (unplug): the bytes go nowhere, as on a cut cable
            view = view[sent:]
            if view:
                if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                    return
                select.select([], [master], [], SIM_POLL_S)


class SerialSimDevice(SimDevice):
    """A simulated UART peripheral: the thread, the pty and the generic faults."""

    default_baud: ClassVar[int]

    def __init__(
        self,
        sim_dir: Path,
        faults: FaultBoard,
        desk: ResidentDesk,
        *,
        baud: int | None = None,
        throttle: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(sim_dir, faults, desk)
        self.baud = baud or self.default_baud
        self.port = PtyPort(sim_dir / self.name, throttle_baud=self.baud if throttle else None)
        self.rng = random.Random(f"{self.name}-{seed}")
        self.counters = {"requests": 0, "replies": 0, "bad_frames": 0, "baud_mismatches": 0, "ignored": 0}
        self._stop = threading.Event()
        self._applied = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> Path:
        return self.port.link

    def start(self) -> None:
        self.sim_dir.mkdir(parents=True, exist_ok=True)
        self._stop.clear()
        self.port.plug()
        self._thread = threading.Thread(target=self._run, name=f"sim-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self.port.unplug()

    def status(self) -> dict[str, object]:
        return {
            "path": str(self.port.link),
            "pty": self.port.slave_name,
            "plugged": self.port.plugged,
            "baud": self.baud,
            "line_baud": self.port.line_baud(),
            **self.counters,
        }

    def on_present(self, seed: int, finger: int | None = None) -> None:
        """A new resident stands at the kiosk (the desk already knows); reset per-resident state."""

    @abc.abstractmethod
    def on_bytes(self, data: bytes, fault: FaultKind | None) -> None:
        """Decode what the driver sent with the driver's codec and answer through ``send``."""

    @abc.abstractmethod
    def reset_stream(self) -> None:
        """Forget a partial request (the line was replugged)."""

    def send(self, raw: bytes) -> None:
        self.counters["replies"] += 1
        self.port.write(raw, self._stop)

    def junk(self, count: int, alphabet: bytes) -> bytes:
        return bytes(self.rng.choice(alphabet) for _ in range(count))

    def settle(self, timeout_s: float = 1.0) -> None:
        """Return once the device thread has applied the fault board (a plug or unplug is done)."""
        if self._thread is None or not self._thread.is_alive():
            return
        self._applied.clear()
        self._applied.wait(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.faults.active(self.name) is FaultKind.UNPLUG:
                if self.port.plugged:
                    self.port.unplug()
                self._applied.set()
                self._stop.wait(SIM_POLL_S)
                continue
            if not self.port.plugged:
                self.port.plug()
                self.reset_stream()
            self._applied.set()
            data = self.port.read(SIM_POLL_S)
            if not data:
                continue
            fault = self.faults.active(
                self.name
            )  # read after the bytes came: a fault acts on the next exchange
            if self.port.line_baud() != self.baud:
                self.counters["baud_mismatches"] += 1  # at the wrong rate a UART hears only noise
                continue
            if fault is FaultKind.UNPLUG:
                continue  # unplugged while the bytes were on the way: they are lost
            if fault is FaultKind.TIMEOUT:
                self.counters["ignored"] += 1
                continue
            if fault is FaultKind.SLOW:
                self._stop.wait(SIM_SLOW_DELAY_S)
            self.on_bytes(data, fault)
