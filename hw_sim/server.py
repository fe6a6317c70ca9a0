"""The simulator process: the simulated peripherals, the fault board, the resident desk, a control socket.

``DIR`` holds everything a client needs::

    DIR/fingerprint   -> /dev/pts/N     (pty symlinks of the serial devices)
    DIR/signature     -> /dev/pts/M
    DIR/control.sock                    (JSON lines: one request, one reply per line)
    DIR/sim.pid

A simulator started by a service (``ektp-agent run --simulate``) has that service as its
owner (``owner_pid``) and stops when it is gone, even after a SIGKILL; one started by hand
has none and runs until it is stopped.

Control requests and replies::

    {"op": "status"}                                 -> {"ok": true, "devices": {name: {..., "fault": kind|null}},
                                                         "pid": N, "owner_pid": N|null, ...}
    {"op": "fault", "device": D, "kind": K, "for": S|null}
    {"op": "clear", "device": D|null}
    {"op": "present", "seed": N, "finger": P|null, "repeat": [[POSITION, PLACED], ...]}
        (P: the finger the resident places next, 1..10; repeat: asked for finger POSITION, the
        resident places finger PLACED again, an operator's slip the capture must refuse)
    errors                                            -> {"ok": false, "error": "..."}
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hw_sim.device import SimDevice
from hw_sim.faults import DEVICES, FaultBoard, FaultKind
from hw_sim.residents import ResidentDesk, synthetic_resident

CONTROL_SOCKET = "control.sock"
PID_FILE = "sim.pid"
ACCEPT_POLL_S = 0.2  # how often the control thread looks at its stop flag
CLIENT_TIMEOUT_S = 5.0
MAX_REQUEST_BYTES = 64 * 1024
SUN_PATH_MAX = 107  # a Unix socket path: sun_path holds 108 bytes on Linux, with its NUL

# Device name -> (module, class). Imported lazily: a simulator runs with whichever devices exist.
DEVICE_CLASSES: dict[str, tuple[str, str]] = {
    "fingerprint": ("hw_sim.fingerprint", "SimFingerprint"),
    "signature": ("hw_sim.signature", "SimSignaturePad"),
    "iris": ("hw_sim.iris", "SimIris"),
    "camera": ("hw_sim.camera", "SimCamera"),
}
OPS = ("status", "fault", "clear", "present")


class SimError(RuntimeError):
    """The simulator cannot start or run as asked."""


class SimAlreadyRunning(SimError):
    """Another simulator serves this directory."""


class DeviceUnavailable(SimError):
    """A device's simulator module is not installed."""


