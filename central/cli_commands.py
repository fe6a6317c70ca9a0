"""`ektp-central kiosk cmd ID VERB ...`: a signed command to one kiosk, waiting for its signed
result; `kiosk cmd-log ID`: the commands sent to a kiosk and what became of each."""

from __future__ import annotations

import getpass
import re
import sys
from collections.abc import Callable
from typing import Any

import click

from central.cli import (
    EXIT_PROBLEM,
    EXIT_USAGE,
    Context,
    _kiosk_id,
    central_store,
    emit_json,
    fail,
    kiosk_group,
    pass_ctx,
    print_table,
)
from central.commands import DEFAULT_TIMEOUT_S, args_text, packet_ids, result_lines, since_time, summary
from wire.command import (
    DEFAULT_LOG_LINES,
    DEFAULT_TTL_S,
    DEVICE_NAMES,
    INTERVAL_BOUNDS_S,
    ISSUER_RE,
    MAX_LOG_LINES,
    MAX_TTL_S,
)

FINAL_OK = "ok"


def default_issuer() -> str:
    """The OS user's name, in the characters a command's issuer may have."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        name = "unknown"
    return re.sub(r"[^A-Za-z0-9_.@ -]", "_", name)[:64] or "unknown"


def _common(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options every verb takes."""
    for option in reversed(
        [
            click.option(
                "--timeout",
                "timeout_s",
                type=click.FloatRange(min=0.1, max=MAX_TTL_S),
                default=DEFAULT_TIMEOUT_S,
                show_default=True,
                metavar="S",
                help="Seconds to wait for the result. The command stays valid after that (until --ttl);"
                " a running `ektp-central run` stores its result when it comes.",
            ),
            click.option(
                "--ttl",
                "ttl_s",
                type=click.IntRange(min=1, max=MAX_TTL_S),
                default=DEFAULT_TTL_S,
                show_default=True,
                metavar="S",
                help=f"Seconds the command stays valid: an offline kiosk runs it when it returns within"
                f" this, and refuses it after (at most {MAX_TTL_S} s, 7 days).",
            ),
            click.option(
                "--as",
                "issuer",
                metavar="NAME",
                help="Who sends it, as the kiosk's log and `kiosk cmd-log` show it (default: the OS user).",
            ),
            click.option("--json", "as_json", is_flag=True, help="Print one JSON object."),
        ]
    ):
        f = option(f)
    return f


@kiosk_group.group("cmd")
@click.argument("kiosk_id", metavar="ID")
@click.pass_context
def cmd_group(click_ctx: click.Context, kiosk_id: str) -> None:
    """Send kiosk ID a command signed with the centre's key, and wait for its signed result.

    The kiosk runs it only if the signature verifies with the centre's key, it names this
    kiosk, has not expired and has not been run before; remote commands (or this verb) may
    be disabled in the kiosk's config. Either way it answers with a result signed by its own
    key, verified here with its registered keys and kept in the store (`kiosk cmd-log ID`).

    Exit 0 when the kiosk ran it and it succeeded; 1 when it failed, was refused, had
    expired, or no result came within --timeout (the command stays valid until its expiry;
    `ektp-central run` stores a late result), or the kiosk is not registered (nothing sent);
    2 on a usage or config error.

    JSON: {"kiosk", "command_id", "verb", "args", "status": ok, failed, refused, expired or
    timeout, "reason", "result": {...}, "issued_at", "expires_at", "finished_at", "issuer"}.

    \b
    Examples:
      ektp-central --config central.toml kiosk cmd 320715-01 diag
      ektp-central --config central.toml kiosk cmd 320715-01 logs --lines 50 --since 2h
      ektp-central --config central.toml kiosk cmd 320715-01 resubmit --rejected --json
    """
    _kiosk_id(kiosk_id)
    click_ctx.meta["ektp.kiosk"] = kiosk_id


