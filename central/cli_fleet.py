"""`ektp-central` fleet commands: `fleet`, `kiosk show`, `packets`: what the centre knows of its
kiosks, for an operator at a terminal or a script (--json), never packet content; and
`packets export`, the enrollments as ISO/IEC 19794 files for an identification system
(central/export_iso.py)."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from central.cli import (
    EXIT_PROBLEM,
    EXIT_USAGE,
    Context,
    _kiosk_id,
    _progress,
    central_store,
    emit_json,
    fail,
    kiosk_group,
    main,
    pass_ctx,
    print_table,
)
from central.fleet import FleetRow
from wire.keys import KeyFileError

RELATIVE_RE = re.compile(r"([0-9]{1,6})([smhd])")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
REGION_CODE_RE = re.compile(r"[0-9]{2}|[0-9]{4}|[0-9]{6}")
RECENT_PACKETS = 20  # `kiosk show` lists this many of the newest packets


def since_text(value: str) -> str:
    """``--since``: an RFC 3339 time, or an age such as 30m, 2h, 7d (before now)."""
    m = RELATIVE_RE.fullmatch(value)
    if m is None:
        return value  # the store checks it and says what it expects
    when = datetime.now(UTC) - timedelta(seconds=int(m.group(1)) * UNITS[m.group(2)])
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def human_age(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def human_bytes(n: int | None) -> str | None:
    if n is None:
        return None
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


# ----------------------------------------------------------------------------- packets


@main.group("packets", invoke_without_command=True)
@click.option("--kiosk", "kiosk", metavar="ID", help="Only this kiosk's packets.")
@click.option(
    "--since",
    metavar="TIME",
    help="Only those received at or after TIME (centre's clock): RFC 3339 (2026-12-01T08:00:00Z) or an age (30m, 2h, 7d).",
)
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="Only the N newest received.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list.")
@click.pass_context
def packets_group(
    click_ctx: click.Context, kiosk: str | None, since: str | None, limit: int | None, as_json: bool
) -> None:
    """List the stored packets by kiosk and seq (ids, sizes and times; never content);
    `packets export` writes their biometrics as ISO/IEC 19794 files.

    JSON: a list of objects with packet_id, kiosk, seq, created_at, received_at, bytes,
    source, synthetic.

    \b
    Examples:
      ektp-central --config central.toml packets --kiosk 320715-01 --since 2h
      ektp-central --config central.toml packets --limit 10 --json
      ektp-central --config central.toml packets export --format iso19794 --kiosk 320715-01 --since 7d --to /srv/abis-import
    """
    if click_ctx.invoked_subcommand is not None:
        return
    ctx: Context = click_ctx.obj
    from central.store import StoreInputError

    if kiosk is not None:
        _kiosk_id(kiosk)
    with central_store(ctx) as store:
        try:
            rows = store.packets(kiosk, since=None if since is None else since_text(since), limit=limit)
        except StoreInputError as exc:
            fail(f"--since: {exc} or an age such as 30m, 2h, 7d", EXIT_USAGE)
    if as_json:
        emit_json(rows)
        return
    print_table(
        ["packet_id", "kiosk", "seq", "created_at", "received_at", "bytes", "source"],
        [
            [r["packet_id"], r["kiosk"], r["seq"], r["created_at"], r["received_at"], r["bytes"], r["source"]]
            for r in rows
        ],
    )


@packets_group.command("export")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["iso19794"]),
    default="iso19794",
    show_default=True,
    help="iso19794: ISO/IEC 19794-5 face, -4 fingers, -6 irises, -7 signature, one file each.",
)
@click.option("--kiosk", "kiosk", metavar="ID", help="Only this kiosk's enrollments.")
@click.option(
    "--since",
    metavar="TIME",
    help="Only those received at or after TIME (centre's clock): RFC 3339 or an age (30m, 2h, 7d).",
)
@click.option(
    "--to",
    "directory",
    required=True,
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write (made 0700 if missing; an earlier export there is updated, not erased).",
)
@click.option(
    "--include-synthetic", is_flag=True, help="Also the test residents of simulated kits (never real people)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the counts and failures.")
@pass_ctx
def export_cmd(
    ctx: Context,
    fmt: str,
    kiosk: str | None,
    since: str | None,
    directory: Path,
    include_synthetic: bool,
    as_json: bool,
) -> None:
    """Write stored enrollments as ISO/IEC 19794 interchange files for an identification system.

    Each packet is opened with the centre's private key (which verifies the kiosk's signature)
    and its record (version 2, or version 1 of older kiosks) written to DIR/KIOSK/PACKET_ID/:
    face.fac (19794-5:2005), fingers.fir (19794-4:2005), irises.iir (19794-6:2005),
    signature.sdi (19794-7:2007) and signature.png, plus DIR/manifest.json naming each
    enrollment's NIK, files, standards and SHA-256. Files are decrypted biometrics: made 0600 in
    directories of 0700; keep DIR on an encrypted disk and delete it after the import.

    Prints how many enrollments and files were written. Exit 1 when a packet could not be
    opened or written (each named with the reason; the others are exported all the same).

    JSON: {"directory", "format", "exported", "files", "failed": [{"packet_id", "kiosk",
    "reason"}], "skipped_synthetic", "manifest"}.

    \b
    Example:
      ektp-central --config central.toml packets export --format iso19794 --kiosk 320715-01 --since 7d --to /srv/abis-import
    """
    from central.export_iso import ExportError, export_packets
    from central.ingest import Ingestor
    from central.keyring import load_keyring
    from central.store import StoreInputError

    assert fmt == "iso19794"  # click's Choice
    if kiosk is not None:
        _kiosk_id(kiosk)
    try:
        keys = load_keyring(ctx.config.central_private_key)
    except KeyFileError as exc:
        fail(f"the export opens packets with the centre's private key: {exc}", EXIT_PROBLEM)
    with central_store(ctx) as store:
        try:
            rows = store.packets(kiosk, since=None if since is None else since_text(since))
        except StoreInputError as exc:
            fail(f"--since: {exc} or an age such as 30m, 2h, 7d", EXIT_USAGE)
        ingestor = Ingestor(store, keys)
        try:
            with _progress(len(rows)) as advance:
                report = export_packets(
                    rows, ingestor.decrypt, directory, include_synthetic=include_synthetic, advance=advance
                )
        except ExportError as exc:
            fail(f"--to: {exc}", EXIT_USAGE)
    if as_json:
        emit_json(report.to_json())
    else:
        doc = report.to_json()
        for failure in report.failed:
            click.echo(f"failed {failure['kiosk']} {failure['packet_id']}: {failure['reason']}")
        line = f"exported {doc['exported']} enrollments ({doc['files']} files) to {doc['directory']}"
        if report.skipped_synthetic:
            line += f"; skipped {report.skipped_synthetic} synthetic (--include-synthetic to export them)"
        click.echo(line)
        click.echo(f"manifest: {doc['manifest']}")
    if report.failed:
        sys.exit(EXIT_PROBLEM)


# ----------------------------------------------------------------------------- fleet


def _region_code(value: str | None) -> str | None:
    if value is not None and REGION_CODE_RE.fullmatch(value) is None:
        fail(
            f"--region {value!r} is not a Kemendagri region code: 2 digits (province, e.g. 32), 4 (regency,"
            " 3207) or 6 (district, 320715)",
            EXIT_USAGE,
        )
    return value


def keep(
    row: FleetRow, *, offline: bool, faulty: bool, region: str | None, backlog_hours: float | None
) -> bool:
    """Whether ``row`` passes the filters (each given filter must hold)."""
    if offline and row["online"] is not False:
        return False
    if faulty and not row["faulty"]:
        return False
    if region is not None and not (row["region"] or "").startswith(region):
        return False
    age = row["oldest_pending_age_s"]
    return backlog_hours is None or (age is not None and age > backlog_hours * 3600)


def link_text(row: FleetRow) -> str:
    return "?" if row["online"] is None else ("online" if row["online"] else "OFFLINE")


def devices_text(row: FleetRow) -> str | None:
    """The devices that are not ok, ``name=state``; None when all are."""
    shown = [f"{name}={d['state']}" for name, d in row["devices"].items() if d["state"] not in ("ok",)]
    return ",".join(shown) or None


def gaps_text(ranges: list[list[int]]) -> str | None:
    shown = ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges[:5])
    return (shown + (f",+{len(ranges) - 5} more" if len(ranges) > 5 else "")) or None


def quarantine_text(r: FleetRow) -> str | None:
    if not r["quarantined"] and not r["quarantine_dropped"]:
        return None
    dropped = f", {r['quarantine_dropped']} dropped" if r["quarantine_dropped"] else ""
    return f"{r['quarantined']} ({r['quarantine_bytes']} B{dropped})"


def clock_text(r: FleetRow) -> str | None:
    if r["clock_synchronised"] is None:
        return None
    if r["clock_synchronised"]:
        return "synced"
    return "UNSYNCED" + (f" {human_age(r['clock_unsynchronised_s'])}" if r["clock_unsynchronised_s"] else "")


def fleet_table(rows: list[FleetRow]) -> None:
    print_table(
        [
            "kiosk",
            "link",
            "since",
            "last_seen",
            "devices",
            "backlog",
            "oldest",
            "stored",
            "last_delivery",
            "gaps",
            "rejected",
            "clock",
            "disk_free",
            "temp_c",
            "quarantine",
        ],
        [
            [
                r["kiosk"] + ("" if r["registered"] else " (unregistered)"),
                link_text(r),
                r["status_ts"],
                r["last_seen"],
                devices_text(r),
                r["backlog"],
                human_age(r["oldest_pending_age_s"]),
                r["stored"],
                r["last_delivery"],
                gaps_text(r["gaps"]),
                r["rejected"] or None,
                clock_text(r),
                human_bytes(r["disk_free_bytes"]),
                r["cpu_temp_c"],
                quarantine_text(r),
            ]
            for r in rows
        ],
    )


def device_lines(row: FleetRow) -> list[str]:
    """Each device that is not ok, with its detail, and the technician's hint beneath."""
    lines = []
    for name, d in row["devices"].items():
        if d["state"] in ("ok", "untested"):
            continue
        lines.append(f"  {name} {d['state']}" + (f": {d['detail']}" if d["detail"] else ""))
        if d["hint"]:
            lines.append(f"    hint: {d['hint']}")
    return lines