def device_class(name: str) -> type[SimDevice]:
    """The simulator class of device ``name``. :raises DeviceUnavailable: :raises KeyError:"""
    module_name, class_name = DEVICE_CLASSES[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise DeviceUnavailable(f"no simulator for {name}: module {module_name} is missing") from exc
    cls: type[SimDevice] = getattr(module, class_name)
    return cls


def running_pid(sim_dir: Path) -> int | None:
    """The pid of a live simulator serving ``sim_dir``, or None (a stale pid file does not count)."""
    sock_path = sim_dir / CONTROL_SOCKET
    try:
        pid = int((sim_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        pid = None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(sock_path))
        except OSError:
            return None
    return pid if pid is not None else -1


class SimServer:
    """Runs the simulated devices of one directory and answers its control socket."""

    def __init__(
        self,
        sim_dir: Path,
        devices: Sequence[str] = DEVICES,
        *,
        seed: int = 1,
        throttle: bool = False,
        instant_pen: bool = False,
        skip_unavailable: bool = False,
        owner_pid: int | None = None,
    ) -> None:
        unknown = [d for d in devices if d not in DEVICE_CLASSES]
        if unknown:
            raise SimError(f"unknown device {unknown[0]!r}; expected one of {', '.join(DEVICE_CLASSES)}")
        self.sim_dir = Path(sim_dir)
        self.requested = tuple(devices)
        self.throttle = throttle
        self.instant_pen = instant_pen  # the pad streams a signature at once, not at the pen's pace
        self.skip_unavailable = skip_unavailable
        self.owner_pid = owner_pid  # the service that started it and that it dies with; None: by hand
        self.faults = FaultBoard()
        self.desk = ResidentDesk()
        self.desk.present(seed)
        self.devices: dict[str, SimDevice] = {}
        self.skipped: dict[str, str] = {}
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def control_path(self) -> Path:
        return self.sim_dir / CONTROL_SOCKET

    def start(self) -> None:
        """Start every device and the control socket. :raises SimAlreadyRunning: :raises SimError:"""
        self.sim_dir.mkdir(parents=True, exist_ok=True)
        pid = running_pid(self.sim_dir)
        if pid is not None:
            who = f" (pid {pid})" if pid > 0 else ""
            raise SimAlreadyRunning(f"a simulator already runs for {self.sim_dir}{who}")
        if len(os.fsencode(self.control_path)) > SUN_PATH_MAX:
            raise SimError(f"{self.control_path} is too long for a Unix socket path: use a shorter --dir")
        try:
            for name in self.requested:
                self._start_device(name)
            self._serve()
        except BaseException:
            self.stop()
            raise
        (self.sim_dir / PID_FILE).write_text(f"{os.getpid()}\n")

    def stop(self) -> None:
        """Stop the control socket and every device; remove the socket, the symlinks and the pid file."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(FileNotFoundError):
                self.control_path.unlink()
        for device in reversed(list(self.devices.values())):
            device.stop()
        self.devices.clear()
        pid_file = self.sim_dir / PID_FILE
        with contextlib.suppress(OSError, ValueError):
            if int(pid_file.read_text().strip()) == os.getpid():
                pid_file.unlink()

    def __enter__(self) -> SimServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- requests ---------------------------------------------------------------------

    def handle(self, request: Any) -> dict[str, Any]:
        """Answer one control request (never raises)."""
        if not isinstance(request, dict):
            return _error('a request is a JSON object with an "op"')
        op = request.get("op")
        try:
            if op == "status":
                return self._status()
            if op == "fault":
                device = self._device_arg(request.get("device"))
                kind = _kind_arg(request.get("kind"))
                duration = request.get("for")
                if duration is not None and (
                    not isinstance(duration, int | float) or isinstance(duration, bool) or duration <= 0
                ):
                    raise SimError(f'"for" must be a positive number of seconds, got {duration!r}')
                self.faults.inject(device, kind, None if duration is None else float(duration))
                self._settle([device])
                return {"ok": True, "device": device, "fault": kind.value, "for": duration}
            if op == "clear":
                raw = request.get("device")
                cleared = None if raw is None else self._device_arg(raw)
                self.faults.clear(cleared)
                self._settle(list(self.devices) if cleared is None else [cleared])
                return {"ok": True, "cleared": cleared or "all"}
            if op == "present":
                return self._present(request.get("seed"), request.get("finger"), request.get("repeat"))
        except SimError as exc:
            return _error(str(exc))
        return _error(f"unknown op {op!r}; expected one of {', '.join(OPS)}")

    def _status(self) -> dict[str, Any]:
        devices: dict[str, Any] = {}
        for name, device in self.devices.items():
            fault = self.faults.active(name)
            devices[name] = {**device.status(), "fault": None if fault is None else fault.value}
        return {
            "ok": True,
            "dir": str(self.sim_dir),
            "pid": os.getpid(),
            "owner_pid": self.owner_pid,
            "resident": self.desk.current().seed,
            "devices": devices,
            "unavailable": dict(self.skipped),
            "faults": self.faults.snapshot(),
        }

    def _present(self, seed: Any, finger: Any, repeat: Any = None) -> dict[str, Any]:
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise SimError(f'"seed" must be a non-negative integer, got {seed!r}')
        if finger is not None and (
            not isinstance(finger, int) or isinstance(finger, bool) or not 1 <= finger <= 10
        ):
            raise SimError(f'"finger" must be a finger position 1..10, got {finger!r}')
        if repeat is not None and not isinstance(repeat, list):
            raise SimError(f'"repeat" must be a list of [position, placed] pairs, got {repeat!r}')
        resident = synthetic_resident(seed)
        for pair in repeat or []:
            ok = isinstance(pair, list) and len(pair) == 2 and all(type(p) is int for p in pair)
            try:
                resident = resident.with_repeated_finger(*pair) if ok else resident
            except ValueError:
                ok = False
            if not ok:
                raise SimError(
                    f'"repeat" takes [position, placed] pairs of two different fingers 1..10, got {pair!r}'
                )
        resident = self.desk.present_resident(resident) if repeat else self.desk.present(seed)
        for device in self.devices.values():
            on_present = getattr(device, "on_present", None)
            if callable(on_present):
                on_present(seed, finger)
        return {
            "ok": True,
            "seed": seed,
            "nik": resident.nik,
            "missing_finger": resident.missing_finger,
            "repeats": [list(p) for p in resident.repeats],
        }

    def _device_arg(self, device: Any) -> str:
        if device not in DEVICES:
            raise SimError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
        if device not in self.devices:
            running = ", ".join(self.devices) or "none"
            raise SimError(f"device {device!r} is not running in this simulator; running: {running}")
        return str(device)

    # -- internals --------------------------------------------------------------------

    def _settle(self, names: list[str]) -> None:
        """Wait until the devices have applied a fault change (so an unplug is done when the reply comes)."""
        for name in names:
            settle = getattr(self.devices.get(name), "settle", None)
            if callable(settle):
                settle()

    def _start_device(self, name: str) -> None:
        try:
            cls = device_class(name)
        except DeviceUnavailable as exc:
            if not self.skip_unavailable:
                raise
            self.skipped[name] = str(exc)
            return
        kwargs: dict[str, Any] = {}
        if self.throttle and name in ("fingerprint", "signature"):
            kwargs["throttle"] = True
        if self.instant_pen and name == "signature":
            kwargs["instant"] = True
        device = cls(self.sim_dir, self.faults, self.desk, **kwargs)
        device.start()
        self.devices[name] = device

    def _serve(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.control_path.unlink()  # a stale socket of a simulator that died (checked above)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.control_path))
            sock.listen(8)
            sock.settimeout(ACCEPT_POLL_S)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._accept_loop, args=(sock,), name="sim-control", daemon=True
        )
        self._thread.start()

    def _accept_loop(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                self._converse(conn)

    def _converse(self, conn: socket.socket) -> None:
        conn.settimeout(CLIENT_TIMEOUT_S)
        buf = b""
        try:
            while not self._stop.is_set():
                chunk = conn.recv(4096)
                if not chunk:
                    return
                buf += chunk
                if len(buf) > MAX_REQUEST_BYTES:
                    conn.sendall(_line(_error("request too long")))
                    return
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        conn.sendall(_line(self._answer(line)))
        except OSError:
            return  # the client went away or stalled: drop it

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(f"not JSON: {exc}")
        return self.handle(request)


def _kind_arg(kind: Any) -> FaultKind:
    try:
        return FaultKind(kind)
    except ValueError:
        raise SimError(
            f"unknown fault kind {kind!r}; expected one of {', '.join(k.value for k in FaultKind)}"
        ) from None


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def _line(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply).encode() + b"\n"
