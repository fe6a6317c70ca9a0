"""`ektp-central packets export`: stored enrollments as ISO/IEC 19794 files (central/export_iso.py)."""

from __future__ import annotations

import sys
from pathlib import Path

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
    pass_ctx,
)
from central.cli_fleet import packets_group, since_text
from wire.keys import KeyFileError


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
