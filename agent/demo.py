"""The demo behind `make run` (`python -m agent.demo`): one kiosk with simulated
peripherals, a local Mosquitto and the reference centre; synthetic residents enrolled
every few seconds; the broker cut for a while and restored; a live view of enrollments,
backlog, link, device health and the centre's count.

Each run starts from an empty directory (default ./var/demo, wiped at start so that
every run is the same), which holds everything of the run::

    kiosk/agent.toml, kiosk/data/      the kiosk: key, outbox, simulator, API socket
    central/central.toml, central/     the centre: keys, store
    broker/mosquitto.conf              the broker's own config (127.0.0.1, a free port)
    logs/agent.log, central.log, mosquitto.log
    children.json                      the children's process groups (a later run reaps them)

Everything is driven through the installed console scripts, as a user would drive them
(`ektp-central keys init`, `ektp-agent keys init`, `ektp-central kiosk add`, the two
`run` services, `ektp-agent enroll --synthetic`, `ektp-agent status --json`,
`ektp-central packets --json`). Each child runs in its own process group and is stopped
on the way out, whatever happened. Ctrl-C or SIGTERM: stop enrolling, give the backlog
a moment to drain, stop the agent (it publishes its offline status), the centre and the
broker, and print a summary; without a terminal its last line is one JSON object.

Exit codes: 0 all well; 1 a receipt was lost or duplicated, a part failed, or the
demo could not start (the message says what to do); 2 usage error.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import click

from agent.demo_view import (
    Event,
    Snapshot,
    human_bytes,
    plain_event,
    plain_line,
    render,
    summary_lines,
)

KIOSK_ID = "320715-01"
MARKER = ".ektp-demo"  # a directory with this file is the demo's own: safe to wipe
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes on Linux; keep a margin
ENROLL_TIMEOUT_S = 120.0
CLI_TIMEOUT_S = 30.0
POLL_S = 1.0  # kiosk status every second; the centre's packets every other poll
AGENT_START_TIMEOUT_S = 60.0
BROKER_START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 15.0
HURRY_S = 2.0  # after a second Ctrl-C, how long a child gets between SIGTERM and SIGKILL
PLAIN_EVERY_S = 5.0
TICK_S = 0.25
EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2
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


class DirError(DemoError):
    """--dir cannot be used (a usage error: exit 2)."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM while starting up."""


@dataclass(frozen=True, slots=True)
class Options:
    root: Path
    duration_s: float | None = None
    enroll_every_s: float = 3.0
    cut_after_s: float = 20.0
    cut_for_s: float = 20.0
    cut_every_s: float = 0.0  # 0: cut once
    drain_timeout_s: float = 15.0
    live: bool = False


@dataclass(frozen=True, slots=True)
class Paths:
    root: Path

    @property
    def kiosk(self) -> Path:
        return self.root / "kiosk"

    @property
    def data(self) -> Path:
        return self.kiosk / "data"

    @property
    def central(self) -> Path:
        return self.root / "central"

    @property
    def broker(self) -> Path:
        return self.root / "broker"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def agent_conf(self) -> Path:
        return self.kiosk / "agent.toml"

    @property
    def central_conf(self) -> Path:
        return self.central / "central.toml"

    @property
    def children(self) -> Path:
        return self.root / "children.json"

    @property
    def longest_socket(self) -> Path:
        return self.data / "sim" / "control.sock"


@dataclass(slots=True)
class Cut:
    at_s: float
    for_s: float
    restored_at_s: float | None = None
    peak_backlog: int = 0
    drained_after_s: float | None = None


# ----------------------------------------------------------------------------- processes


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