def _send(
    verb: str, args: dict[str, Any], timeout_s: float, ttl_s: int, issuer: str | None, as_json: bool
) -> None:
    """Send one command and report it (exits)."""
    import logging

    from central.commands import BrokerError, UnknownKiosk, send_command
    from central.consumer import LinkSetupError
    from central.keyring import load_keyring
    from wire.command import CommandError, check_args
    from wire.keys import KeyFileError

    click_ctx = click.get_current_context()
    ctx: Context = click_ctx.find_object(Context)  # type: ignore[assignment]
    kiosk = click_ctx.meta["ektp.kiosk"]
    name = issuer if issuer is not None else default_issuer()
    if ISSUER_RE.fullmatch(name) is None:
        fail(f"--as {name!r}: 1-64 characters of A-Z a-z 0-9 _ . @ - and space", EXIT_USAGE)
    try:
        check_args(verb, args)
    except CommandError as exc:
        fail(str(exc), EXIT_USAGE)
    config = ctx.config
    try:
        keyring = load_keyring(config.central_private_key)
    except KeyFileError as exc:
        fail(f"{exc} ([keys] central_private_key in {ctx.path}: commands are signed with it)", EXIT_USAGE)
    # warnings (a result that does not verify) go to stderr as they happen
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="ektp-central: %(message)s")
    with central_store(ctx) as store:
        try:
            outcome = send_command(
                config,
                store,
                keyring,
                kiosk,
                verb,
                args,
                issuer=name,
                via="cli",
                ttl_s=ttl_s,
                timeout_s=timeout_s,
            )
        except UnknownKiosk as exc:
            fail(str(exc), EXIT_PROBLEM)
        except LinkSetupError as exc:
            fail(f"{exc} (in {ctx.path})", EXIT_USAGE)
        except BrokerError as exc:
            fail(f"{exc}; `ektp-central kiosk cmd-log {kiosk}` lists it", EXIT_PROBLEM)
    doc = outcome.to_json()
    if as_json:
        emit_json(doc)
    else:
        _print_outcome(doc, outcome.seconds)
    if outcome.status == "timeout":
        click.echo(
            f"ektp-central: no result from kiosk {kiosk} within {timeout_s:g} s. The command stays valid until"
            f" {doc['expires_at']}: a kiosk that is offline runs it when it returns, and a running"
            f" `ektp-central run` stores its result when it comes (`ektp-central kiosk cmd-log {kiosk}`"
            " shows it).",
            err=True,
        )
    if outcome.unverified:
        click.echo(
            f"ektp-central: {outcome.unverified} result(s) on kiosk {kiosk}'s topic did not verify with its"
            " keys and were not stored",
            err=True,
        )
    sys.exit(0 if outcome.status == FINAL_OK else EXIT_PROBLEM)


def _print_outcome(doc: dict[str, Any], seconds: float) -> None:
    took = f" after {seconds:.1f} s" if doc["status"] != "timeout" else ""
    click.echo(f"kiosk {doc['kiosk']}: {doc['verb']} {doc['status']}{took}")
    if doc["reason"]:
        click.echo(f"  reason: {doc['reason']}")
    click.echo(f"  command {doc['command_id']} by {doc['issuer']}, valid until {doc['expires_at']}")
    lines = result_lines(doc["verb"], doc["result"])
    if lines:
        click.echo("")
        for line in lines:
            click.echo(f"  {line}")


# ----------------------------------------------------------------------------- the verbs


@cmd_group.command("diag")
@click.argument("devices", nargs=-1, type=click.Choice(DEVICE_NAMES), metavar="[DEVICE ...]")
@_common
def cmd_diag(
    devices: tuple[str, ...], timeout_s: float, ttl_s: int, issuer: str | None, as_json: bool
) -> None:
    """Self-test the kiosk's devices (all, or those named): each one's state, detail and hint."""
    _send("diag", {"devices": list(devices)}, timeout_s, ttl_s, issuer, as_json)


@cmd_group.command("status")
@_common
def cmd_status(timeout_s: float, ttl_s: int, issuer: str | None, as_json: bool) -> None:
    """The kiosk's status as `ektp-agent status` shows it: devices, queue, link, clock, disk."""
    _send("status", {}, timeout_s, ttl_s, issuer, as_json)


@cmd_group.command("logs")
@click.option(
    "--lines",
    type=click.IntRange(1, MAX_LOG_LINES),
    default=DEFAULT_LOG_LINES,
    show_default=True,
    metavar="N",
    help=f"The newest N lines (1-{MAX_LOG_LINES}).",
)
@click.option(
    "--since",
    metavar="TIME",
    help="Only lines from TIME on: RFC 3339 (2026-12-01T08:00:00Z) or an age (30m, 2h, 7d).",
)
@_common
def cmd_logs(
    lines: int, since: str | None, timeout_s: float, ttl_s: int, issuer: str | None, as_json: bool
) -> None:
    """The kiosk's recent log lines, redacted as its local log is: no NIK, no name, no biometric data."""
    args: dict[str, Any] = {"lines": lines}
    if since is not None:
        try:
            args["since"] = since_time(since)
        except ValueError as exc:
            fail(f"--{exc}", EXIT_USAGE)
    _send("logs", args, timeout_s, ttl_s, issuer, as_json)


