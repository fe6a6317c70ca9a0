"""`ektp-central`: the reference central consumer and its administration commands.

Exit codes as the agent's: 0 well, 1 a problem found, 2 usage or config error.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from central.config import (
    DEFAULT_CENTRAL_CONFIG,
    CentralConfig,
    ConfigError,
    check_environment,
    load_central_config,
)
from wire import __version__
from wire.keys import KeyFileError

if TYPE_CHECKING:
    from central.keyring import CentralKeyring
    from central.store import CentralStore

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"ektp-central: {message}", err=True)
    sys.exit(code)


def emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc))


class Context:
    """What every command gets: the config, loaded on first use.

    Without a config file every command that uses it stops (exit 2) rather than run on the
    built-in defaults: those would create a store and keys under /var/lib/ektp-central that
    nobody chose, and show an empty fleet as if it were the real one.
    """

    def __init__(self, config_arg: str | None) -> None:
        self.path = Path(config_arg) if config_arg else DEFAULT_CENTRAL_CONFIG
        self.explicit = config_arg is not None  # --config or $EKTP_CENTRAL_CONFIG
        self._config: CentralConfig | None = None

    @property
    def config(self) -> CentralConfig:
        if self._config is None:
            if not _exists(self.path):
                write = f"or write one with: ektp-central config init --to {self.path}"
                if self.explicit:
                    fail(
                        f"no config file at {self.path} (check --config or $EKTP_CENTRAL_CONFIG, {write})",
                        EXIT_USAGE,
                    )
                fail(
                    f"no config file at {self.path}: the centre does not run on built-in defaults"
                    f" (pass --config PATH or set $EKTP_CENTRAL_CONFIG, {write})",
                    EXIT_USAGE,
                )
            try:
                self._config = load_central_config(self.path)
            except ConfigError as exc:
                fail(str(exc), EXIT_USAGE)
        return self._config


def _exists(path: Path) -> bool:
    """False only when nothing is there; a path this user may not look at is left to the loader."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


pass_ctx = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    "config_arg",
    metavar="PATH",
    envvar="EKTP_CENTRAL_CONFIG",
    help="Central config (TOML). Default /etc/ektp-central/config.toml, or $EKTP_CENTRAL_CONFIG.",
)
@click.version_option(__version__, prog_name="ektp-central")
@click.pass_context
def main(ctx: click.Context, config_arg: str | None) -> None:
    """The reference central consumer of the e-KTP kiosks: stores enrollments exactly once,
    acknowledges them with a signature, and keeps the fleet's health table.

    \b
    Examples:
      ektp-central config init --to central.toml
      ektp-central --config central.toml keys init
      ektp-central --config central.toml kiosk add 320715-01 --public-key kiosk.key.pub
      ektp-central --config central.toml run
    """
    ctx.obj = Context(config_arg)


@main.group("kiosk")
def kiosk_group() -> None:
    """One kiosk: register its keys, show it, send it commands."""


def _kiosk_id(kiosk_id: str) -> None:
    """Exit 2 unless ``kiosk_id`` is a kiosk id (checked before the store is touched)."""
    from wire.names import KIOSK_ID_RE

    if KIOSK_ID_RE.fullmatch(kiosk_id) is None:
        fail(
            f'kiosk id {kiosk_id!r} is invalid: expected 1-64 characters from A-Z a-z 0-9 _ - (e.g. "320715-01")',
            EXIT_USAGE,
        )


# ----------------------------------------------------------------------------- the store


