"""``ektp-sim``: run the simulated peripherals and inject faults into them; ``fleet`` runs
many simulated kiosks' MQTT traffic against a broker (hw_sim.fleet).

Exit codes: 0 done; 1 the simulator refused or could not start; 2 usage (unknown
device or fault kind, no --dir); 3 no simulator runs at DIR.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import click

from hw_sim.control import SimControl, SimControlError, SimNotRunning
from hw_sim.faults import DEVICES, FaultKind
from hw_sim.server import SimError, SimServer

EXIT_REFUSED = 1
EXIT_NOT_RUNNING = 3
WAIT_S = 0.2  # how often `run` looks at its stop flag and at its owner
KINDS = tuple(k.value for k in FaultKind)


def _sim_dir(ctx: click.Context) -> Path:
    """DIR of the device commands (``fleet`` needs none). :raises click.UsageError: none given"""
    sim_dir: Path | None = ctx.obj["dir"]
    if sim_dir is None:
        raise click.UsageError("Missing option '--dir' (or the environment variable EKTP_SIM_DIR).")
    return sim_dir


def _control(ctx: click.Context) -> SimControl:
    return SimControl(_sim_dir(ctx))


def _call(ctx: click.Context, op: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    try:
        reply: dict[str, Any] = getattr(_control(ctx), op)(*args, **kwargs)
    except SimNotRunning as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(EXIT_NOT_RUNNING)
    except SimControlError as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(EXIT_REFUSED)
    return reply


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Example: ektp-sim --dir /tmp/sim run   (then, in another shell: ektp-sim --dir /tmp/sim status)",
)
@click.option(
    "--dir",
    "sim_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="EKTP_SIM_DIR",
    help="Directory of the simulator: device symlinks, control socket, pid file (env EKTP_SIM_DIR); "
    "every command but `fleet` needs it.",
)
@click.pass_context
def main(ctx: click.Context, sim_dir: Path | None) -> None:
    """Byte-level simulators of the e-KTP kit's peripherals, with fault injection."""
    ctx.ensure_object(dict)
    ctx.obj["dir"] = sim_dir


@main.command(epilog="Example: ektp-sim --dir /tmp/sim run --device fingerprint --device signature")
@click.option(
    "--device",
    "devices",
    type=click.Choice(DEVICES),
    multiple=True,
    help="Simulate only this device (repeatable); default: all four.",
)
@click.option(
    "--seed", type=click.IntRange(min=0), default=1, show_default=True, help="Resident at the kiosk."
)
@click.option(
    "--throttle", is_flag=True, help="Serial links run at their real baud rate (slow image uploads)."
)
@click.option(
    "--instant-pen",
    is_flag=True,
    envvar="EKTP_SIM_INSTANT_PEN",
    help="The signature pad streams a signature at once instead of at the pen's pace (~133 reports/s,"
    " a second or two per signature): for tests and load runs. Also EKTP_SIM_INSTANT_PEN=1, which the"
    " simulator that `ektp-agent run --simulate` starts inherits from the service.",
)
@click.option(
    "--owner-pid",
    type=click.IntRange(min=1),
    hidden=True,
    help="Stop when this process, the parent that started the simulator, is gone (`ektp-agent run --simulate`).",
)
@click.pass_context
def run(
    ctx: click.Context,
    devices: tuple[str, ...],
    seed: int,
    throttle: bool,
    instant_pen: bool,
    owner_pid: int | None,
) -> None:
    """Run the simulated peripherals until SIGTERM or Ctrl-C."""
    server = SimServer(
        _sim_dir(ctx),
        devices or DEVICES,
        seed=seed,
        throttle=throttle,
        instant_pen=instant_pen,
        skip_unavailable=not devices,
        owner_pid=owner_pid,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            server.start()
        except SimError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_REFUSED)
        for name, reason in server.skipped.items():
            click.echo(f"warning: {name} not simulated: {reason}", err=True)
        for name, device in server.devices.items():
            click.echo(f"{name}: {device.status().get('path', '')}")
        click.echo(f"control: {server.control_path}")
        click.echo("ready", err=True)
        sys.stdout.flush()
        while not stop.wait(WAIT_S):
            # Orphaned, our parent is someone else (init or a subreaper): the owner is gone,
            # however it died, and with it the only user of these devices.
            if owner_pid is not None and os.getppid() != owner_pid:
                click.echo(
                    f"the service that started this simulator (pid {owner_pid}) is gone: stopping", err=True
                )
                break
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@main.command(epilog="Example: ektp-sim --dir /tmp/sim fault fingerprint timeout --for 30")
@click.argument("device", type=click.Choice(DEVICES))
@click.argument("kind", type=click.Choice(KINDS))
@click.option(
    "--for", "for_s", type=click.FloatRange(min=0, min_open=True), help="End the fault after SECONDS."
)
@click.pass_context
def fault(ctx: click.Context, device: str, kind: str, for_s: float | None) -> None:
    """Inject fault KIND into DEVICE (it takes effect on the device's next exchange)."""
    _call(ctx, "fault", device, kind, for_s)
    until = f" for {for_s:g} s" if for_s else " until cleared"
    click.echo(f"{device}: {kind}{until}")


