"""The kiosk commands of `ektp-agent`: run, status, diag, queue, sync, enroll
(export and resubmit: :mod:`agent.cli_outbox`).

`status`, `diag` and `queue` work with the service down (they read the outbox
read-only and probe free peripherals directly), because that is when a technician
needs them; `sync` and `enroll` need the running service (exit 3 without it).

Packets the centre rejected are a problem until a technician resubmits them: `status`,
`queue` and `sync` exit 1 and say so while there are any. `status` says every problem the
health document shows (agent.health.assess) in words and exits 1 while there is one.

Plain output: on a terminal rich wraps it at the terminal's width (packet ids are never
cut); piped or redirected, nothing is wrapped or cut, so a script or grep sees whole lines.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agent.api import ApiError, ServiceNotRunning
from agent.api import call as _api_call
from agent.api import request as _api_request
from agent.cli import (
    EXIT_NOT_RUNNING,
    EXIT_OK,
    EXIT_PROBLEM,
    EXIT_USAGE,
    Context,
    emit_json,
    fail,
    main,
    pass_ctx,
)
from agent.config import AgentConfig, ConfigError, check_environment
from agent.devices import DEVICE_NAMES, SELF_TEST_TIMEOUT_S, as_configured, build_drivers
from agent.health import (
    NOT_YET_TESTED,
    HealthReporter,
    assess,
    damage_problem,
    finding,
    rejection_problem,
)
from agent.outbox import Outbox, OutboxError, StoreNotFound
from drivers.health import DeviceState, SelfTestResult
from wire.keys import KeyFileError

STATE_STYLE = {"ok": "green", "degraded": "yellow", "fault": "bold red", "absent": "red"}
SYNC_POLL_S = 0.5
WAIT_POLL_S = 0.2  # status --wait: how often it asks whether the service answers yet
PLAIN_WIDTH = 1_000_000  # piped output: wide enough that rich never wraps or cuts a line
PACKET_ID_WIDTH = 36  # a canonical UUID: the queue table never cuts one, even on a narrow terminal
# How long each command waits for the service's answer before saying it does not answer.
STATUS_TIMEOUT_S = 20.0
QUEUE_TIMEOUT_S = 30.0
SYNC_TIMEOUT_S = 30.0
DIAG_TIMEOUT_S = 60.0  # a self-test of every device, each bounded by SELF_TEST_TIMEOUT_S


def _console() -> Console:
    """Rich on a terminal (wrapped at its width); piped, plain lines that are never wrapped or cut."""
    if sys.stdout.isatty():
        return Console(highlight=False)
    return Console(highlight=False, soft_wrap=True, width=PLAIN_WIDTH)


def _print_table(con: Console, table: Table) -> None:
    """A table; piped, without the padding rich puts after the last column."""
    if con.is_terminal:
        con.print(table)
        return
    with con.capture() as captured:
        con.print(table)
    click.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


def _socket_named(config: AgentConfig, exc: PermissionError) -> PermissionError:
    """connect(2) says EACCES without a path: name the API socket, for the group's one line."""
    if exc.filename is not None:
        return exc
    return PermissionError(exc.errno, exc.strerror, str(config.api_socket))


def call(config: AgentConfig, op: str, *, timeout: float, **args: Any) -> list[dict[str, Any]]:
    """One request to the running service (agent.api.call), a refused socket named."""
    try:
        return _api_call(config.api_socket, op, timeout=timeout, **args)
    except PermissionError as exc:
        raise _socket_named(config, exc) from exc


def request(config: AgentConfig, op: str, *, timeout: float, **args: Any) -> Any:
    """A streamed request to the running service (agent.api.request), a refused socket named."""
    try:
        yield from _api_request(config.api_socket, op, timeout=timeout, **args)
    except PermissionError as exc:
        raise _socket_named(config, exc) from exc


def _simulated(config: AgentConfig) -> bool:
    from hw_sim.control import SimControl, SimControlError, SimNotRunning

    try:
        SimControl(config.sim_dir, timeout_s=2).status()
    except (SimNotRunning, SimControlError):
        return False
    return True


