"""The kiosk commands of `ektp-agent`: run, status, diag, queue, sync, enroll, export, resubmit.

`status`, `diag`, `queue` and `export` work with the service down (they read the outbox
read-only and probe free peripherals directly), because that is when a technician
needs them; `sync` and `enroll` need the running service (exit 3 without it).
`resubmit` goes through the service when it runs (the service is the outbox's only
writer then) and writes the outbox itself when it does not.

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
import uuid
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
from agent.config import AgentConfig
from agent.devices import DEVICE_NAMES, SELF_TEST_TIMEOUT_S, as_configured, build_drivers
from agent.health import HealthReporter
from agent.outbox import Outbox, OutboxError, StoreNotFound
from drivers.health import DeviceState, SelfTestResult
from wire.keys import KeyFileError

STATE_STYLE = {"ok": "green", "degraded": "yellow", "fault": "bold red", "absent": "red"}
SYNC_POLL_S = 0.5


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
    from agent.service import Service
    from agent.simulator import SimulatorError

    config = ctx.config
    _setup_logging()
    try:
        code = asyncio.run(Service(config, simulate=simulate).run())
    except KeyFileError as exc:
        fail(f"{exc} (keys.kiosk_private_key / keys.central_public_key in {ctx.path})", EXIT_USAGE)
    except ApiError as exc:
        fail(str(exc), EXIT_PROBLEM)
    except (OutboxError, SimulatorError) as exc:
        fail(str(exc), EXIT_PROBLEM)
    sys.exit(code)


# ----------------------------------------------------------------------------- status


@main.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def status_cmd(ctx: Context, as_json: bool) -> None:
    """Service state, each peripheral, backlog, link, disk (works with the service down).

    Exit 1 when a peripheral is in fault, the store is near full or was salvaged, or
    packets the centre rejected wait on the kiosk (`ektp-agent resubmit`).

    \b
    Example:
      ektp-agent status --json
    """
    config = ctx.config
    try:
        doc = call(config.api_socket, "status", timeout=20)[0]
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
    if rejected["count"]:
        problems.append(rejection_problem(rejected["count"], rejected["reason"]))
    if as_json:
        emit_json(doc)
        if rejected["count"]:
            click.echo(f"ektp-agent: {problems[-1]}", err=True)
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
            for d in call(config.api_socket, "diag", devices=names, timeout=60)
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

    State is pending, sent (to the broker, not yet acknowledged) or rejected (by the
    centre, with its reason; not sent again until `ektp-agent resubmit`). Exit 1 while
    there are rejected packets.

    \b
    Example:
      ektp-agent queue --json
    """
    config = ctx.config
    try:
        rows = call(config.api_socket, "queue")[0]["queue"]
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
    rejected = [r for r in rows if r["state"] == "rejected"]
    problem = rejection_problem(len(rejected), rejected[0].get("reason")) if rejected else None
    if as_json:
        emit_json(rows)
        if problem:
            fail(problem, EXIT_PROBLEM)
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
            f": {len(rows) - len(rejected)} to send, {len(rejected)} rejected by the centre"
            if rejected
            else ""
        )
    )
    if problem:
        fail(problem, EXIT_PROBLEM)


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
    are not sent again until `ektp-agent resubmit` (the message gives the centre's reason).
    Exit 3 when the service is not running.

    \b
    Examples:
      ektp-agent sync
      ektp-agent sync --wait --timeout 300
    """
    config = ctx.config
    try:
        last = call(config.api_socket, "sync")[0]
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
                    last = call(config.api_socket, "sync")[0]
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
    if as_json:
        doc = {
            "undelivered": left,
            "connected": last["connected"],
            "rejected": rejected,
            "rejected_reason": last.get("rejected_reason"),
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


# ----------------------------------------------------------------------------- export


@main.command("export")
@click.option(
    "--to",
    "to_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory (e.g. a USB stick).",
)
@click.option(
    "--include-rejected",
    is_flag=True,
    help="Also write the packets the centre rejected (for its quarantine review).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def export_cmd(ctx: Context, to_dir: Path, include_rejected: bool, as_json: bool) -> None:
    """Write every undelivered packet as one file into DIR for a trip to the centre.

    Idempotent: a file already there with the same content is kept. Packets stay in the
    store until the centre acknowledges them (`ektp-central import DIR` at the centre).
    Packets the centre rejected are left out unless --include-rejected; the summary
    says how many of each.

    \b
    Examples:
      ektp-agent export --to /media/usb0/ektp
      ektp-agent export --to /media/usb0/ektp --include-rejected
    """
    config = ctx.config
    try:
        outbox = Outbox.open_readonly(config.outbox_path, max_bytes=config.store.max_bytes)
    except StoreNotFound:
        fail(f"no outbox at {config.outbox_path}: nothing to export", EXIT_PROBLEM)
    except OutboxError as exc:
        fail(str(exc), EXIT_PROBLEM)
    counts = {"pending": 0, "rejected": 0}
    try:
        to_dir.mkdir(parents=True, exist_ok=True)
        held = outbox.undelivered()
        rows = [r for r in held if include_rejected or r.state != "rejected"]
        left_out = len(held) - len(rows)
        written = kept = 0
        with Progress(
            TextColumn("exporting"),
            BarColumn(),
            MofNCompleteColumn(),
            disable=not sys.stdout.isatty() or as_json,
        ) as progress:
            task = progress.add_task("export", total=len(rows))
            for r in rows:
                data = outbox.get(r.packet_id)
                progress.advance(task)
                if data is None:
                    continue  # delivered meanwhile
                counts["rejected" if r.state == "rejected" else "pending"] += 1
                target = to_dir / f"{r.seq:010d}-{r.packet_id}.ektp"
                if target.exists() and target.read_bytes() == data:
                    kept += 1
                    continue
                tmp = target.with_name(f".{target.name}.tmp")
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                tmp.replace(target)
                written += 1
    except OSError as exc:
        fail(f"cannot write to {to_dir}: {exc.strerror or exc}", EXIT_PROBLEM)
    finally:
        outbox.close()
    if as_json:
        emit_json(
            {
                "exported": written + kept,
                "written": written,
                "already_there": kept,
                "dir": str(to_dir),
                "pending": counts["pending"],
                "rejected": counts["rejected"],
                "rejected_left_out": left_out,
            }
        )
        return
    click.echo(
        f"exported {written + kept} packet(s) to {to_dir}: {counts['pending']} undelivered, "
        f"{counts['rejected']} rejected ({written} written, {kept} already there)"
    )
    if left_out:
        click.echo(
            f"{left_out} packet(s) rejected by the centre not exported (add --include-rejected, or "
            "`ektp-agent resubmit` them once the cause is fixed)"
        )


# ----------------------------------------------------------------------------- resubmit


@main.command("resubmit")
@click.argument("packet_ids", nargs=-1, metavar="[PACKET_ID]...")
@click.option("--rejected", "every", is_flag=True, help="Every packet the centre rejected.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def resubmit_cmd(ctx: Context, packet_ids: tuple[str, ...], every: bool, as_json: bool) -> None:
    """Put packets the centre rejected back in the queue, to be sent again.

    A packet the centre rejected stays on the kiosk, with the centre's reason, and is not
    sent again by itself (`ektp-agent queue` lists it; `status` and `sync` exit 1 while
    there is one). Resubmit it once the cause is fixed:

    \b
      - unknown_kiosk: the kiosk was registered late; after
        `ektp-central kiosk add KIOSK_ID --public-key FILE` at the centre;
      - bad_signature: after the centre has this kiosk's current public key
        (`ektp-agent keys show`);
      - anything else: after the cause the reason names is fixed.

    Name the packets, or give --rejected for all of them. The packets keep their
    attempts; their reason is cleared (the service's journal keeps it). Resubmitting
    before the cause is fixed does no harm: the centre rejects them again. With the
    service running it sends them at once; with it stopped, they are sent when it starts.

    Exit 0 when done; 1 when a named packet is not a rejected one (the message says its
    state; the others are still resubmitted); 2 without packet ids or --rejected.

    \b
    Examples:
      ektp-agent queue                  # the rejected packets and the centre's reason
      ektp-agent resubmit --rejected
      ektp-agent resubmit 01a21f90-924b-7326-8f60-a232292900ac --json
    """
    config = ctx.config
    if every == bool(packet_ids):
        fail(
            "name the packets to resubmit (PACKET_ID ...) or give --rejected for all the rejected ones"
            + (", not both" if every else ""),
            EXIT_USAGE,
        )
    ids = None if every else [_canonical_id(p) for p in packet_ids]
    try:
        args: dict[str, Any] = {"rejected": True} if ids is None else {"packet_ids": ids}
        result = call(config.api_socket, "resubmit", timeout=120, **args)[0]
        service = "running"
    except ServiceNotRunning:
        result = _resubmit_offline(config, ids)
        service = "stopped"
    except ApiError as exc:
        fail(str(exc), EXIT_PROBLEM)
    count, not_rejected = int(result["resubmitted"]), result.get("not_rejected", [])
    if as_json:
        emit_json({"resubmitted": count, **({"not_rejected": not_rejected} if not_rejected else {})})
    else:
        when = "the service sends them now" if service == "running" else "sent when the service starts"
        click.echo(f"resubmitted {count} packet(s)" + (f": {when}" if count else ""))
    for r in not_rejected:
        click.echo(f"ektp-agent: packet {r['packet_id']} {_not_rejected_because(r['state'])}", err=True)
    sys.exit(EXIT_PROBLEM if not_rejected else EXIT_OK)


def _canonical_id(packet_id: str) -> str:
    """Packet ids are stored as lower-case UUIDs; accept one typed in capitals or braces."""
    try:
        return str(uuid.UUID(packet_id))
    except ValueError:
        return packet_id


def _not_rejected_because(state: str) -> str:
    why = {
        "unknown": "is not in this kiosk's outbox (check the id with `ektp-agent queue`)",
        "pending": "is not rejected: it is pending, already waiting to be sent",
        "sent": "is not rejected: it is sent, waiting for the centre's acknowledgement",
        "delivered": "is not rejected: it is delivered, the centre holds it",
    }
    return why.get(state, f"is not rejected: it is {state}") + "; nothing done for it"


def _resubmit_offline(config: AgentConfig, ids: list[str] | None) -> dict[str, Any]:
    """The service is down: write the outbox here (it is the only writer then), never repair it."""
    from agent.service import resubmit_packets

    try:
        outbox = Outbox(config.outbox_path, max_bytes=config.store.max_bytes, repair=False)
    except StoreNotFound:
        return {"resubmitted": 0, "not_rejected": [{"packet_id": p, "state": "unknown"} for p in ids or []]}
    except OutboxError as exc:
        fail(str(exc), EXIT_PROBLEM)
    try:
        return resubmit_packets(outbox, ids)
    except OutboxError as exc:
        fail(str(exc), EXIT_PROBLEM)
    finally:
        outbox.close()
