"""``ektp-sim``: run the simulated peripherals and inject faults into them.

Exit codes: 0 done; 1 the simulator refused or could not start; 2 usage (unknown
device or fault kind); 3 no simulator runs at DIR.
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


def _control(ctx: click.Context) -> SimControl:
    return SimControl(ctx.obj["dir"])


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
    required=True,
    envvar="EKTP_SIM_DIR",
    help="Directory of the simulator: device symlinks, control socket, pid file (env EKTP_SIM_DIR).",
)
@click.pass_context
def main(ctx: click.Context, sim_dir: Path) -> None:
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
    "--owner-pid",
    type=click.IntRange(min=1),
    hidden=True,
    help="Stop when this process, the parent that started the simulator, is gone (`ektp-agent run --simulate`).",
)
@click.pass_context
def run(
    ctx: click.Context, devices: tuple[str, ...], seed: int, throttle: bool, owner_pid: int | None
) -> None:
    """Run the simulated peripherals until SIGTERM or Ctrl-C."""
    server = SimServer(
        ctx.obj["dir"],
        devices or DEVICES,
        seed=seed,
        throttle=throttle,
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


@main.command(epilog="Example: ektp-sim --dir /tmp/sim present 42 --finger 1")
@click.argument("seed", type=click.IntRange(min=0))
@click.option("--finger", type=click.IntRange(1, 10), help="Finger the resident places next (default 1).")
@click.pass_context
def present(ctx: click.Context, seed: int, finger: int | None) -> None:
    """Put synthetic resident SEED at the kiosk: every device captures them from now on."""
    reply = _call(ctx, "present", seed, finger)
    click.echo(f"resident {seed} (NIK {reply.get('nik')}) at the kiosk")


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


if __name__ == "__main__":
    main()