@main.command("fleet")
@click.option("--offline", is_flag=True, help="Only kiosks whose last status is offline.")
@click.option("--faulty", is_flag=True, help="Only kiosks with a faulty or absent peripheral.")
@click.option(
    "--region",
    metavar="CODE",
    help="Only kiosks of this Kemendagri region: 2 digits (province, 32), 4 (regency, 3207) or 6 (district, 320715).",
)
@click.option(
    "--backlog-hours",
    type=click.FloatRange(min=0, min_open=True),
    metavar="H",
    help="Only kiosks whose oldest undelivered packet is older than H hours.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list.")
@pass_ctx
def fleet_cmd(
    ctx: Context,
    offline: bool,
    faulty: bool,
    region: str | None,
    backlog_hours: float | None,
    as_json: bool,
) -> None:
    """One row per kiosk: online or offline and since when, last seen (both by the centre's
    clock), devices that are not ok, backlog, deliveries, seq gaps, clock, disk, temperature;
    then, for each kiosk that needs someone, its problems and each device's detail and hint.

    Exit 1 when a listed kiosk has a problem: offline, a faulty peripheral, a backlog older
    than [web] backlog_problem_hours (24 h), or a problem the kiosk reports itself. Filters
    combine (all must hold).

    JSON: a list of objects, one per kiosk; docs/central.md explains each key (kiosk, region,
    online, status_ts, last_seen, devices, faulty, degraded, backlog, oldest_pending_age_s,
    gaps, problems, ...).

    \b
    Examples:
      ektp-central --config central.toml fleet
      ektp-central --config central.toml fleet --faulty --region 3207
      ektp-central --config central.toml fleet --offline --json
    """
    region = _region_code(region)
    with central_store(ctx) as store:
        rows = store.fleet(backlog_problem_hours=ctx.config.web.backlog_problem_hours)
    rows = [
        r for r in rows if keep(r, offline=offline, faulty=faulty, region=region, backlog_hours=backlog_hours)
    ]
    troubled = [r for r in rows if r["problems"]]
    if as_json:
        emit_json(rows)
    else:
        fleet_table(rows)
        for r in rows:
            lines = [f"  problem: {p}" for p in r["problems"] if not _names_a_device(p, r)] + device_lines(r)
            if lines:
                click.echo(f"\n{r['kiosk']}")
                for line in lines:
                    click.echo(line)
        click.echo(
            f"\n{len(rows)} kiosks listed, {len(troubled)} need attention"
            f" ({sum(r['online'] is False for r in rows)} offline, {sum(bool(r['faulty']) for r in rows)}"
            " with a faulty peripheral)",
            err=not sys.stdout.isatty(),
        )
    if troubled:
        sys.exit(EXIT_PROBLEM)