@cmd_group.command("sync")
@_common
def cmd_sync(timeout_s: float, ttl_s: int, issuer: str | None, as_json: bool) -> None:
    """Make the kiosk send its undelivered packets now (as `ektp-agent sync`)."""
    _send("sync", {}, timeout_s, ttl_s, issuer, as_json)


@cmd_group.command("resubmit")
@click.argument("ids", nargs=-1, metavar="[PACKET_ID ...]")
@click.option("--rejected", is_flag=True, help="Every packet the centre rejected (instead of PACKET_IDs).")
@_common
def cmd_resubmit(
    ids: tuple[str, ...],
    rejected: bool,
    timeout_s: float,
    ttl_s: int,
    issuer: str | None,
    as_json: bool,
) -> None:
    """Send rejected packets again (as `ektp-agent resubmit`): the PACKET_IDs, or --rejected for all."""
    if bool(ids) == rejected:
        fail("name the PACKET_IDs to resubmit, or pass --rejected, not both", EXIT_USAGE)
    try:
        checked = packet_ids(ids)
    except ValueError as exc:
        fail(f"PACKET_ID {exc}", EXIT_USAGE)
    _send("resubmit", {"packet_ids": checked, "rejected": rejected}, timeout_s, ttl_s, issuer, as_json)


def _interval(verb: str, what: str) -> None:
    low, high = INTERVAL_BOUNDS_S[verb]

    @cmd_group.command(verb)
    @click.argument("seconds", type=click.IntRange(low, high), metavar="S")
    @_common
    def cmd_interval(seconds: int, timeout_s: float, ttl_s: int, issuer: str | None, as_json: bool) -> None:
        _send(verb, {"seconds": seconds}, timeout_s, ttl_s, issuer, as_json)

    cmd_interval.help = (
        f"Set the kiosk's {what} to S seconds ({low}-{high}), until `ektp-agent config reset-remote`"
        " on the kiosk; `ektp-agent status` there shows it."
    )


_interval("selftest-interval", "device self-test interval")
_interval("health-interval", "health publishing interval")


@cmd_group.command("reopen")
@click.argument("device", type=click.Choice(DEVICE_NAMES), metavar="DEVICE")
@_common
def cmd_reopen(device: str, timeout_s: float, ttl_s: int, issuer: str | None, as_json: bool) -> None:
    """Close and reopen one peripheral's port or handle (fingerprint, signature, iris, camera)."""
    _send("reopen", {"device": device}, timeout_s, ttl_s, issuer, as_json)


# ----------------------------------------------------------------------------- the log


@kiosk_group.command("cmd-log")
@click.argument("kiosk_id", metavar="ID")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    metavar="N",
    help="The newest N commands.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list.")
@pass_ctx
def cmd_log(ctx: Context, kiosk_id: str, limit: int, as_json: bool) -> None:
    """The commands sent to kiosk ID, newest first, and what became of each: who sent them
    (and from where: cli or web), when, the verb and its arguments, and the status: ok,
    failed, refused, expired (the kiosk's signed result said so), pending (the broker has it,
    no result yet), unanswered (expired without a result), unsent (the broker did not take
    it), sending. Then the kiosk's results for commands this centre has no record of.

    JSON: a list of objects with kiosk, command_id, verb, args, issuer, via, issued_at,
    expires_at, sent_at, send_error, status, reason, result, finished_at, received_at,
    other_results (later results for the same id: a replay's refusal) and recorded.

    \b
    Example:
      ektp-central --config central.toml kiosk cmd-log 320715-01
    """
    _kiosk_id(kiosk_id)
    with central_store(ctx) as store:
        entries = store.command_log(kiosk_id, limit=limit)
    if as_json:
        emit_json(entries)
        return
    print_table(
        ["issued_at", "by", "verb", "args", "status", "result", "command_id"],
        [
            [
                e["issued_at"] or "(not sent from here)",
                f"{e['issuer']} ({e['via']})" if e["issuer"] else None,
                e["verb"],
                args_text(e["args"]),
                e["status"] + (f" +{len(e['other_results'])}" if e["other_results"] else ""),
                summary(e["verb"], e["status"], e["reason"], e["result"]) or None,
                e["command_id"],
            ]
            for e in entries
        ],
    )
