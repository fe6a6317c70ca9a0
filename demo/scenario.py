"""What the demo does, start to end: make keys and register the kiosk, start the broker,
the centre and the kiosk service, enroll and watch (``demo.activity``), cut the broker
and restore it on schedule, and on the way out (Ctrl-C, SIGTERM, --duration, or a
failure) stop enrolling, let the backlog drain, stop every child and sum up.

Exit codes: 0 all well; 1 a receipt was lost or duplicated, a part failed, or the
demo could not start (the message says what to do); 2 usage error.
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import click

from demo.activity import Enroller, Watcher, centre_rows
from demo.stack import Broker, Child, Cli, DemoError, Result, free_port, log_tail, mosquitto_binary
from demo.state import Cut, DemoState
from demo.view import plain_line, quiet_terminal, render, summary_lines
from demo.workdir import (
    KIOSK_ID,
    DirError,
    Paths,
    prepare_dir,
    record_children,
    shown_path,
    write_configs,
)

AGENT_START_TIMEOUT_S = 60.0
PLAIN_EVERY_S = 5.0
TICK_S = 0.25
EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


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
    first_line_note: str = ""  # said before anything else (e.g. why it stops by itself)


class Demo:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.paths = Paths(opts.root)
        self.state = DemoState(live=opts.live, shown_dir=shown_path(opts.root), duration_s=opts.duration_s)
        self.stop = self.state.stop  # Ctrl-C, SIGTERM, --duration, or a problem
        self.hurry = threading.Event()  # a second Ctrl-C: stop now, no drain
        self.signals: list[str] = []
        self.cli: Cli | None = None
        self.broker: Broker | None = None
        self.agent: Child | None = None
        self.central: Child | None = None
        self.enroller: Enroller | None = None
        self.watcher: Watcher | None = None
        self.threads: list[threading.Thread] = []
        self.reaped = 0

    # ------------------------------------------------------------------------- signals

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only flags here: the main thread may hold the state's lock when the signal lands.
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
        st = self.state
        if self.opts.first_line_note:
            print(self.opts.first_line_note, flush=True)
        try:
            binary = mosquitto_binary()
            self.cli = Cli(self.paths.agent_conf, self.paths.central_conf)
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

                with (
                    quiet_terminal(),
                    Live(
                        console=Console(),
                        refresh_per_second=2,
                        get_renderable=lambda: render(st.snapshot()),
                        redirect_stderr=True,
                    ),
                ):
                    self._run_all(binary)
            else:
                print(
                    f"e-KTP recorder kit demo: data in {st.shown_dir} (wiped at start, so every run "
                    f"begins the same), logs in {st.shown_dir}/logs",
                    flush=True,
                )
                self._run_all(binary)
            doc = st.summary()
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
            self.state.problem(str(exc))
        except Exception as exc:  # a bug of ours: still stop everything below
            self.state.problem(f"unexpected error: {exc!r}")
        finally:
            self._shutdown()

    def _start(self, binary: str) -> None:
        assert self.cli is not None
        paths, cli, st = self.paths, self.cli, self.state
        st.event(f"data in {st.shown_dir}: wiped at start, so every run begins the same")
        if self.reaped:
            st.event(f"stopped {self.reaped} process(es) that a killed earlier run left behind", "yellow")
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
        st.event(f"keys made; kiosk {KIOSK_ID} registered at the centre")
        self._check_interrupt()

        self.broker = Broker(paths.broker_conf, paths.logs / "mosquitto.log", port, binary)
        self.broker.start()
        st.set(broker_state="up", broker_port=port)
        self._record_children()
        st.event(f"broker up on 127.0.0.1:{port}")
        self.central = Child("central", cli.service_argv("ektp-central"), paths.logs / "central.log")
        self._record_children()
        self.agent = Child("agent", cli.service_argv("ektp-agent"), paths.logs / "agent.log")
        self._record_children()
        st.event("centre and kiosk service starting (simulated peripherals)")
        self._wait_agent()
        st.event("kiosk service up", "green")
        with st.lock:
            st.phase = "running"
            if self.opts.cut_for_s > 0:
                st.next_cut_at = st.now() + self.opts.cut_after_s
        self.watcher = Watcher(st, cli, paths.logs / "central.log")
        self.enroller = Enroller(st, cli, self.opts.enroll_every_s)
        for name, target in (("demo-poll", self.watcher.run), ("demo-enroll", self.enroller.run)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self.threads.append(t)

    def _wait_agent(self) -> None:
        assert self.cli is not None and self.agent is not None
        deadline = time.monotonic() + AGENT_START_TIMEOUT_S
        while True:
            self._check_interrupt()
            if not self.agent.alive:
                raise DemoError(f"the kiosk service {self.agent.exited()}")
            if self.central is not None and not self.central.alive:
                raise DemoError(f"the centre {self.central.exited()}")
            doc = self.cli.agent("status", "--json").json()
            if isinstance(doc, dict) and doc.get("service") == "running":
                self.state.apply_status(doc)
                return
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the kiosk service did not come up within {AGENT_START_TIMEOUT_S:.0f} s (see {self.agent.log})"
                )
            self.stop.wait(0.3)

    def _record_children(self) -> None:
        groups = {c.name: c.proc.pid for c in (self.agent, self.central) if c is not None}
        if self.broker is not None and self.broker.child is not None:
            groups["mosquitto"] = self.broker.child.proc.pid
        record_children(self.paths, groups)

    def _loop(self) -> None:
        st = self.state
        last_line = time.monotonic()
        while not self.stop.wait(TICK_S):
            if self.opts.duration_s is not None and st.now() >= self.opts.duration_s:
                st.event(f"--duration {self.opts.duration_s:g} s reached: stopping")
                return
            self._check_children()
            self._cut_or_restore()
            if not self.opts.live and time.monotonic() - last_line >= PLAIN_EVERY_S:
                line = plain_line(st.snapshot())
                with st.lock:
                    print(line, flush=True)
                last_line = time.monotonic()
        if self.signals:
            st.event(f"{self.signals[0]}: stopping")

    def _check_children(self) -> None:
        for child in (self.agent, self.central):
            if child is not None and not child.alive:
                raise DemoError(f"{child.name} {child.exited()}")
        if self.broker is not None and self.state.broker_state == "up" and not self.broker.running:
            raise DemoError(f"the broker exited: {log_tail(self.broker.log)} (see {self.broker.log})")

    def _cut_or_restore(self) -> None:
        assert self.broker is not None
        st, opts = self.state, self.opts
        now = st.now()
        if st.broker_state == "up" and st.next_cut_at is not None and now >= st.next_cut_at:
            with st.lock:  # said before the broker goes, so the watcher names the cut as the demo's
                st.broker_state = "cut"
                st.link_cut = True
                st.restore_at = now + opts.cut_for_s
                st.cuts.append(Cut(round(now, 1), opts.cut_for_s))
                st.next_cut_at = now + opts.cut_every_s if opts.cut_every_s else None
            self.broker.stop(self.hurry)
            st.event(f"broker cut for {opts.cut_for_s:g} s: enrollments go on, the backlog grows", "bold red")
        elif st.broker_state == "cut" and st.restore_at is not None and now >= st.restore_at:
            self._restore("broker restored: the backlog drains by itself")

    def _restore(self, message: str) -> None:
        assert self.broker is not None
        st = self.state
        self.broker.start()
        self._record_children()
        with st.lock:
            st.broker_state = "up"
            st.restore_at = None
            if st.cuts:
                cut = st.cuts[-1]
                cut.restored_at_s = round(st.now(), 1)
                cut.for_s = round(cut.restored_at_s - cut.at_s, 1)  # shorter when restored early
        st.event(message, "bold green")

    # ------------------------------------------------------------------------- stopping

    def _shutdown(self) -> None:
        """Stop everything in order, whatever happened before; every step runs."""
        st = self.state
        st.set(phase="stopping")
        self._step("stop enrolling", functools.partial(self._stop_thread, self.enroller, "demo-enroll"))
        if not st.problems and not self.hurry.is_set():
            self._step("drain", self._drain)
        st.set(phase="stopping")
        self._step("stop polling", functools.partial(self._stop_thread, self.watcher, "demo-poll"))
        for child in (self.agent, self.central):
            if child is not None:
                self._step(f"stop {child.name}", functools.partial(self._stop_child, child))
        if self.broker is not None:
            broker = self.broker
            self._step("stop the broker", lambda: broker.stop(self.hurry))
            st.set(broker_state="stopped")
        if self.cli is not None:
            self.cli.kill_all()
        with contextlib.suppress(OSError):
            self.paths.children.unlink()
        self._step("final figures", self._final_figures)
        st.set(phase="stopped")

    def _final_figures(self) -> None:
        """With everything stopped: the centre's packets and what stays in the kiosk's outbox."""
        st = self.state
        if self.cli is None or self.agent is None:
            return
        receipts = st.receipts_now()
        queue = self.cli.agent("queue", "--json")  # the service is down: reads the outbox
        rows = queue.json()
        rows_at_centre = centre_rows(self.cli)
        if rows_at_centre is None:
            st.problem("cannot list the centre's packets (`ektp-central packets --json`)")
        if not isinstance(rows, list):
            st.problem(f"cannot read the kiosk's outbox: {queue.why}")
            return
        with st.lock:
            st.undelivered_ids = {str(r.get("packet_id")) for r in rows}
            status = dict(st.status or {})
            status["service"] = "stopped"
            status["queue"] = {
                "pending": len(rows),
                "pending_bytes": sum(int(r.get("bytes", 0)) for r in rows),
                "oldest_pending_age_s": None,
            }
            st.status = status
        if rows_at_centre is not None:
            st.take_reading(receipts, status, rows_at_centre)

    def _step(self, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            self.state.problem(f"{what}: {exc!r}")

    def _stop_thread(self, owner: Enroller | Watcher | None, name: str) -> None:
        if owner is not None:
            owner.stopping.set()
        for thread in self.threads:
            if thread.name != name:
                continue
            while thread.is_alive():
                thread.join(0.2)
                if self.hurry.is_set() and self.cli is not None:
                    self.cli.kill_all()

    def _drain(self) -> None:
        """Before stopping, let the backlog reach the centre (restoring a cut broker)."""
        st = self.state
        if self.agent is None or not self.agent.alive or self.watcher is None:
            return
        self.watcher.poll_status()  # fresh: the last enrollment may have just been committed
        pending = st.pending()
        if not pending:
            return
        st.set(phase="draining")
        if st.broker_state == "cut":
            self._restore("broker restored early, to drain the backlog before stopping")
        st.event(
            f"waiting up to {self.opts.drain_timeout_s:g} s for the backlog of {pending} to drain "
            "(Ctrl-C again to skip)"
        )
        deadline = time.monotonic() + self.opts.drain_timeout_s
        while time.monotonic() < deadline and not self.hurry.is_set():
            if st.pending() == 0:
                return
            time.sleep(TICK_S)
        st.event(f"backlog of {st.pending()} not drained: it stays in the kiosk's outbox", "yellow")

    def _stop_child(self, child: Child) -> None:
        st = self.state
        what = {"agent": "kiosk service", "central": "centre"}.get(child.name, child.name)
        st.event(f"stopping the {what} (SIGTERM)")
        code = child.stop(self.hurry)
        if code == 0:
            st.event(f"{what} stopped")
        elif code == -signal.SIGKILL and self.hurry.is_set():
            st.event(f"{what} killed (second Ctrl-C)", "yellow")
        else:
            st.problem(f"the {what} exited with code {code} (see {child.log})")