def _names_a_device(problem: str, row: FleetRow) -> bool:
    """A device problem is shown by device_lines with its hint: not twice."""
    return any(problem.startswith(f"{name} ") for name in row["faulty"])


# ----------------------------------------------------------------------------- kiosk show


@kiosk_group.command("show")
@click.argument("kiosk_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_ctx
def kiosk_show(ctx: Context, kiosk_id: str, as_json: bool) -> None:
    """One kiosk: its status and last health, each device with detail and hint, backlog,
    problems, its newest packets (ids, sizes, times; never content) and its quarantine.

    Exit 1 when the kiosk has a problem (as `fleet`) or the centre knows nothing of it.

    JSON: {"kiosk": the fleet row (as `fleet --json`), "health": the last health document as
    the kiosk sent it (or null), "packets": the newest packets, "quarantine": its entries}.

    \b
    Example:
      ektp-central --config central.toml kiosk show 320715-01
    """
    _kiosk_id(kiosk_id)
    with central_store(ctx) as store:
        rows = store.fleet(kiosk_id, backlog_problem_hours=ctx.config.web.backlog_problem_hours)
        if not rows:
            fail(
                f"the centre knows nothing of kiosk {kiosk_id}: not registered, never heard from"
                " (`ektp-central fleet` lists the kiosks it knows)",
                EXIT_PROBLEM,
            )
        (row,) = rows
        doc: dict[str, Any] = {
            "kiosk": row,
            "health": store.health(kiosk_id),
            "packets": store.packets(kiosk_id, limit=RECENT_PACKETS),
            "quarantine": store.quarantined(kiosk_id),
        }
    if as_json:
        emit_json(doc)
    else:
        _show(doc)
    if row["problems"]:
        sys.exit(EXIT_PROBLEM)


def _show(doc: dict[str, Any]) -> None:
    r: FleetRow = doc["kiosk"]
    fields = [
        ("kiosk", r["kiosk"] + ("" if r["registered"] else " (not registered)")),
        ("region", r["region"]),
        ("link", f"{link_text(r)} since {r['status_ts']}" if r["status_ts"] else link_text(r)),
        ("last seen", r["last_seen"]),
        (
            "last health",
            f"{r['health_received_at']} (kiosk's clock: {r['last_health_ts']})"
            if r["health_received_at"]
            else None,
        ),
        (
            "backlog",
            None
            if r["backlog"] is None
            else f"{r['backlog']} packets, {human_bytes(r['backlog_bytes'])}, oldest {human_age(r['oldest_pending_age_s'])}",
        ),
        (
            "stored",
            f"{r['stored']} (+{r['synthetic']} synthetic)"
            + ("" if r["last_seq"] is None else f", last seq {r['last_seq']}"),
        ),
        ("last delivery", r["last_delivery"]),
        ("gaps", gaps_text(r["gaps"])),
        ("rejected", r["rejected"]),
        ("damaged", r["damaged"]),
        ("clock", clock_text(r)),
        ("disk free", human_bytes(r["disk_free_bytes"])),
        ("cpu temp", None if r["cpu_temp_c"] is None else f"{r['cpu_temp_c']} C"),
        ("reconnects", r["reconnects"]),
        ("refused pubacks", r["refused_pubacks"]),
        ("quarantine", quarantine_text(r)),
    ]
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        click.echo(f"{key.ljust(width)}  {'-' if value is None else value}")
    click.echo("\ndevices")
    for name, d in r["devices"].items():
        click.echo(f"  {name.ljust(12)} {d['state']}" + (f": {d['detail']}" if d["detail"] else ""))
        if d["hint"]:
            click.echo(f"  {''.ljust(12)} hint: {d['hint']}")
    if r["problems"]:
        click.echo("\nproblems")
        for p in r["problems"]:
            click.echo(f"  {p}")
    click.echo(f"\nnewest packets ({len(doc['packets'])})")
    print_table(
        ["packet_id", "seq", "received_at", "bytes", "source"],
        [[p["packet_id"], p["seq"], p["received_at"], p["bytes"], p["source"]] for p in doc["packets"]],
    )
    if doc["quarantine"]:
        click.echo(f"\nquarantine ({len(doc['quarantine'])})")
        print_table(
            ["id", "last_received_at", "times", "bytes", "reason"],
            [
                [q["id"], q["last_received_at"], q["times"], q["bytes"], q["reason"]]
                for q in doc["quarantine"]
            ],
        )