@contextmanager
def central_store(ctx: Context) -> Iterator[CentralStore]:
    """The configured store, closed on the way out; a store failure exits 1 with its message."""
    from central.store import StoreError, open_store

    try:
        store = open_store(ctx.config.store_url)
    except StoreError as exc:
        fail(str(exc), EXIT_PROBLEM)
    store.quarantine_cap_bytes = ctx.config.quarantine_cap_bytes
    try:
        yield store
    except StoreError as exc:
        fail(str(exc), EXIT_PROBLEM)
    finally:
        store.close()


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Plain aligned columns (greppable, and the same on a terminal or in a pipe)."""
    cells = [[str(h).upper() for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@main.group("quarantine", invoke_without_command=True)
@click.option("--kiosk", "kiosk", metavar="ID", help="Only what names this kiosk.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list.")
@click.pass_context
def quarantine_group(click_ctx: click.Context, kiosk: str | None, as_json: bool) -> None:
    """List what was kept in quarantine and why (unknown kiosk, wrong centre key, conflicts,
    damaged imports); `quarantine retry` ingests it again once the cause is fixed.

    JSON: a list of objects with id, received_at, last_received_at, times, kiosk_hint,
    reason, source, bytes.

    \b
    Example:
      ektp-central --config central.toml quarantine --json
      ektp-central --config central.toml quarantine retry --all
    """
    if click_ctx.invoked_subcommand is not None:
        return
    ctx: Context = click_ctx.obj
    with central_store(ctx) as store:
        rows = store.quarantined(kiosk)
    if as_json:
        emit_json(rows)
        return
    print_table(
        ["id", "last_received_at", "times", "kiosk", "source", "bytes", "reason"],
        [
            [
                r["id"],
                r["last_received_at"],
                r["times"],
                r["kiosk_hint"],
                r["source"],
                r["bytes"],
                r["reason"],
            ]
            for r in rows
        ],
    )


@quarantine_group.command("retry")
@click.argument("ids", metavar="[ID ...]", nargs=-1, type=int)
@click.option("--all", "retry_all", is_flag=True, help="Retry everything in quarantine.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object with the counts and each result."
)
@pass_ctx
def quarantine_retry(ctx: Context, ids: tuple[int, ...], retry_all: bool, as_json: bool) -> None:
    """Ingest quarantined packets again (by quarantine id, or --all), e.g. after `kiosk add`.

    Each goes through the same checks as a packet from MQTT. Those now stored or
    duplicate leave the quarantine; the others stay with the new reason. Prints the
    stored / duplicate / rejected / damaged / conflict counts (exit 0). Exit 1 if an ID is
    not in the quarantine (nothing is retried then), 2 with neither IDs nor --all.

    \b
    Example:
      ektp-central --config central.toml kiosk add 320715-01 --public-key 320715-01.key.pub
      ektp-central --config central.toml quarantine retry --all
    """
    from central.ingest import STATUSES, Ingestor

    if not ids and not retry_all:
        fail(
            "name the quarantine IDs to retry, or pass --all (`ektp-central quarantine` lists them)",
            EXIT_USAGE,
        )
    if ids and retry_all:
        fail("pass either quarantine IDs or --all, not both", EXIT_USAGE)
    logging.getLogger("central").addHandler(logging.NullHandler())  # the report below says it all
    keys = _central_keys_if_readable(ctx)
    with central_store(ctx) as store:
        held = store.quarantine_ids()
        missing = sorted(set(ids) - set(held))
        if missing:
            fail(
                f"not in the quarantine: {', '.join(map(str, missing))} (`ektp-central quarantine` lists the IDs)",
                EXIT_PROBLEM,
            )
        results = Ingestor(store, keys).retry_quarantined(list(ids) if ids else held)
    counts = dict.fromkeys(STATUSES, 0)
    for _, result in results:
        counts[result.status] += 1
    if as_json:
        emit_json(
            {
                **counts,
                "results": [
                    {
                        "id": qid,
                        "status": r.status,
                        "packet_id": r.packet_id,
                        "kiosk": r.kiosk,
                        "seq": r.seq,
                        "reason": r.reason,
                    }
                    for qid, r in results
                ],
            }
        )
        return
    for qid, r in results:
        if not r.acknowledged:
            click.echo(f"{r.status} {qid}: {r.reason.removeprefix(r.status + ': ')}")
    click.echo(", ".join(f"{status} {n}" for status, n in counts.items()))


def _central_keys_if_readable(ctx: Context) -> CentralKeyring | None:
    """The centre's keys for the body check, or None (with a note on stderr) when they cannot be read.

    Import and retry need only the store; with the keys they also refuse what the consumer
    refuses (a body encrypted to another centre key). Retired key pairs count (central.keyring).
    """
    from central.keyring import load_keyring

    path = ctx.config.central_private_key
    try:
        return load_keyring(path)
    except KeyFileError as exc:
        click.echo(f"ektp-central: note: packet bodies are not checked: {exc}", err=True)
        return None


@main.command("partials")
@click.option("--kiosk", "kiosk", metavar="ID", help="Only this kiosk's transfers.")
@click.option(
    "--expire",
    is_flag=True,
    help="First drop the transfers idle for longer than [store] partial_expiry_s (the consumer does it too).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list.")
@pass_ctx
def partials_cmd(ctx: Context, kiosk: str | None, expire: bool, as_json: bool) -> None:
    """List the packets in transfer: the chunks the centre holds until a packet is whole.

    JSON: a list of objects with kiosk, packet_id, sha256, total (the packet's bytes),
    have (bytes held from its start without a gap), chunks, first_received_at,
    last_received_at. Never content.

    \b
    Example:
      ektp-central --config central.toml partials --kiosk 320715-01 --json
    """
    with central_store(ctx) as store:
        if expire:
            dropped = store.expire_partials(ctx.config.partial_expiry_s)
            click.echo(
                f"dropped {dropped} transfers idle for over {ctx.config.partial_expiry_s:.0f} s", err=True
            )
        rows = store.partials(kiosk)
    if as_json:
        emit_json(rows)
        return
    print_table(
        ["kiosk", "packet_id", "sha256", "have", "total", "chunks", "last_received_at"],
        [
            [
                r["kiosk"],
                r["packet_id"],
                r["sha256"][:12],
                r["have"],
                r["total"],
                r["chunks"],
                r["last_received_at"],
            ]
            for r in rows
        ],
    )


@main.command("import")
@click.argument("directory", metavar="DIR", type=click.Path(exists=True, file_okay=False, dir_okay=True))
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object with the counts, each file's result and each skipped entry.",
)
@pass_ctx
def import_cmd(ctx: Context, directory: str, as_json: bool) -> None:
    """Ingest the packet files in DIR (from `ektp-agent export`), with the same idempotency as MQTT.

    Every regular file directly in DIR except dotfiles is read as one packet. Already stored
    packets count as duplicates. Files that do not authenticate (cut, altered) are
    damaged; unknown kiosks, bodies for another centre key and conflicting copies are
    rejected or conflict; all of those are kept in quarantine (exit 1). Prints the
    stored / duplicate / rejected / damaged / conflict counts. Importing the same
    directory twice stores nothing new.

    DIR may come from a hostile stick: no symlink is followed (neither an entry nor DIR's
    path), and symlinks, subdirectories, FIFOs, devices, hard links, files over the
    largest packet size and the centre's own files are skipped, each named with the
    reason (exit 1); the other files are imported all the same.

    JSON: {"directory", "stored", "duplicate", "rejected", "damaged", "conflict", "files":
    [{"file", "status", "packet_id", "kiosk", "seq", "reason"}], "skipped": [{"file",
    "kind", "reason"}]}.

    \b
    Example:
      ektp-central --config central.toml import /media/usb/ektp-export
    """
    from central.import_dir import ExportDir, ImportDirError, centre_files, import_files
    from central.ingest import Ingestor

    for name in ("central.ingest", "central.store"):  # the report below says it all
        logging.getLogger(name).addHandler(logging.NullHandler())
    keys = _central_keys_if_readable(ctx)
    try:
        export = ExportDir(directory, protected=centre_files(ctx.config))
    except ImportDirError as exc:
        fail(str(exc), EXIT_USAGE)
    with export, central_store(ctx) as store, _progress(len(export.names)) as advance:
        report = import_files(export, Ingestor(store, keys), advance)
    if as_json:
        emit_json(report.to_json())
    else:
        for line in report.lines():
            click.echo(line)
    if report.problem:
        sys.exit(EXIT_PROBLEM)


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr when it is a terminal; otherwise nothing."""
    if total < 2 or not sys.stderr.isatty():
        yield lambda _n: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("importing", total=total)
        yield lambda n: progress.advance(task, n)


@main.command("run")
@pass_ctx
def run_cmd(ctx: Context) -> None:
    """Consume enrollments, store them exactly once, acknowledge them; track the fleet.

    Several instances may run against the same broker and store: the shared
    subscription splits the packets between them. SIGTERM stops it cleanly.

    \b
    Example:
      ektp-central --config /etc/ektp-central/config.toml run
    """
    from central.consumer import LinkSetupError
    from central.service import run_central
    from central.store import StoreError

    try:
        check_environment(ctx.config)  # a missing TLS or password file, named before anything starts
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    try:
        code = run_central(ctx.config)
    except KeyFileError as exc:
        fail(f"{exc} ([keys] central_private_key in {ctx.path})", EXIT_USAGE)
    except LinkSetupError as exc:
        fail(f"{exc} (in {ctx.path})", EXIT_USAGE)
    except StoreError as exc:
        fail(str(exc), EXIT_PROBLEM)
    sys.exit(code)


# The config, fleet, key, command and web commands register themselves on ``main`` and
# ``kiosk_group``; imported last, once those exist (tests/test_cli_imports.py).
from central import cli_commands as _remote_commands  # noqa: E402, F401
from central import cli_config as _config_commands  # noqa: E402, F401
from central import cli_fleet as _fleet_commands  # noqa: E402, F401
from central import cli_keys as _key_commands  # noqa: E402, F401
from central import cli_web as _web_commands  # noqa: E402, F401