def probe_devices(config: AgentConfig, names: list[str] | None = None) -> dict[str, SelfTestResult]:
    """Self-test peripherals directly (the service is down): in parallel, each bounded in time."""
    drivers = build_drivers(config, simulate=_simulated(config))
    wanted = [n for n in (names or list(DEVICE_NAMES))]
    results: dict[str, SelfTestResult] = {}
    pool = concurrent.futures.ThreadPoolExecutor(len(wanted) or 1, thread_name_prefix="probe")
    futures = {n: pool.submit(drivers[n].self_test) for n in wanted if n in drivers}
    for name in wanted:
        if name not in drivers:
            results[name] = SelfTestResult(
                name, DeviceState.ABSENT, "disabled in the config", f"set devices.{name}.enabled = true"
            )
            continue
        try:
            results[name] = as_configured(futures[name].result(SELF_TEST_TIMEOUT_S))
        except concurrent.futures.TimeoutError:
            results[name] = SelfTestResult(
                name,
                DeviceState.FAULT,
                f"self-test did not finish within {SELF_TEST_TIMEOUT_S:.0f} s",
                "unplug and replug it",
            )
    for driver in drivers.values():
        with contextlib.suppress(Exception):
            driver.close()
    pool.shutdown(wait=False, cancel_futures=True)
    return results


