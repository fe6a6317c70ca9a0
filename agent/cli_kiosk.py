"""The kiosk commands of `ektp-agent`: run, status, diag, queue, sync, enroll
(export and resubmit: :mod:`agent.cli_outbox`).

`status`, `diag` and `queue` work with the service down (they read the outbox
read-only and probe free peripherals directly), because that is when a technician
needs them; `sync` and `enroll` need the running service (exit 3 without it).

Packets the centre rejected are a problem until a technician resubmits them: `status`,
`queue` and `sync` exit 1 and say so while there are any.
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
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agent.api import ApiError, ServiceNotRunning, call, request
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
from agent.health import HealthReporter
from agent.outbox import Outbox, OutboxError, StoreNotFound
from drivers.health import DeviceState, SelfTestResult
from wire.keys import KeyFileError

STATE_STYLE = {"ok": "green", "degraded": "yellow", "fault": "bold red", "absent": "red"}
SYNC_POLL_S = 0.5
# How long each command waits for the service's answer before saying it does not answer.
STATUS_TIMEOUT_S = 20.0
QUEUE_TIMEOUT_S = 30.0
SYNC_TIMEOUT_S = 30.0
DIAG_TIMEOUT_S = 60.0  # a self-test of every device, each bounded by SELF_TEST_TIMEOUT_S


def _console() -> Console:
    return Console(highlight=False)


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
        from agent.service import queue_json, rejected_json

        stats = outbox.stats()
        doc = queue_json(stats)
        doc["total"] = stats.total_committed
        return doc, rejected_json(outbox, stats.rejected)
    finally:
        outbox.close()


def damage_problem(count: int) -> str:
    """What to tell the technician while packets found damaged on this kiosk wait in its store."""
    were = "packet was" if count == 1 else "packets were"
    return (
        f"{count} {were} found damaged on this kiosk when its store was salvaged (they fail the "
        "kiosk's own signature check) and are never sent; take them to the centre for review with "
        "`ektp-agent export --to DIR --include-damaged` (docs/troubleshooting.md)"
    )


def rejection_problem(count: int, reason: str | None) -> str:
    """What to tell the technician while packets the centre rejected wait on the kiosk."""
    were = "packet was" if count == 1 else "packets were"
    return (
        f"{count} {were} rejected by the centre: {reason or 'no reason given'}; fix the cause, then "
        "`ektp-agent resubmit --rejected`"
    )


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
@pass_ctx
def status_cmd(ctx: Context, as_json: bool) -> None:
    """Service state, each peripheral, backlog, link, disk (works with the service down).

    Exit 1 when a peripheral is in fault, the store is near full or was salvaged, packets
    the centre rejected wait on the kiosk (`ektp-agent resubmit`), or packets were found
    damaged on the kiosk.

    \b
    Example:
      ektp-agent status --json
    """
    config = ctx.config
    try:
        doc = call(config.api_socket, "status", timeout=STATUS_TIMEOUT_S)[0]
    except ServiceNotRunning:
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
        )
        doc["uptime_s"] = 0.0
        doc["service"] = "stopped"
        doc["rejected"] = rejected
    except ApiError as exc:
        fail(str(exc), EXIT_PROBLEM)
    problems = [
        n for n, d in doc["devices"].items() if d["state"] == "fault"
    ]  # absent = disabled in the config
    if doc["queue"].get("near_full"):
        problems.append("store near full")
    if doc.get("store", {}).get("quarantined"):
        problems.append("damaged store quarantined")
    rejected = doc.setdefault(
        "rejected", {"count": doc["queue"].get("rejected"), "reason": None, "packet_ids": []}
    )
    told = []  # the problems that need words beyond the document
    if rejected["count"]:
        told.append(rejection_problem(rejected["count"], rejected["reason"]))
    if doc["queue"].get("damaged"):
        told.append(damage_problem(doc["queue"]["damaged"]))
    problems += told
    if as_json:
        emit_json(doc)
        for problem in told:
            click.echo(f"ektp-agent: {problem}", err=True)
    else:
        _print_status(doc)
    sys.exit(EXIT_PROBLEM if problems else EXIT_OK)


def _print_status(doc: dict[str, Any]) -> None:
    con = _console()
    q, link, host = doc["queue"], doc["link"], doc["host"]
    con.print(
        f"[bold]kiosk {doc['kiosk_id']}[/] service [bold]{doc['service']}[/]  agent {doc['agent_version']}"
    )
    table = Table("device", "state", "detail", box=None)
    for name, d in doc["devices"].items():
        table.add_row(name, f"[{STATE_STYLE.get(d['state'], '')}]{d['state']}[/]", d.get("detail", ""))
    con.print(table)
    age = q.get("oldest_pending_age_s")
    con.print(
        f"backlog: {q.get('pending')} packets, {q.get('pending_bytes')} bytes"
        + (f", oldest {age:.0f} s" if age else "")
        + ("  [bold red]NEAR FULL[/]" if q.get("near_full") else "")
    )
    rejected = doc.get("rejected", {})
    if rejected.get("count"):
        con.print(f"[bold red]{rejection_problem(rejected['count'], rejected.get('reason'))}[/]")
    if q.get("damaged"):
        con.print(f"[bold red]{damage_problem(q['damaged'])}[/]")
    con.print(
        f"link: {'connected' if link.get('connected') else 'not connected'} {link.get('last_error') or link.get('detail') or ''}"
    )
    for damaged in doc.get("store", {}).get("quarantined", []):
        con.print(
            f"[bold red]damaged store moved aside: {damaged}[/] (its readable packets were salvaged; "
            "see docs/troubleshooting.md before removing it)"
        )
    con.print(f"clock: {'synchronised' if host.get('clock_synchronised') else '[yellow]not synchronised[/]'}")
    free = host.get("disk_free_bytes")
    con.print(f"disk free: {free if free is not None else '?'} bytes; cpu {host.get('cpu_temp_c') or '?'} C")


# ----------------------------------------------------------------------------- diag


@main.command("diag")
@click.argument("devices", nargs=-1, type=click.Choice(DEVICE_NAMES))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def diag_cmd(ctx: Context, devices: tuple[str, ...], as_json: bool) -> None:
    """Actively self-test each peripheral (or those named): pass/fail, what was tried, a hint.

    Works with the service down (probes the devices directly). Exit 1 if any fails.

    \b
    Examples:
      ektp-agent diag
      ektp-agent diag fingerprint --json
    """
    config = ctx.config
    names = list(devices) or None  # None: every device the config enables
    try:
        results = [
            SelfTestResult(**_result_args(d["diag"]))
            for d in call(config.api_socket, "diag", devices=names, timeout=DIAG_TIMEOUT_S)
        ]
        service = "running"
    except ServiceNotRunning:
        results = list(probe_devices(config, names).values())
        service = "stopped"
    except ApiError as exc:
        fail(str(exc), EXIT_PROBLEM)
    ok = all(r.state is not DeviceState.FAULT for r in results)  # absent = disabled in the config
    if as_json:
        emit_json({"ok": ok, "service": service, "devices": [r.to_json() for r in results]})
    else:
        con = _console()
        for r in results:
            mark = "[green]PASS[/]" if r.passed else "[bold red]FAIL[/]"
            con.print(
                f"{mark} {r.device}: [{STATE_STYLE.get(r.state.value, '')}]{r.state.value}[/] {r.detail}"
            )
            if r.tried:
                con.print(f"     tried: {r.tried}")
            if not r.passed or r.state is DeviceState.DEGRADED:
                con.print(f"     hint: {r.hint}")
    sys.exit(EXIT_OK if ok else EXIT_PROBLEM)


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
        rows = call(config.api_socket, "queue", timeout=QUEUE_TIMEOUT_S)[0]["queue"]
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
    table = Table("seq", "packet id", "created", "state", "bytes", "attempts", box=None)
    for r in rows:
        table.add_row(
            str(r["seq"]),
            r["packet_id"],
            r["created_at"],
            r["state"] + (f" ({r['reason']})" if r.get("reason") else ""),
            str(r["bytes"]),
            str(r["attempts"]),
        )
    con = _console()
    con.print(table)
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
        last = call(config.api_socket, "sync", timeout=SYNC_TIMEOUT_S)[0]
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
                    last = call(config.api_socket, "sync", timeout=SYNC_TIMEOUT_S)[0]
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
        for item in request(config.api_socket, "enroll", timeout=300, **args):
            click.echo(json.dumps(item["receipt"]))
            done += 1
    except ServiceNotRunning as exc:
        fail(f"{exc}; enrollments go through the service: start it first", EXIT_NOT_RUNNING)
    except ApiError as exc:
        fail(f"enrollment {done + 1} of {count} not taken: {exc}", EXIT_PROBLEM)