@main.command(epilog="Example: ektp-sim --dir /tmp/sim clear fingerprint")
@click.argument("device", type=click.Choice(DEVICES), required=False)
@click.pass_context
def clear(ctx: click.Context, device: str | None) -> None:
    """End the fault of DEVICE (of every device when none is named)."""
    _call(ctx, "clear", device)
    click.echo(f"cleared {device or 'all devices'}")


@main.command(
    epilog="Example: ektp-sim --dir /tmp/sim present 42 --repeat-finger 3=1   (resident 42, who places"
    " finger 1 again when asked for finger 3)"
)
@click.argument("seed", type=click.IntRange(min=0))
@click.option("--finger", type=click.IntRange(1, 10), help="Finger the resident places next (default 1).")
@click.option(
    "--repeat-finger",
    "repeats",
    metavar="POSITION=PLACED",
    multiple=True,
    help="Asked for finger POSITION, the resident places finger PLACED again (an operator's slip the"
    " kiosk must refuse). Repeatable.",
)
@click.pass_context
def present(ctx: click.Context, seed: int, finger: int | None, repeats: tuple[str, ...]) -> None:
    """Put synthetic resident SEED at the kiosk: every device captures them from now on."""
    pairs = []
    for text in repeats:
        position, _, placed = text.partition("=")
        if not (position.isdigit() and placed.isdigit()):
            raise click.BadParameter(
                f"{text!r} is not POSITION=PLACED (e.g. 3=1)", param_hint="--repeat-finger"
            )
        pairs.append([int(position), int(placed)])
    reply = _call(ctx, "present", seed, finger, pairs or None)
    repeated = "".join(f", finger {p} placed for finger {q}" for q, p in reply.get("repeats", []))
    click.echo(f"resident {seed} (NIK {reply.get('nik')}) at the kiosk{repeated}")