def reap_group(pgid: int, grace_s: float = 2.0) -> None:
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

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.scripts = {n: console_script(n) for n in ("ektp-agent", "ektp-central")}
        self._running: set[subprocess.Popen[str]] = set()
        self._lock = threading.Lock()

    def agent(self, *args: str, timeout: float = CLI_TIMEOUT_S) -> Result:
        return self._run("ektp-agent", self.paths.agent_conf, args, timeout)

    def central(self, *args: str, timeout: float = CLI_TIMEOUT_S) -> Result:
        return self._run("ektp-central", self.paths.central_conf, args, timeout)

    def _run(self, tool: str, conf: Path, args: tuple[str, ...], timeout: float) -> Result:
        proc = subprocess.Popen(
            [self.scripts[tool], "--config", str(conf), *args],
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
    started again on the same port for the cut."""

    def __init__(self, paths: Paths, port: int, binary: str) -> None:
        self.port = port
        self.binary = binary
        self.log = paths.logs / "mosquitto.log"
        self.conf = paths.broker / "mosquitto.conf"
        self.conf.write_text(
            f"# the demo's own broker: loopback only, anonymous, no persistence\n"
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
        )
        self.child: Child | None = None

    def start(self) -> Child:
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


def toml_str(value: object) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(str(value))


def write_configs(paths: Paths, port: int) -> None:
    c = paths.central
    paths.agent_conf.write_text(
        "# the demo's kiosk: simulated peripherals, the local broker, quick reconnects\n"
        f"[kiosk]\nid = {toml_str(KIOSK_ID)}\ndata_dir = {toml_str(paths.data)}\n"
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nkeepalive_s = 5\nack_timeout_s = 5\n'
        "reconnect_min_s = 0.5\nreconnect_max_s = 2\n"
        f"[keys]\ncentral_public_key = {toml_str(c / 'central.key.pub')}\n"
        "[health]\ninterval_s = 2\n"
        f"[api]\nsocket = {toml_str(paths.data / 'api.sock')}\n"
    )
    paths.central_conf.write_text(
        "# the demo's centre: the local broker, a SQLite store\n"
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n'
        f"[store]\nurl = {toml_str(c / 'central.db')}\n"
        f"[keys]\ncentral_private_key = {toml_str(c / 'central.key')}\n"
    )


# ----------------------------------------------------------------------------- the directory


def reap_leftovers(paths: Paths) -> int:
    """Stop what a previous run that was killed outright left running in this directory:
    processes of the recorded process groups whose command line names the directory."""
    try:
        recorded = json.loads(paths.children.read_text())
        pgids = {int(p) for p in recorded.values()}
    except (OSError, ValueError, TypeError, AttributeError):
        return 0
    needle = str(paths.root).encode()
    reaped = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            pgid = os.getpgid(pid)
            if pgid in pgids and needle in (entry / "cmdline").read_bytes():
                reaped.add(pid)
                reap_group(pgid)
        except OSError:
            continue
    return len(reaped)


def prepare_dir(paths: Paths) -> int:
    """An empty demo directory: wipe the previous run's (marked) one; never wipe anything else.
    Returns how many processes a killed previous run had left running there (now stopped)."""
    root = paths.root
    if root.exists():
        if not root.is_dir():
            raise DirError(f"{root} exists and is not a directory: pick another --dir")
        if any(root.iterdir()) and not (root / MARKER).exists():
            raise DirError(
                f"{root} is not empty and is not a demo directory (no {MARKER} in it): "
                "refusing to wipe it; pick another --dir or empty it yourself"
            )
        reaped = reap_leftovers(paths)
        shutil.rmtree(root)
    else:
        reaped = 0
    for d in (paths.data, paths.central, paths.broker, paths.logs):
        d.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("made by `python -m agent.demo`; wiped at the start of every demo run\n")
    return reaped


@contextlib.contextmanager
def quiet_terminal() -> Iterator[None]:
    """No echo of typed keys (a "^C" would tear the live view) while the view runs."""
    import termios

    try:
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
    except (termios.error, OSError, ValueError):  # stdin is not a terminal
        yield
        return
    quiet = list(saved)
    quiet[3] &= ~(termios.ECHO | termios.ECHOCTL)
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


def shown_path(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it."""
    try:
        rel = path.relative_to(Path.cwd())
    except ValueError:
        return str(path)
    return f"./{rel}" if str(rel) != "." else "."


# ----------------------------------------------------------------------------- the demo


class Demo:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.paths = Paths(opts.root)
        self.shown_dir = shown_path(opts.root)
        self.lock = threading.Lock()
        self.stop = threading.Event()  # Ctrl-C, SIGTERM, --duration, or a failure
        self.hurry = threading.Event()  # a second Ctrl-C: stop now, no drain
        self.stop_enrolling = threading.Event()
        self.stop_polling = threading.Event()
        self.signals: list[str] = []
        self.t0 = time.monotonic()
        self.phase = "starting"
        self.events: list[Event] = []
        self.problems: list[str] = []
        self.receipts: list[dict[str, Any]] = []
        self.enroll_failures = 0
        self.next_enroll_at: float | None = None
        self.status: dict[str, Any] | None = None
        self.centre_rows: list[dict[str, Any]] | None = None
        self.centre_connected: bool | None = None  # from the centre's log
        self.centre_log_offset = 0
        self.undelivered_ids: set[str] | None = None  # the outbox after the agent stopped
        self.cuts: list[Cut] = []
        self.broker_state = "starting"
        self.next_cut_at: float | None = None  # seconds since t0
        self.restore_at: float | None = None
        self.cli: Cli | None = None
        self.broker: Broker | None = None
        self.agent: Child | None = None
        self.central: Child | None = None
        self.threads: list[threading.Thread] = []
        self.reaped = 0

    # ------------------------------------------------------------------------- bookkeeping

    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, text: str, style: str = "") -> None:
        with self.lock:
            e = Event(round(self.now(), 1), text, style)
            self.events.append(e)
            del self.events[:-50]
            if not self.opts.live:
                print(plain_event(e), flush=True)

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)
        self.event(text, "bold red")
        self.stop.set()

    def snapshot(self) -> Snapshot:
        with self.lock:
            doc = self.status or {}
            queue = doc.get("queue", {})
            link = doc.get("link", {})
            now = self.now()
            return Snapshot(
                elapsed_s=now,
                phase=self.phase,
                kiosk_id=KIOSK_ID,
                data_dir=self.shown_dir,
                enrolled=len(self.receipts),
                enroll_failures=self.enroll_failures,
                last_seq=self.receipts[-1].get("seq") if self.receipts else None,
                next_enroll_in_s=(
                    max(0.0, self.next_enroll_at - time.monotonic()) if self.next_enroll_at else None
                ),
                service=doc.get("service"),
                pending=queue.get("pending"),
                pending_bytes=queue.get("pending_bytes"),
                oldest_pending_age_s=queue.get("oldest_pending_age_s"),
                link_connected=link.get("connected"),
                reconnects=link.get("reconnects"),
                link_error=link.get("last_error") or "",
                devices={
                    n: (str(d.get("state", "?")), str(d.get("detail", "")))
                    for n, d in doc.get("devices", {}).items()
                },
                centre_stored=None if self.centre_rows is None else len(self.centre_rows),
                centre_connected=self.centre_connected,
                broker_port=self.broker.port if self.broker else None,
                broker_state=self.broker_state,
                cut_in_s=(
                    max(0.0, self.next_cut_at - now)
                    if self.next_cut_at is not None and self.broker_state == "up" and self.phase == "running"
                    else None
                ),
                restore_in_s=(
                    max(0.0, self.restore_at - now)
                    if self.restore_at is not None and self.broker_state == "cut"
                    else None
                ),
                cuts_done=len(self.cuts),
                events=tuple(self.events[-8:]),
            )

    def _set(self, **values: Any) -> None:
        with self.lock:
            for k, v in values.items():
                setattr(self, k, v)

    def _record_children(self) -> None:
        groups = {c.name: c.proc.pid for c in (self.agent, self.central) if c is not None}
        if self.broker is not None and self.broker.child is not None:
            groups["mosquitto"] = self.broker.child.proc.pid
        with contextlib.suppress(OSError):
            self.paths.children.write_text(json.dumps(groups))

    # ------------------------------------------------------------------------- signals

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only flags here: the main thread may hold self.lock when the signal lands.
        self.signals.append(signal.Signals(signum).name)
        if self.stop.is_set():
            self.hurry.set()
        self.stop.set()

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    def _check_interrupt(self) -> None:
        if self.stop.is_set():
            raise Interrupted

    # ------------------------------------------------------------------------- the run

    def run(self) -> int:
        """The whole demo; returns the exit code."""
        try:
            binary = mosquitto_binary()
            self.cli = Cli(self.paths)
            if len(str(self.paths.longest_socket).encode()) > SOCKET_PATH_MAX:
                raise DirError(
                    f"--dir {self.opts.root} is too long for the Unix sockets under it "
                    f"({self.paths.longest_socket}): pick a shorter path"
                )
            self.reaped = prepare_dir(self.paths)
        except DemoError as exc:
            click.echo(f"demo: {exc}", err=True)
            return EXIT_USAGE if isinstance(exc, DirError) else EXIT_PROBLEM
        except OSError as exc:
            click.echo(f"demo: cannot prepare {self.opts.root}: {exc}", err=True)
            return EXIT_PROBLEM
        with self._signals():
            if self.opts.live:
                from rich.console import Console
                from rich.live import Live

                console = Console()
                with (
                    quiet_terminal(),
                    Live(
                        console=console,
                        refresh_per_second=2,
                        get_renderable=lambda: render(self.snapshot()),
                        redirect_stderr=True,
                    ),
                ):
                    self._run_all(binary)
            else:
                print(
                    f"e-KTP recorder kit demo: data in {self.shown_dir} (wiped at start, so every run "
                    f"begins the same), logs in {self.shown_dir}/logs",
                    flush=True,
                )
                self._run_all(binary)
            doc = self._summary()
        for line in summary_lines(doc):
            print(line)
        if not self.opts.live:
            print(json.dumps(doc), flush=True)
        return EXIT_OK if doc["ok"] else EXIT_PROBLEM

    def _run_all(self, binary: str) -> None:
        try:
            self._start(binary)
            self._loop()
        except Interrupted:
            pass
        except DemoError as exc:
            self.problem(str(exc))
        except Exception as exc:  # a bug of ours: still stop everything below
            self.problem(f"unexpected error: {exc!r}")
        finally:
            self._shutdown()

    def _start(self, binary: str) -> None:
        assert self.cli is not None
        paths, cli = self.paths, self.cli
        self.event(f"data in {self.shown_dir}: wiped at start, so every run begins the same")
        if self.reaped:
            self.event(f"stopped {self.reaped} process(es) that a killed earlier run left behind", "yellow")
        port = free_port()
        write_configs(paths, port)
        pub = str(paths.data / "kiosk.key.pub")
        steps: list[tuple[str, Callable[[], Result]]] = [
            ("centre keys", functools.partial(cli.central, "keys", "init")),
            ("kiosk key", functools.partial(cli.agent, "keys", "init")),
            (
                "kiosk registration",
                functools.partial(cli.central, "kiosk", "add", KIOSK_ID, "--public-key", pub),
            ),
        ]
        for what, result in steps:
            r = result()
            if r.code != 0:
                raise DemoError(f"{what} failed: {r.why}")
        self.event(f"keys made; kiosk {KIOSK_ID} registered at the centre")
        self._check_interrupt()

        self.broker = Broker(paths, port, binary)
        self.broker.start()
        self._set(broker_state="up")
        self._record_children()
        self.event(f"broker up on 127.0.0.1:{port}")
        self.central = Child(
            "central",
            [cli.scripts["ektp-central"], "--config", str(paths.central_conf), "run"],
            paths.logs / "central.log",
        )
        self._record_children()
        self.agent = Child(
            "agent",
            [cli.scripts["ektp-agent"], "--config", str(paths.agent_conf), "run", "--simulate"],
            paths.logs / "agent.log",
        )
        self._record_children()
        self.event("centre and kiosk service starting (simulated peripherals)")
        self._wait_agent()
        self.event("kiosk service up", "green")
        with self.lock:
            self.phase = "running"
            if self.opts.cut_for_s > 0:
                self.next_cut_at = self.now() + self.opts.cut_after_s
        for name, target in (("demo-poll", self._poll_loop), ("demo-enroll", self._enroll_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self.threads.append(t)

    def _wait_agent(self) -> None:
        assert self.cli is not None and self.agent is not None
        deadline = time.monotonic() + AGENT_START_TIMEOUT_S
        while True:
            self._check_interrupt()
            if not self.agent.alive:
                raise DemoError(
                    f"the kiosk service exited with code {self.agent.proc.returncode}: "
                    f"{log_tail(self.agent.log)} (see {self.agent.log})"
                )
            if self.central is not None and not self.central.alive:
                raise DemoError(
                    f"the centre exited with code {self.central.proc.returncode}: "
                    f"{log_tail(self.central.log)} (see {self.central.log})"
                )
            doc = self.cli.agent("status", "--json").json()
            if isinstance(doc, dict) and doc.get("service") == "running":
                self._set(status=doc)
                return
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the kiosk service did not come up within {AGENT_START_TIMEOUT_S:.0f} s (see {self.agent.log})"
                )
            self.stop.wait(0.3)

    def _loop(self) -> None:
        last_line = time.monotonic()
        while not self.stop.wait(TICK_S):
            if self.opts.duration_s is not None and self.now() >= self.opts.duration_s:
                self.event(f"--duration {self.opts.duration_s:g} s reached: stopping")
                return
            self._check_children()
            self._cut_or_restore()
            if not self.opts.live and time.monotonic() - last_line >= PLAIN_EVERY_S:
                line = plain_line(self.snapshot())
                with self.lock:
                    print(line, flush=True)
                last_line = time.monotonic()
        if self.signals:
            self.event(f"{self.signals[0]}: stopping")

    def _check_children(self) -> None:
        for child in (self.agent, self.central):
            if child is not None and not child.alive:
                raise DemoError(
                    f"{child.name} exited with code {child.proc.returncode}: {log_tail(child.log)} (see {child.log})"
                )
        if self.broker is not None and self.broker_state == "up" and not self.broker.running:
            raise DemoError(f"the broker exited: {log_tail(self.broker.log)} (see {self.broker.log})")

    def _cut_or_restore(self) -> None:
        assert self.broker is not None
        now = self.now()
        if self.broker_state == "up" and self.next_cut_at is not None and now >= self.next_cut_at:
            self.broker.stop(self.hurry)
            with self.lock:
                self.broker_state = "cut"
                self.restore_at = now + self.opts.cut_for_s
                self.cuts.append(Cut(round(now, 1), self.opts.cut_for_s))
                self.next_cut_at = now + self.opts.cut_every_s if self.opts.cut_every_s else None
            self.event(
                f"broker cut for {self.opts.cut_for_s:g} s: enrollments go on, the backlog grows", "bold red"
            )
        elif self.broker_state == "cut" and self.restore_at is not None and now >= self.restore_at:
            self._restore("broker restored: the backlog drains by itself")

    def _restore(self, message: str) -> None:
        assert self.broker is not None
        self.broker.start()
        self._record_children()
        with self.lock:
            self.broker_state = "up"
            self.restore_at = None
            if self.cuts:
                cut = self.cuts[-1]
                cut.restored_at_s = round(self.now(), 1)
                cut.for_s = round(cut.restored_at_s - cut.at_s, 1)  # shorter when restored early
        self.event(message, "bold green")

    # ------------------------------------------------------------------------- the threads

    def _enroll_loop(self) -> None:
        """One synthetic resident every --enroll-every seconds, seeds 1, 2, 3, ..."""
        assert self.cli is not None
        every = self.opts.enroll_every_s
        seed = 1
        next_at = time.monotonic() + min(1.0, every)
        while True:
            self._set(next_enroll_at=next_at)
            if self.stop_enrolling.wait(max(0.0, next_at - time.monotonic())):
                break
            next_at = time.monotonic() + every
            self._set(next_enroll_at=None)
            r = self.cli.agent(
                "enroll", "--synthetic", "--count", "1", "--seed", str(seed), timeout=ENROLL_TIMEOUT_S
            )
            seed += 1
            receipts = []
            for line in r.out.splitlines():
                with contextlib.suppress(ValueError):
                    doc = json.loads(line)
                    if isinstance(doc, dict) and "packet_id" in doc:
                        receipts.append(doc)
            with self.lock:
                self.receipts.extend(receipts)
                if r.code != 0:
                    self.enroll_failures += 1
                offline = self.broker_state == "cut"
            for doc in receipts:
                where = ": kept on the kiosk, the broker is cut" if offline else ""
                self.event(f"enrolled seq {doc.get('seq')} ({human_bytes(doc.get('bytes'))}){where}")
            if r.code != 0 and not self.stop_enrolling.is_set():
                self.event(f"enrollment failed: {r.why}", "red")
        self._set(next_enroll_at=None)

    def _poll_loop(self) -> None:
        n = 0
        while not self.stop_polling.is_set():
            try:
                self._read_centre_log()
                self._poll_status()
                if n % 2 == 0:
                    self._poll_centre()
            except Exception as exc:  # keep polling: the view says what it can
                self.event(f"poll failed: {exc!r}", "red")
            n += 1
            self.stop_polling.wait(POLL_S)

    def _poll_status(self) -> None:
        assert self.cli is not None
        doc = self.cli.agent("status", "--json").json()  # exit 1 (a device in fault) still prints it
        if not isinstance(doc, dict) or doc.get("service") != "running":
            return
        notes: list[tuple[str, str]] = []
        with self.lock:
            prev = self.status or {}
            self.status = doc
            pending = doc.get("queue", {}).get("pending")
            link, prev_link = doc.get("link", {}), prev.get("link", {})
            if prev_link and link.get("connected") != prev_link.get("connected"):
                if link.get("connected"):
                    notes.append((f"link up again (reconnect {link.get('reconnects')})", "green"))
                else:
                    notes.append((f"link down: {link.get('last_error') or 'no broker'}", "red"))
            for name, d in doc.get("devices", {}).items():
                before = prev.get("devices", {}).get(name, {}).get("state")
                if before is not None and before != d.get("state"):
                    notes.append((f"{name}: {before} -> {d.get('state')}", "yellow"))
            cut = self.cuts[-1] if self.cuts else None
            if cut is not None and cut.drained_after_s is None and isinstance(pending, int):
                cut.peak_backlog = max(cut.peak_backlog, pending)
                if cut.restored_at_s is not None and pending == 0:
                    cut.drained_after_s = round(self.now() - cut.restored_at_s, 1)
                    notes.append(
                        (
                            f"backlog drained: {cut.peak_backlog} packet(s) delivered "
                            f"{cut.drained_after_s:g} s after the restore",
                            "bold green",
                        )
                    )
        for text, style in notes:
            self.event(text, style)

    def _poll_centre(self) -> bool:
        assert self.cli is not None
        rows = self.cli.central("packets", "--kiosk", KIOSK_ID, "--json").json()
        if isinstance(rows, list):
            self._set(centre_rows=rows)
            return True
        return False

    def _read_centre_log(self) -> None:
        """The centre's own link state, from its log lines (it has no status command)."""
        try:
            with open(self.paths.logs / "central.log", "rb") as f:
                f.seek(self.centre_log_offset)
                chunk = f.read()
        except OSError:
            return
        end = chunk.rfind(b"\n") + 1  # whole lines only
        self.centre_log_offset += end
        for line in chunk[:end].decode(errors="replace").splitlines():
            if "ektp.central: connected to" in line:
                again = self.centre_connected is False
                self._set(centre_connected=True)
                self.event(
                    "centre reconnected to the broker" if again else "centre connected to the broker",
                    "green" if again else "",
                )
            elif "ektp.central: disconnected from" in line and self.centre_connected:
                self._set(centre_connected=False)
                self.event("centre lost the broker; it retries with backoff", "red")

    # ------------------------------------------------------------------------- stopping

    def _shutdown(self) -> None:
        """Stop everything in order, whatever happened before; every step runs."""
        self._set(phase="stopping")
        self._step("stop enrolling", self._stop_enrolling)
        if not self.problems and not self.hurry.is_set():
            self._step("drain", self._drain)
        self._set(phase="stopping")
        self._step("stop polling", self._stop_polling)
        for child in (self.agent, self.central):
            if child is not None:
                self._step(f"stop {child.name}", functools.partial(self._stop_child, child))
        if self.broker is not None:
            broker = self.broker
            self._step("stop the broker", lambda: broker.stop(self.hurry))
            self._set(broker_state="stopped")
        if self.cli is not None:
            self.cli.kill_all()
        with contextlib.suppress(OSError):
            self.paths.children.unlink()
        self._step("final figures", self._final_figures)
        self._set(phase="stopped")

    def _final_figures(self) -> None:
        """With everything stopped: the centre's packets and what stays in the kiosk's outbox."""
        if self.cli is None or self.agent is None:
            return
        if not self._poll_centre():
            self.problem("cannot list the centre's packets (`ektp-central packets --json`)")
        queue = self.cli.agent("queue", "--json")  # the service is down: reads the outbox
        rows = queue.json()
        if not isinstance(rows, list):
            self.problem(f"cannot read the kiosk's outbox: {queue.why}")
            return
        with self.lock:
            self.undelivered_ids = {str(r.get("packet_id")) for r in rows}
            status = dict(self.status or {})
            status["service"] = "stopped"
            status["queue"] = {
                "pending": len(rows),
                "pending_bytes": sum(int(r.get("bytes", 0)) for r in rows),
                "oldest_pending_age_s": None,
            }
            self.status = status

    def _step(self, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            self.problem(f"{what}: {exc!r}")

    def _join(self, thread: threading.Thread) -> None:
        while thread.is_alive():
            thread.join(0.2)
            if self.hurry.is_set() and self.cli is not None:
                self.cli.kill_all()

    def _stop_enrolling(self) -> None:
        self.stop_enrolling.set()
        for t in self.threads:
            if t.name == "demo-enroll":
                self._join(t)

    def _stop_polling(self) -> None:
        self.stop_polling.set()
        for t in self.threads:
            if t.name == "demo-poll":
                self._join(t)

    def _drain(self) -> None:
        """Before stopping, let the backlog reach the centre (restoring a cut broker)."""
        if self.agent is None or not self.agent.alive or not self.threads:
            return
        self._poll_status()  # fresh: the last enrollment may have just been committed
        pending = self.snapshot().pending
        if not pending:
            return
        self._set(phase="draining")
        if self.broker_state == "cut":
            self._restore("broker restored early, to drain the backlog before stopping")
        self.event(
            f"waiting up to {self.opts.drain_timeout_s:g} s for the backlog of {pending} to drain "
            "(Ctrl-C again to skip)"
        )
        deadline = time.monotonic() + self.opts.drain_timeout_s
        while time.monotonic() < deadline and not self.hurry.is_set():
            if self.snapshot().pending == 0:
                return
            time.sleep(TICK_S)
        self.event(
            f"backlog of {self.snapshot().pending} not drained: it stays in the kiosk's outbox", "yellow"
        )

    def _stop_child(self, child: Child) -> None:
        what = {"agent": "kiosk service", "central": "centre"}.get(child.name, child.name)
        self.event(f"stopping the {what} (SIGTERM)")
        code = child.stop(self.hurry)
        if code == 0:
            self.event(f"{what} stopped")
        elif code == -signal.SIGKILL and self.hurry.is_set():
            self.event(f"{what} killed (second Ctrl-C)", "yellow")
        else:
            self.problem(f"the {what} exited with code {code} (see {child.log})")

    # ------------------------------------------------------------------------- the summary

    def _summary(self) -> dict[str, Any]:
        """Receipts against the centre's store: each delivered once, the rest still in the outbox."""
        with self.lock:
            problems = list(self.problems)
            rows = list(self.centre_rows or [])
            undelivered_ids = set(self.undelivered_ids or ())
        ids = [str(r.get("packet_id")) for r in self.receipts]
        at_centre = Counter(str(r.get("packet_id")) for r in rows)
        seqs = Counter(r.get("seq") for r in rows)
        duplicates = sum(c - 1 for c in at_centre.values() if c > 1) + sum(
            c - 1 for c in seqs.values() if c > 1
        )
        missing = [pid for pid in ids if at_centre[pid] == 0]
        undelivered = [pid for pid in missing if pid in undelivered_ids]
        lost = len(missing) - len(undelivered)
        exactly_once = duplicates == 0 and lost == 0 and len(set(ids)) == len(ids)
        status = self.status or {}
        cuts = [asdict(c) for c in self.cuts]
        return {
            "summary": "ektp demo",
            "ok": exactly_once and not problems,
            "duration_s": round(self.now(), 1),
            "enrolled": len(ids),
            "enroll_failures": self.enroll_failures,
            "centre_stored": len(rows),
            "delivered": len(ids) - len(missing),
            "undelivered": len(undelivered),
            "lost": lost,
            "duplicates": duplicates,
            "unexpected_at_centre": len(set(at_centre) - set(ids)),
            "exactly_once": exactly_once,
            "broker_cuts": len(self.cuts),
            "backlog_drained": bool(self.cuts) and all(c.drained_after_s is not None for c in self.cuts),
            "cuts": cuts,
            "reconnects": status.get("link", {}).get("reconnects"),
            "problems": problems,
            "dir": self.shown_dir,
        }


# ----------------------------------------------------------------------------- the command


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--duration",
    "duration_s",
    type=click.FloatRange(min=1),
    default=None,
    metavar="S",
    help="Stop by itself after S seconds (default: run until Ctrl-C).",
)
@click.option(
    "--dir",
    "root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("var/demo"),
    show_default=True,
    help="The demo's directory (configs, keys, stores, logs); wiped at start.",
)
@click.option(
    "--enroll-every",
    "enroll_every_s",
    type=click.FloatRange(min=0.5),
    default=3.0,
    show_default=True,
    metavar="S",
    help="Enroll one synthetic resident every S seconds.",
)
@click.option(
    "--cut-after",
    "cut_after_s",
    type=click.FloatRange(min=0),
    default=20.0,
    show_default=True,
    metavar="S",
    help="Cut the broker S seconds after the kiosk is up.",
)
@click.option(
    "--cut-for",
    "cut_for_s",
    type=click.FloatRange(min=0),
    default=20.0,
    show_default=True,
    metavar="S",
    help="Keep the broker cut for S seconds (0: never cut it).",
)
@click.option(
    "--cut-every",
    "cut_every_s",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="S",
    help="Cut it again every S seconds (0: once).",
)
@click.option(
    "--drain-timeout",
    "drain_timeout_s",
    type=click.FloatRange(min=0),
    default=15.0,
    show_default=True,
    metavar="S",
    help="On stopping, wait up to S seconds for the backlog to reach the centre.",
)
@click.option("--plain", is_flag=True, help="Plain progress lines even on a terminal.")
def main(
    duration_s: float | None,
    root: Path,
    enroll_every_s: float,
    cut_after_s: float,
    cut_for_s: float,
    cut_every_s: float,
    drain_timeout_s: float,
    plain: bool,
) -> None:
    """The e-KTP recorder kit demo: a kiosk with simulated peripherals, a local Mosquitto
    and the centre; residents enrolled every few seconds; the broker cut and restored;
    a live view of the backlog, the link and the devices. Ctrl-C stops it cleanly.

    \b
    Examples:
      python -m agent.demo
      python -m agent.demo --duration 60 --cut-after 10 --cut-for 10 --dir /tmp/demo
    """
    if cut_every_s and cut_every_s <= cut_for_s:
        raise click.BadParameter("must be longer than --cut-for", param_hint="--cut-every")
    opts = Options(
        root=root.expanduser().absolute(),
        duration_s=duration_s,
        enroll_every_s=enroll_every_s,
        cut_after_s=cut_after_s,
        cut_for_s=cut_for_s,
        cut_every_s=cut_every_s,
        drain_timeout_s=drain_timeout_s,
        live=sys.stdout.isatty() and not plain,
    )
    sys.exit(Demo(opts).run())


if __name__ == "__main__":
    main(prog_name="python -m agent.demo")