def _offline_queue(config: AgentConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The health document's ``queue`` and the status document's ``rejected``, read from the store."""
    no_rejected: dict[str, Any] = {"count": 0, "reason": None, "packet_ids": []}
    try:
        outbox = Outbox.open_readonly(config.outbox_path, max_bytes=config.store.max_bytes)
    except StoreNotFound:
        queue = {"pending": 0, "pending_bytes": 0, "oldest_pending_age_s": None, "rejected": 0}
        return {**queue, "detail": "no outbox yet"}, no_rejected
    try:
        from agent.service import REFUSED_FILE, queue_json, read_refusal, rejected_json

        stats = outbox.stats()
        doc = queue_json(stats, refused_at=read_refusal(config.kiosk.data_dir / REFUSED_FILE))
        doc["total"] = stats.total_committed
        return doc, rejected_json(outbox, stats.rejected)
    finally:
        outbox.close()


# ----------------------------------------------------------------------------- run


def _setup_logging() -> None:
    """journald-friendly under systemd (no timestamps of ours, syslog priority prefixes)."""
    under_systemd = bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))
    handler = logging.StreamHandler(sys.stderr)
    if under_systemd:

        class Priority(logging.Formatter):
            LEVELS = {
                logging.DEBUG: 7,
                logging.INFO: 6,
                logging.WARNING: 4,
                logging.ERROR: 3,
                logging.CRITICAL: 2,
            }

            def format(self, record: logging.LogRecord) -> str:
                return f"<{self.LEVELS.get(record.levelno, 6)}>{record.name}: {record.getMessage()}"

        handler.setFormatter(Priority())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("EKTP_LOG_LEVEL", "INFO").upper())


@main.command("run")
@click.option(
    "--simulate", is_flag=True, help="Use the simulator under {data_dir}/sim (started if not running)."
)
@pass_ctx
def run_cmd(ctx: Context, simulate: bool) -> None:
    """Run the agent service (what systemd starts).

    Owns the peripherals and the outbox, syncs over MQTT, serves the local API socket.
    Notifies systemd (Type=notify) when started by it. SIGTERM stops it cleanly.

    \b
    Examples:
      ektp-agent --config /etc/ektp-agent/config.toml run
      ektp-agent --config ./agent.toml run --simulate
    """
    from agent.service import Service, StartError
    from agent.simulator import SimulatorError

    config = ctx.config
    try:
        check_environment(config)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    _setup_logging()
    try:
        code = asyncio.run(Service(config, simulate=simulate).run())
    except KeyFileError as exc:
        fail(f"{exc} (keys.kiosk_private_key / keys.central_public_key in {ctx.path})", EXIT_USAGE)
    except (ApiError, OutboxError, SimulatorError, StartError) as exc:
        fail(str(exc), EXIT_PROBLEM)
    except PermissionError:
        raise  # the group's one line: run as root or as a member of the ektp group
    except OSError as exc:
        what = f"{exc.filename}: " if exc.filename else ""
        fail(f"cannot start: {what}{exc.strerror or exc}", EXIT_PROBLEM)
    sys.exit(code)


# ----------------------------------------------------------------------------- status


@main.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option(
    "--wait",
    is_flag=True,
    help="Wait until the service answers and has self-tested its devices once (exit 3 at the timeout).",
)
@click.option(
    "--timeout", "timeout_s", type=click.FloatRange(min=0), default=60.0, show_default=True, metavar="S"
)
@pass_ctx
def status_cmd(ctx: Context, as_json: bool, wait: bool, timeout_s: float) -> None:
    """Service state, each peripheral, backlog, link, clock, disk (works with the service down).

    Ends with every problem in words and what to do, and exits 1 while there is one: a
    peripheral in fault; the store full (enrollments refused) or damaged; packets the centre
    rejected (`ektp-agent resubmit`) or found damaged on the kiosk; the broker refusing the
    kiosk's enrollments; enrollments recorded on an unsynchronised clock for over 10 min.
    Warnings (exit 0): the store near full, no centre consuming, the clock not synchronised
    yet, the service stopped. A device not yet tested after a start is not a problem.

    With --wait it first waits until the service answers and has tested each device once
    (a start-up script's "ready"), then reports as usual; exit 3 when the service does not
    answer within --timeout.

    JSON: the health document plus "service", "rejected", "problems" and "warnings"
    (lists of {"code", "message"}).

    \b
    Examples:
      ektp-agent status
      ektp-agent status --wait --timeout 30
      ektp-agent status --json
    """
    config = ctx.config
    doc = _service_status(config, timeout_s if wait else None)
    if doc is None:
        doc = _stopped_status(config)
    doc["problems"], doc["warnings"] = assess(doc)
    if doc["service"] == "stopped":
        doc["warnings"].insert(
            0,
            finding(
                "service-stopped",
                "the service is not running: nothing is recorded or sent until it starts "
                "(`systemctl start ektp-agent`; `journalctl -u ektp-agent` says why it stopped)",
            ),
        )
    if as_json:
        emit_json(doc)
        for problem in doc["problems"]:
            click.echo(f"ektp-agent: {problem['message']}", err=True)
    else:
        _print_status(doc)
    sys.exit(EXIT_PROBLEM if doc["problems"] else EXIT_OK)


def _service_status(config: AgentConfig, wait_s: float | None) -> dict[str, Any] | None:
    """The running service's status document; None when it does not run. ``wait_s``: first wait
    that long for it to answer (exit 3 if it does not) and to have tested each device once."""
    deadline = time.monotonic() + (wait_s or 0.0)
    while True:
        try:
            doc: dict[str, Any] = call(config, "status", timeout=STATUS_TIMEOUT_S)[0]
        except ServiceNotRunning as exc:
            if wait_s is None:
                return None
            if time.monotonic() >= deadline:
                fail(
                    f"{exc}, and it did not start within {wait_s:g} s; "
                    "`systemctl status ektp-agent` and `journalctl -u ektp-agent` say why",
                    EXIT_NOT_RUNNING,
                )
            time.sleep(WAIT_POLL_S)
            continue
        except ApiError as exc:
            fail(str(exc), EXIT_PROBLEM)
        untested = any(d.get("detail") == NOT_YET_TESTED for d in doc["devices"].values())
        if wait_s is None or not untested or time.monotonic() >= deadline:
            return doc
        time.sleep(WAIT_POLL_S)


def _stopped_status(config: AgentConfig) -> dict[str, Any]:
    """The status document made without the service: the devices probed, the store read."""
    probed = probe_devices(config)
    reporter = HealthReporter(
        kiosk_id=config.kiosk.id,
        data_dir=config.kiosk.data_dir,
        outbox_path=config.outbox_path,
        devices=lambda: {n: {"state": r.state.value, "detail": r.detail} for n, r in probed.items()},
    )
    rejected: dict[str, Any] = {"count": None, "reason": None, "packet_ids": []}
    try:
        queue, rejected = _offline_queue(config)
    except OutboxError as exc:
        queue = {"pending": None, "detail": str(exc)}
    doc = reporter.snapshot(
        queue=queue,
        link={"connected": False, "detail": "service not running"},
        total=queue.get("total", 0) or 0,
        rejected_reason=rejected["reason"],
    )
    doc["uptime_s"] = 0.0
    doc["service"] = "stopped"
    doc["rejected"] = rejected
    doc["remote"] = _stopped_remote(config)
    return doc


def _stopped_remote(config: AgentConfig) -> dict[str, Any]:
    """The status document's ``remote`` without the service: the config and the overrides file."""
    from agent.remote import status_json
    from agent.remote_store import intervals_in_force, read_overrides, settings_path

    overrides = read_overrides(settings_path(config.kiosk.data_dir))
    health_s, selftest_s = intervals_in_force(config.health.interval_s, overrides)
    return status_json(
        config, overrides, health_interval_s=health_s, selftest_interval_s=selftest_s, connection=None
    )


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _backlog_line(q: dict[str, Any]) -> str:
    """Every packet the store holds, so that none hides behind the byte count."""
    if q.get("pending") is None:
        return f"backlog: unknown ({q.get('detail') or 'the store cannot be read'})"
    parts = [f"{_plural(q['pending'], 'packet')} to deliver"]
    age = q.get("oldest_pending_age_s")
    if age:
        parts[0] += f" (oldest {age:.0f} s)"
    if q.get("rejected"):
        parts.append(f"{q['rejected']} rejected by the centre")
    if q.get("damaged"):
        parts.append(f"{q['damaged']} damaged on this kiosk")
    held, most = q.get("pending_bytes") or 0, q.get("max_bytes")
    room = f"; {held} bytes held"
    if most:
        room += f" of store.max_bytes {most} ({100 * held / most:.0f} %)"
    flag = (
        "  [bold red]FULL[/]"
        if q.get("full")
        else "  [bold yellow]NEAR FULL[/]"
        if q.get("near_full")
        else ""
    )
    return f"backlog: {escape(', '.join(parts) + room)}{flag}"


def _link_line(doc: dict[str, Any]) -> str:
    link = doc["link"]
    if doc["service"] == "stopped":
        return "link: not connected (service not running)"
    if not link.get("connected"):
        return f"link: [yellow]not connected[/]: {escape(link.get('last_error') or 'connecting')}"
    if link.get("refused_in_a_row"):
        why = link.get("last_refused") or "no reason given"
        return (
            f"link: connected, [bold red]but the broker refuses this kiosk's enrollments[/] ({escape(why)})"
        )
    if link.get("unconsumed_in_a_row"):
        return "link: connected, [yellow]but no centre consumes the enrollments[/]"
    return "link: connected"


def _clock_line(host: dict[str, Any]) -> str:
    if host.get("clock_synchronised"):
        return "clock: synchronised"
    made, age = host.get("clock_unsynchronised_enrollments") or 0, host.get("clock_unsynchronised_s")
    since = f"; {_plural(made, 'enrollment')} recorded on it in {age / 60:.0f} min" if made and age else ""
    return f"clock: [yellow]not synchronised[/]{since}"


def _print_status(doc: dict[str, Any]) -> None:
    con = _console()
    host = doc["host"]
    con.print(
        f"[bold]kiosk {escape(doc['kiosk_id'])}[/]: service [bold]{doc['service']}[/], "
        f"agent {escape(doc['agent_version'])}"
    )
    table = Table(box=None)
    table.add_column("device", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("detail")
    for name, d in doc["devices"].items():
        if d.get("detail") == NOT_YET_TESTED:  # not a fault: the service has just started
            table.add_row(name, "[dim]not yet tested[/]", "")
            continue
        table.add_row(
            name, f"[{STATE_STYLE.get(d['state'], '')}]{d['state']}[/]", escape(d.get("detail", ""))
        )
    _print_table(con, table)
    con.print(_backlog_line(doc["queue"]))
    con.print(_link_line(doc))
    con.print(_clock_line(host))
    free = host.get("disk_free_bytes")
    con.print(f"disk free: {free if free is not None else '?'} bytes; cpu {host.get('cpu_temp_c') or '?'} C")
    for line in _remote_lines(doc.get("remote")):
        con.print(line)
    if doc["problems"]:
        con.print(f"[bold red]{_plural(len(doc['problems']), 'problem')}[/] (exit 1):")
        for problem in doc["problems"]:
            con.print(f"  - {escape(problem['message'])}")
    for warning in doc["warnings"]:
        con.print(f"[yellow]warning[/]: {escape(warning['message'])}")
    if not doc["problems"]:
        con.print("no problems found")


def _remote_lines(remote: dict[str, Any] | None) -> list[str]:
    """Whether the centre's commands are taken, and each interval the centre set."""
    if not remote:
        return []
    if not remote["enabled"]:
        lines = ["remote commands: [yellow]off[/] ([remote] enabled = false)"]
    else:
        off = remote["refused_verbs"]
        lines = ["remote commands: on" + (f" (refused: {escape(', '.join(off))})" if off else "")]
    for verb, o in remote["overrides"].items():
        lines.append(
            f"  {verb} {o['seconds']} s, set by the centre ({escape(o['set_by'])} at {escape(o['set_at'])});"
            " `ektp-agent config reset-remote` reverts it"
        )
    return lines


# ----------------------------------------------------------------------------- diag


@main.command("diag")
@click.argument("devices", nargs=-1, type=click.Choice(DEVICE_NAMES))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def diag_cmd(ctx: Context, devices: tuple[str, ...], as_json: bool) -> None:
    """Actively self-test each peripheral (or those named): pass/fail, what was tried, a hint.

    Works with the service down (probes the devices directly). Exit 1 if any fails. A
    device disabled in the config is not tested and not a failure: it is listed as SKIP
    (JSON: "skipped": true), whether the service runs or not.

    \b
    Examples:
      ektp-agent diag
      ektp-agent diag fingerprint --json
    """
    config = ctx.config
    wanted = list(dict.fromkeys(devices)) or list(DEVICE_NAMES)
    tested = [n for n in wanted if getattr(config.devices, n).enabled]
    results: dict[str, SelfTestResult] = {}
    try:
        if tested:
            for d in call(config, "diag", devices=tested, timeout=DIAG_TIMEOUT_S):
                results[d["diag"]["device"]] = SelfTestResult(**_result_args(d["diag"]))
        else:  # nothing to test: only ask whether the service runs
            call(config, "status", timeout=STATUS_TIMEOUT_S)
        service = "running"
    except ServiceNotRunning:
        results = probe_devices(config, tested) if tested else {}
        service = "stopped"
    except ApiError as exc:
        fail(str(exc), EXIT_PROBLEM)
    rows = [(results[n], False) if n in results else (_disabled(n), True) for n in wanted]
    ok = all(r.passed for r, skipped in rows if not skipped)
    if as_json:
        devices_json = [{**r.to_json(), "skipped": skipped} for r, skipped in rows]
        emit_json({"ok": ok, "service": service, "devices": devices_json})
    else:
        con = _console()
        for r, skipped in rows:
            if skipped:
                con.print(f"[dim]SKIP[/] {r.device}: {escape(r.detail)}")
                continue
            mark = "[green]PASS[/]" if r.passed else "[bold red]FAIL[/]"
            style = STATE_STYLE.get(r.state.value, "")
            con.print(f"{mark} {r.device}: [{style}]{r.state.value}[/] {escape(r.detail)}")
            if r.tried:
                con.print(f"     tried: {escape(r.tried)}")
            if not r.passed or r.state is DeviceState.DEGRADED:
                con.print(f"     hint: {escape(r.hint)}")
    sys.exit(EXIT_OK if ok else EXIT_PROBLEM)


def _disabled(name: str) -> SelfTestResult:
    return SelfTestResult(
        name,
        DeviceState.ABSENT,
        f"disabled in the config (devices.{name}.enabled = false); not tested",
        f"set devices.{name}.enabled = true to use it",
    )


def _result_args(d: dict[str, Any]) -> dict[str, Any]:
    return {
        "device": d["device"],
        "state": DeviceState(d["state"]),
        "detail": d["detail"],
        "hint": d["hint"],
        "tried": d["tried"],
    }


# ----------------------------------------------------------------------------- queue


@main.command("queue")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list.")
@pass_ctx
def queue_cmd(ctx: Context, as_json: bool) -> None:
    """The undelivered packets (never their content): id, seq, created, state, bytes, attempts.

    State is pending, sent (to the broker, not yet acknowledged), rejected (by the
    centre, with its reason; not sent again until `ektp-agent resubmit`) or damaged (found
    damaged on this kiosk by a salvage; never sent). Exit 1 while there are rejected or
    damaged packets.

    \b
    Example:
      ektp-agent queue --json
    """
    config = ctx.config
    try:
        rows = call(config, "queue", timeout=QUEUE_TIMEOUT_S)[0]["queue"]
    except ServiceNotRunning:
        try:
            outbox = Outbox.open_readonly(config.outbox_path, max_bytes=config.store.max_bytes)
        except StoreNotFound:
            rows = []
        except OutboxError as exc:
            fail(str(exc), EXIT_PROBLEM)
        else:
            from agent.service import _queue_row

            try:
                rows = [_queue_row(r) for r in outbox.undelivered()]
            finally:
                outbox.close()
    except ApiError as exc:
        fail(str(exc), EXIT_PROBLEM)
    rejected = [r for r in rows if r["state"] == "rejected"]
    damaged = sum(1 for r in rows if r["state"] == "damaged")
    problems = [rejection_problem(len(rejected), rejected[0].get("reason"))] if rejected else []
    if damaged:
        problems.append(damage_problem(damaged))
    if as_json:
        emit_json(rows)
        _fail_with(problems)
        return
    table = Table(box=None)
    table.add_column("seq", no_wrap=True)
    table.add_column("packet id", no_wrap=True, min_width=PACKET_ID_WIDTH)
    table.add_column("created", no_wrap=True)
    table.add_column("state")
    table.add_column("bytes", no_wrap=True)
    table.add_column("attempts", no_wrap=True)
    for r in rows:
        table.add_row(
            str(r["seq"]),
            r["packet_id"],
            r["created_at"],
            escape(r["state"] + (f" ({r['reason']})" if r.get("reason") else "")),
            str(r["bytes"]),
            str(r["attempts"]),
        )
    con = _console()
    _print_table(con, table)
    con.print(
        f"{len(rows)} undelivered packet(s)"
        + (
            f": {len(rows) - len(rejected) - damaged} to send, {len(rejected)} rejected by the centre"
            if rejected or damaged
            else ""
        )
        + (f", {damaged} damaged on this kiosk" if damaged else "")
    )
    _fail_with(problems)


def _fail_with(problems: list[str]) -> None:
    """Exit 1 naming every problem (the last through fail); nothing when there is none."""
    for problem in problems[:-1]:
        click.echo(f"ektp-agent: {problem}", err=True)
    if problems:
        fail(problems[-1], EXIT_PROBLEM)


# ----------------------------------------------------------------------------- sync


@main.command("sync")
@click.option(
    "--wait", is_flag=True, help="Return when nothing is undelivered (exit 0) or at the timeout (exit 1)."
)
@click.option(
    "--timeout", "timeout_s", type=click.FloatRange(min=0), default=600.0, show_default=True, metavar="S"
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document at the end.")
@pass_ctx
def sync_cmd(ctx: Context, wait: bool, timeout_s: float, as_json: bool) -> None:
    """Ask the service to sync now; with --wait, wait until the backlog is delivered.

    Exit 1 at the timeout, and while packets the centre rejected wait on the kiosk: they
    are not sent again until `ektp-agent resubmit` (the message gives the centre's reason),
    or while packets found damaged on the kiosk wait there. Exit 3 when the service is not
    running.

    \b
    Examples:
      ektp-agent sync
      ektp-agent sync --wait --timeout 300
    """
    config = ctx.config
    try:
        last = call(config, "sync", timeout=SYNC_TIMEOUT_S)[0]
    except ServiceNotRunning as exc:
        fail(f"{exc}; start it with `systemctl start ektp-agent` (or `ektp-agent run`)", EXIT_NOT_RUNNING)
    except ApiError as exc:
        fail(str(exc), EXIT_PROBLEM)
    total = left = int(last["undelivered"])
    timed_out = False
    if wait:
        deadline = time.monotonic() + timeout_s
        progress = Progress(
            TextColumn("delivering"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            disable=not sys.stdout.isatty() or as_json,
        )
        with progress:
            task = progress.add_task("sync", total=max(total, 1))
            while True:
                total = max(total, left)
                progress.update(task, total=max(total, 1), completed=total - left)
                if left == 0:
                    break
                if time.monotonic() >= deadline:
                    timed_out = True
                    break
                time.sleep(SYNC_POLL_S)
                try:
                    last = call(config, "sync", timeout=SYNC_TIMEOUT_S)[0]
                except ServiceNotRunning:
                    fail("the service stopped while waiting for the sync", EXIT_NOT_RUNNING)
                except ApiError as exc:
                    fail(str(exc), EXIT_PROBLEM)
                left = int(last["undelivered"])
    rejected = int(last.get("rejected") or 0)
    problems = []
    if timed_out:
        problems.append(
            f"timeout after {timeout_s:.0f} s: {left} packet(s) still undelivered (see `ektp-agent status`)"
        )
    if rejected:
        problems.append(rejection_problem(rejected, last.get("rejected_reason")))
    damaged = int(last.get("damaged") or 0)
    if damaged:
        problems.append(damage_problem(damaged))
    if as_json:
        doc = {
            "undelivered": left,
            "connected": last["connected"],
            "rejected": rejected,
            "rejected_reason": last.get("rejected_reason"),
            "damaged": damaged,
        }
        if wait:
            doc["timed_out"] = timed_out
        emit_json(doc)
    elif not wait:
        link = "up" if last["connected"] else "down"
        click.echo(f"sync requested; {left} packet(s) undelivered; link {link}")
    elif not problems:
        click.echo("all packets delivered")
    for problem in problems:
        click.echo(f"ektp-agent: {problem}", err=True)
    sys.exit(EXIT_PROBLEM if problems else EXIT_OK)


# ----------------------------------------------------------------------------- enroll


@main.command("enroll")
@click.option("--synthetic", is_flag=True, help="Synthetic residents from the simulator's generator.")
@click.option(
    "--applicant",
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON file with nik and demographics.",
)
@click.option("--count", type=click.IntRange(1, 100_000), default=1, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True, help="First synthetic resident's seed.")
@pass_ctx
def enroll_cmd(ctx: Context, synthetic: bool, applicant: Path | None, count: int, seed: int) -> None:
    """Capture and commit enrollments through the running service; one JSON receipt per line.

    A receipt means the packet is committed durably on this kiosk.

    \b
    Examples:
      ektp-agent enroll --synthetic --count 20 --seed 7
      ektp-agent enroll --applicant resident.json
    """
    config = ctx.config
    if synthetic == (applicant is not None):
        fail("give exactly one of --synthetic or --applicant FILE", EXIT_USAGE)
    args: dict[str, Any] = {"count": count, "seed": seed, "synthetic": synthetic}
    if applicant is not None:
        try:
            args.update(json.loads(applicant.read_text()))
        except (OSError, ValueError) as exc:
            fail(f"cannot read the applicant file {applicant}: {exc}", EXIT_USAGE)
    done = 0
    try:
        for item in request(config, "enroll", timeout=300, **args):
            click.echo(json.dumps(item["receipt"]))
            done += 1
    except ServiceNotRunning as exc:
        fail(f"{exc}; enrollments go through the service: start it first", EXIT_NOT_RUNNING)
    except ApiError as exc:
        fail(f"enrollment {done + 1} of {count} not taken: {exc}", EXIT_PROBLEM)