@main.command(epilog="Example: ektp-sim --dir /tmp/sim status --json")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show each simulated device: endpoint, state, active fault, request counts."""
    reply = _call(ctx, "status")
    if as_json:
        click.echo(json.dumps(reply, indent=2, sort_keys=True))
        return
    rows = [("DEVICE", "ENDPOINT", "STATE", "FAULT", "REQUESTS")]
    for name, info in reply.get("devices", {}).items():
        plugged = info.get("plugged", True)
        rows.append(
            (
                name,
                str(info.get("path", "")),
                "plugged" if plugged else "unplugged",
                str(info.get("fault") or "-"),
                str(info.get("requests", "-")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    click.echo(
        f"resident at the kiosk: {reply.get('resident')}   pid {reply.get('pid')}   dir {reply.get('dir')}"
    )
    for name, reason in reply.get("unavailable", {}).items():
        click.echo(f"not simulated: {name} ({reason})")


def _broker(value: str) -> tuple[str, int]:
    """HOST:PORT ([::1]:PORT for IPv6). :raises click.BadParameter:"""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r}: expected HOST:PORT, e.g. 127.0.0.1:1883", param_hint="--broker")
    return host, int(port)


@main.command(
    epilog="Example: ektp-sim fleet --kiosks 1000 --broker 127.0.0.1:1883 --interval 30 --fault-rate 0.02 "
    "(docs/simulator.md, Fleet)"
)
@click.option(
    "--kiosks", type=click.IntRange(1, 1_000_000), required=True, help="How many kiosks to simulate."
)
@click.option("--broker", "broker", metavar="HOST:PORT", help="The MQTT broker (needed unless --keys-only).")
@click.option(
    "--topic-prefix", default="ektp/v1", show_default=True, help="As the agents' [mqtt] topic_prefix."
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds between a kiosk's health documents (as [health] interval_s); spread over the fleet.",
)
@click.option(
    "--region-codes",
    metavar="CODE,CODE,...",
    help="Kemendagri region codes (6 digits: province, regency, district) the kiosk ids start with, taken "
    "in turn: 320715-0001, 720801-0001, ... [default: 320715,720801,317101,351501,530104]",
)
@click.option(
    "--packets-per-hour",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Enrollment packets (synthetic residents) per hour across the whole fleet, from kiosks drawn at "
    "random; needs --keys-dir and --central-public-key.",
)
@click.option(
    "--keys-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The kiosks' signing keys (ID.key, ID.key.pub, created when missing), kiosks.txt (ID and public "
    "key file per line, for `ektp-central kiosk add`) and seq.json.",
)
@click.option(
    "--central-public-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The centre's public key file (`ektp-central keys init` prints it): packets are sealed to it and "
    "its acks verified with it.",
)
@click.option(
    "--fault-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Fraction of kiosks showing a faulty or degraded device at any moment (with its detail and hint).",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    help="Stop after SECONDS (default: run until SIGTERM or Ctrl-C).",
)
@click.option(
    "--seed", type=int, default=1, show_default=True, help="Seeds faults, packets and host figures."
)
@click.option(
    "--connections",
    type=click.IntRange(min=1),
    help="MQTT connections the kiosks share [default: one per 2,500 kiosks].",
)
@click.option(
    "--chunk-bytes",
    type=click.IntRange(1024, 16 * 1024 * 1024),
    help="Largest chunk of a packet on the enrollment topic; the broker's maximum packet size lowers it "
    "[default: 65536].",
)
@click.option(
    "--keys-only",
    is_flag=True,
    help="Write the kiosks' keys and kiosks.txt into --keys-dir and exit (register them, then run).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary on stop as one JSON object.")
@click.pass_context
def fleet(
    ctx: click.Context,
    kiosks: int,
    broker: str | None,
    topic_prefix: str,
    interval: float,
    region_codes: str | None,
    packets_per_hour: float,
    keys_dir: Path | None,
    central_public_key: Path | None,
    fault_rate: float,
    duration: float | None,
    seed: int,
    connections: int | None,
    chunk_bytes: int | None,
    keys_only: bool,
    as_json: bool,
) -> None:
    """Run KIOSKS simulated kiosks' status, health, faults and packets against a broker.

    Ends on SIGTERM, Ctrl-C or --duration: every kiosk then says offline, and one summary
    line is printed (published, errors, packets, the schedule's lag)."""
    # imported here: the agent's health code it reuses would slow every other ektp-sim command
    from hw_sim.fleet import (
        DEFAULT_CHUNK_BYTES,
        DEFAULT_REGIONS,
        KIOSK_LIST,
        FleetError,
        FleetOptions,
        FleetSimulator,
        check_regions,
        ensure_keys,
        kiosk_ids,
    )

    try:
        regions = tuple(check_regions(region_codes.split(","))) if region_codes else DEFAULT_REGIONS
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--region-codes") from None
    if keys_only:
        if keys_dir is None:
            raise click.UsageError("--keys-only needs --keys-dir")
        ids = kiosk_ids(kiosks, regions)
        try:
            ensure_keys(keys_dir, ids)
        except FleetError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_REFUSED)
        click.echo(f"{len(ids)} kiosk keys in {keys_dir}; register them from {keys_dir / KIOSK_LIST}")
        return
    if broker is None:
        raise click.UsageError("Missing option '--broker' (HOST:PORT).")
    host, port = _broker(broker)
    if packets_per_hour and (keys_dir is None or central_public_key is None):
        raise click.UsageError("--packets-per-hour needs --keys-dir and --central-public-key")
    opts = FleetOptions(
        kiosks=kiosks,
        host=host,
        port=port,
        topic_prefix=topic_prefix.strip("/"),
        interval_s=interval,
        regions=regions,
        packets_per_hour=packets_per_hour,
        keys_dir=keys_dir,
        central_public_key=central_public_key,
        fault_rate=fault_rate,
        duration_s=duration,
        seed=seed,
        connections=connections,
        chunk_bytes=chunk_bytes or DEFAULT_CHUNK_BYTES,
    )
    sim = FleetSimulator(opts, say=lambda line: click.echo(line, err=True))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            sim.prepare()
            sim.connect()
        except FleetError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_REFUSED)
        first, last = sim.kiosks[0].kiosk_id, sim.kiosks[-1].kiosk_id
        click.echo(
            f"fleet: {kiosks} kiosks ({first} .. {last}) on {host}:{port} over {sim.n_connections} "
            f"connection(s), health every {interval:g} s",
            err=True,
        )
        click.echo("ready", err=True)
        report = sim.run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo(json.dumps(report.to_json(), sort_keys=True) if as_json else report.line())


if __name__ == "__main__":
    main()
