"""The processes the demo starts and stops: the long-running children (Mosquitto, the
centre, the kiosk service), each in its own process group with its output in a log file,
and the console scripts' short commands.

Each child runs in its own process group, so Ctrl-C at the terminal reaches the demo
alone, and a stop takes the whole group (a kiosk service's simulator with it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLI_TIMEOUT_S = 30.0
BROKER_START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 15.0
HURRY_S = 2.0  # after a second Ctrl-C, how long a child gets between SIGTERM and SIGKILL
REAP_GRACE_S = 2.0
# What a child must not inherit: systemd's notify/socket variables (the agent would
# notify the demo's own unit) and config locations (every child gets --config).
CHILD_ENV_DROP = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "RUNTIME_DIRECTORY",
    "EKTP_CONFIG",
    "EKTP_CENTRAL_CONFIG",
)


class DemoError(Exception):
    """The demo cannot go on; the message says why and what to do."""


def console_script(name: str) -> str:
    """The console script beside this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found:
        return found
    raise DemoError(f"the console script {name} is not installed beside {sys.executable}: run `make setup`")


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin:/usr/local/sbin")
    if not found:
        raise DemoError(
            "mosquitto is not installed: run `make setup` (it installs it), "
            "or `sudo apt-get install mosquitto`, then run the demo again"
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
    except OSError:
        return False
    return True


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it no longer exists."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def reap_group(pgid: int, grace_s: float = REAP_GRACE_S) -> None:
    """Whatever is left in a stopped child's group (e.g. a SIGKILLed agent's simulator)."""
    if not signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not signal_group(pgid, 0):
            return
        time.sleep(0.05)
    signal_group(pgid, signal.SIGKILL)


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float, hurry: threading.Event) -> int:
    """SIGTERM the child's process group, wait for it, SIGKILL it if it lingers; its exit code."""
    if proc.poll() is None:
        signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            if hurry.is_set():
                deadline = min(deadline, time.monotonic() + HURRY_S)
            time.sleep(0.05)
    if proc.poll() is None:
        signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
    reap_group(proc.pid)
    return proc.returncode


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CHILD_ENV_DROP}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


class Child:
    """A long-running child in its own process group, its output in a log file."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                env=child_env(),
            )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, hurry: threading.Event) -> int:
        return stop_process(self.proc, STOP_TIMEOUT_S, hurry)

    def exited(self) -> str:
        """Why it is gone, for a message: its exit code and the tail of its log."""
        return f"exited with code {self.proc.returncode}: {log_tail(self.log)} (see {self.log})"


@dataclass(frozen=True, slots=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def why(self) -> str:
        lines = [line for line in self.err.strip().splitlines() if line.strip()]
        return lines[-1] if lines else f"exit code {self.code}"

    def json(self) -> Any:
        """The command's JSON output, None when it printed none."""
        try:
            return json.loads(self.out)
        except ValueError:
            return None


class Cli:
    """Runs the console scripts' short commands, each in its own process group (so that
    Ctrl-C at the terminal reaches the demo alone), and can kill whatever still runs."""

    def __init__(self, agent_conf: Path, central_conf: Path) -> None:
        self.confs = {"ektp-agent": agent_conf, "ektp-central": central_conf}
        self.scripts = {n: console_script(n) for n in ("ektp-agent", "ektp-central")}
        self._running: set[subprocess.Popen[str]] = set()
        self._lock = threading.Lock()

    def agent(self, *args: str, timeout: float = CLI_TIMEOUT_S) -> Result:
        return self._run("ektp-agent", args, timeout)

    def central(self, *args: str, timeout: float = CLI_TIMEOUT_S) -> Result:
        return self._run("ektp-central", args, timeout)

    def service_argv(self, tool: str) -> list[str]:
        """The long-running service of ``tool`` with the demo's config."""
        run = ["run", "--simulate"] if tool == "ektp-agent" else ["run"]
        return [self.scripts[tool], "--config", str(self.confs[tool]), *run]

    def _run(self, tool: str, args: tuple[str, ...], timeout: float) -> Result:
        proc = subprocess.Popen(
            [self.scripts[tool], "--config", str(self.confs[tool]), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env=child_env(),
        )
        with self._lock:
            self._running.add(proc)
        try:
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                signal_group(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
                err += f"\n{tool} {' '.join(args)}: no answer within {timeout:.0f} s"
        finally:
            with self._lock:
                self._running.discard(proc)
        return Result(proc.returncode, out, err)

    def kill_all(self) -> None:
        with self._lock:
            running = list(self._running)
        for proc in running:
            signal_group(proc.pid, signal.SIGKILL)


class Broker:
    """The demo's Mosquitto: loopback only, no persistence, its own config; stopped and
    started again on the same port for a cut."""

    def __init__(self, conf: Path, log: Path, port: int, binary: str) -> None:
        self.port = port
        self.binary = binary
        self.log = log
        self.conf = conf
        self.conf.write_text(
            f"# the demo's own broker: loopback only, anonymous, no persistence\n"
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
        )
        self.child: Child | None = None

    def start(self) -> Child:
        """:raises DemoError: it did not listen in time (the message has its log's tail)"""
        self.child = Child("mosquitto", [self.binary, "-c", str(self.conf)], self.log)
        deadline = time.monotonic() + BROKER_START_TIMEOUT_S
        while not port_open(self.port):
            if not self.child.alive or time.monotonic() > deadline:
                self.stop(threading.Event())
                raise DemoError(
                    f"mosquitto did not start on 127.0.0.1:{self.port}: {log_tail(self.log) or 'no output'}"
                    f" (see {self.log})"
                )
            time.sleep(0.05)
        return self.child

    def stop(self, hurry: threading.Event) -> None:
        if self.child is not None:
            self.child.stop(hurry)
        self.child = None

    @property
    def running(self) -> bool:
        return self.child is not None and self.child.alive
