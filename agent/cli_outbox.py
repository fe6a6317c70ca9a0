"""The outbox commands of `ektp-agent`: export (for a trip to the centre) and resubmit.

Both work with the service down: `export` reads the outbox read-only and writes the
packets through :mod:`agent.export`; `resubmit` goes through the service when it runs
(the service is the outbox's only writer then) and writes the outbox itself when it does not.
"""

from __future__ import annotations

import functools
import sys
import uuid
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from agent.api import ApiError, ServiceNotRunning, call
from agent.cli import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, Context, emit_json, fail, main, pass_ctx
from agent.config import AgentConfig
from agent.export import ExportError, ExportItem, export, file_name
from agent.outbox import Outbox, OutboxError, StoreNotFound
from agent.outbox_schema import DAMAGED, REJECTED

# ----------------------------------------------------------------------------- export


@main.command("export")
@click.option(
    "--to",
    "to_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Directory (e.g. a USB stick); created if missing.",
)
@click.option(
    "--include-rejected",
    is_flag=True,
    help="Also write the packets the centre rejected (for its quarantine review).",
)
@click.option(
    "--include-damaged",
    is_flag=True,
    help="Also write the packets found damaged on this kiosk (they fail their own signature check).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def export_cmd(
    ctx: Context, to_dir: Path, include_rejected: bool, include_damaged: bool, as_json: bool
) -> None:
    """Write every undelivered packet as one file into DIR for a trip to the centre.

    Idempotent: a file already there with the same content is kept. Packets stay in the
    store until the centre acknowledges them (`ektp-central import DIR` at the centre).
    Packets the centre rejected, and packets damaged on this kiosk, are left out unless
    --include-rejected / --include-damaged; the summary says how many of each.

    DIR must be a plain directory (a symbolic link, FIFO, device or file is refused, exit
    2). Nothing in it is written through: files are made in a fresh folder the export
    creates inside DIR and renamed into place (mode 0600), then synced.

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
    left_out = {REJECTED: 0, DAMAGED: 0}
    wanted = {REJECTED: include_rejected, DAMAGED: include_damaged}
    try:
        rows = []
        for r in outbox.undelivered():
            if wanted.get(r.state, True):
                rows.append(r)
            else:
                left_out[r.state] += 1
        items = [
            ExportItem(file_name(r.seq, r.packet_id), r.state, functools.partial(outbox.get, r.packet_id))
            for r in rows
        ]
        with Progress(
            TextColumn("exporting"),
            BarColumn(),
            MofNCompleteColumn(),
            disable=not sys.stdout.isatty() or as_json,
        ) as progress:
            task = progress.add_task("export", total=len(items))
            report = export(to_dir, items, progress=lambda: progress.advance(task))
    except ExportError as exc:
        fail(str(exc), EXIT_USAGE if exc.usage else EXIT_PROBLEM)
    except OutboxError as exc:
        fail(str(exc), EXIT_PROBLEM)
    finally:
        outbox.close()
    counts = report.by_state
    rejected, damaged = counts.get(REJECTED, 0), counts.get(DAMAGED, 0)
    undelivered = sum(counts.values()) - rejected - damaged
    written, kept = report.written, report.kept
    if as_json:
        doc: dict[str, Any] = {
            "exported": written + kept,
            "written": written,
            "already_there": kept,
            "dir": str(to_dir),
            "pending": undelivered,
            "rejected": rejected,
            "rejected_left_out": left_out[REJECTED],
        }
        if damaged or left_out[DAMAGED]:
            doc.update(damaged=damaged, damaged_left_out=left_out[DAMAGED])
        emit_json(doc)
        return
    click.echo(
        f"exported {written + kept} packet(s) to {to_dir}: {undelivered} undelivered, "
        f"{rejected} rejected" + (f", {damaged} damaged" if damaged else "") + f" ({written} written, "
        f"{kept} already there)"
    )
    if left_out[REJECTED]:
        click.echo(
            f"{left_out[REJECTED]} packet(s) rejected by the centre not exported (add --include-rejected, or "
            "`ektp-agent resubmit` them once the cause is fixed)"
        )
    if left_out[DAMAGED]:
        click.echo(
            f"{left_out[DAMAGED]} packet(s) damaged on this kiosk not exported (add --include-damaged to "
            "take them to the centre for review; they cannot be stored there)"
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
        "damaged": "is not rejected: it was found damaged on this kiosk and can never be sent"
        " (`ektp-agent export --include-damaged` takes it to the centre for review)",
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


__all__ = ["export_cmd", "resubmit_cmd"]
