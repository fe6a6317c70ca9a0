"""The remote-command commands of `ektp-agent`: `remote log` (what the centre asked and what
became of it) and `config reset-remote` (back to the config's intervals).

Both work with the service stopped: `remote log` reads {data_dir}/remote.db read-only, and
`config reset-remote` removes {data_dir}/remote-settings.json itself when no service runs
(with the service running it asks the service, which applies the config's values at once).
"""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

# as a module: agent.cli_kiosk may still be importing agent.cli, which imports this module
from agent import cli_kiosk
from agent.api import ApiError, ServiceNotRunning
from agent.cli import EXIT_OK, EXIT_PROBLEM, Context, config_group, emit_json, fail, main, pass_ctx
from agent.config import AgentConfig
from agent.remote_store import (
    RemoteStoreError,
    db_path,
    intervals_in_force,
    read_audit,
    read_overrides,
    remove_overrides,
    settings_path,
)

STATUS_STYLE = {
    "ok": "green",
    "failed": "bold red",
    "refused": "yellow",
    "expired": "yellow",
    "running": "cyan",
}


@main.group("remote")
def remote_group() -> None:
    """The centre's commands to this kiosk (`ektp-central kiosk cmd`)."""


@remote_group.command("log")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list, oldest first.")
@click.option(
    "--limit", type=click.IntRange(1, 10_000), default=None, metavar="N", help="Only the last N commands."
)
@pass_ctx
def remote_log_cmd(ctx: Context, as_json: bool, limit: int | None) -> None:
    """Every command the centre sent and what became of it (works with the service stopped).

    One line per command, oldest first: when it arrived, who sent it (the issuer the centre
    signed; "(unverified)" for a message that did not verify), the verb and its arguments,
    the status (ok, failed, refused, expired; running while it runs) and the reason or a
    short summary of the result. The kiosk keeps the last 10,000.

    JSON: [{"id", "received_at", "command_id", "issuer", "verb", "args", "status", "reason",
    "summary", "finished_at"}].

    \b
    Examples:
      ektp-agent remote log
      ektp-agent remote log --limit 20 --json
    """
    path = db_path(ctx.config.kiosk.data_dir)
    try:
        rows = read_audit(path, limit)
    except FileNotFoundError:
        rows = []
    except RemoteStoreError as exc:
        fail(str(exc), EXIT_PROBLEM)
    if as_json:
        emit_json([r.to_json() for r in rows])
        return
    if not rows:
        click.echo("no command from the centre yet")
        return
    table = Table(box=None)
    for column in ("received", "issuer", "command", "status", "reason / result"):
        table.add_column(column, no_wrap=column in ("received", "status"))
    for r in rows:
        args = " ".join(_arg_text(k, v) for k, v in sorted(r.args.items()) if v not in (None, [], False))
        style = STATUS_STYLE.get(r.status, "")
        table.add_row(
            r.received_at,
            escape(r.issuer),
            escape(f"{r.verb} {args}".strip()),
            f"[{style}]{r.status}[/]" if style else escape(r.status),
            escape(r.reason or r.summary),
        )
    con = cli_kiosk._console()
    cli_kiosk._print_table(con, table)
    con.print(f"{len(rows)} command(s); `ektp-agent remote log --json` gives command ids and finish times")


def _arg_text(key: str, value: Any) -> str:
    if isinstance(value, list):
        return f"{key}={','.join(str(v) for v in value)}"
    if value is True:
        return f"--{key}"
    return f"{key}={value}"


@config_group.command("reset-remote")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def reset_remote_cmd(ctx: Context, as_json: bool) -> None:
    """Undo the centre's selftest-interval and health-interval: back to the config's values.

    Says what it reverted (the value, who set it and when) and the intervals now in force.
    With the service running it applies them at once; stopped, it removes the overrides
    file ({data_dir}/remote-settings.json) and the service starts with the config's values.

    JSON: {"reverted": [{"verb", "seconds", "set_by", "set_at", "now_s"}], "health_interval_s",
    "selftest_interval_s", "service"}.

    \b
    Example:
      ektp-agent config reset-remote
    """
    config = ctx.config
    try:
        doc = cli_kiosk.call(config, "reset-remote", timeout=cli_kiosk.STATUS_TIMEOUT_S)[0]
        service = "running"
    except ServiceNotRunning:
        doc = _reset_offline(config)
        service = "stopped"
    except ApiError as exc:
        fail(str(exc), EXIT_PROBLEM)
    doc["service"] = service
    doc.pop("before", None)
    if as_json:
        emit_json(doc)
        sys.exit(EXIT_OK)
    if not doc["reverted"]:
        click.echo("no interval set by the centre: nothing to revert")
    for r in doc["reverted"]:
        click.echo(
            f"reverted {r['verb']} {r['seconds']} s (set by {r['set_by']} at {r['set_at']}): now {r['now_s']:g} s"
        )
    when = "in force now" if service == "running" else "used when the service starts"
    click.echo(
        f"health every {doc['health_interval_s']:g} s, self-tests every {doc['selftest_interval_s']:g} s"
        f" ([health] interval_s; {when})"
    )


def _reset_offline(config: AgentConfig) -> dict[str, Any]:
    from agent.service import reset_json

    path = settings_path(config.kiosk.data_dir)
    before = intervals_in_force(config.health.interval_s, read_overrides(path))
    try:
        removed = remove_overrides(path)
    except PermissionError:
        raise  # the group's one line
    except OSError as exc:
        fail(f"cannot remove {path}: {exc.strerror or exc}", EXIT_PROBLEM)
    health_s, selftest_s = intervals_in_force(config.health.interval_s, {})
    return reset_json(
        removed, {"health-interval": before[0], "selftest-interval": before[1]}, health_s, selftest_s
    )


__all__ = ["remote_log_cmd", "reset_remote_cmd"]
