"""`ektp-agent`: the service and the operator's and field technician's command line.

Exit codes (CONTRACT.md): 0 all well; 1 a problem was found (the output says which and
what to do); 2 usage or config error; 3 the service is not running and the command needs it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from agent import __version__, kiosk_keys
from agent.config import (
    AgentConfig,
    ConfigError,
    as_dict,
    check_environment,
    check_key_files,
    config_path,
    config_template,
    load_config,
    parse_config,
)
from wire.config_file import split_broker, write_config_file, write_error
from wire.keys import KeyFileError, key_fingerprint, load_kiosk_private, public_path, raw_public

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3


# Commands that do not run on the built-in defaults: they would make state (the service's
# outbox, a key pair) under a kiosk id and data dir nobody chose, or have nothing to check.
NEEDS_CONFIG_FILE = frozenset({"run", "keys init", "keys rotate", "config check"})


class Context:
    """What every subcommand gets: the config, loaded once on first use.

    Without a config file (none named, and nothing at the default path) a command either
    says so on stderr and uses the built-in defaults, or, for NEEDS_CONFIG_FILE, stops.
    """

    def __init__(self, config_arg: str | None) -> None:
        self.path, self.explicit = config_path(config_arg)
        self._config: AgentConfig | None = None

    @property
    def config(self) -> AgentConfig:
        if self._config is None:
            if _exists(self.path):
                try:
                    self._config = load_config(self.path)
                except ConfigError as exc:
                    fail(str(exc), EXIT_USAGE)
            else:
                self._config = self._without_file()
        return self._config

    def _without_file(self) -> AgentConfig:
        write = f"or write one with: ektp-agent config init --to {self.path}"
        if self.explicit:
            fail(f"no config file at {self.path} (check --config or $EKTP_CONFIG, {write})", EXIT_USAGE)
        command = _command_name()
        if command in NEEDS_CONFIG_FILE:
            fail(
                f"no config file at {self.path}: `ektp-agent {command}` needs one (pass --config PATH, {write})",
                EXIT_USAGE,
            )
        click.echo(
            f"ektp-agent: no config file at {self.path} (pass --config PATH, {write}); using built-in defaults",
            err=True,
        )
        return AgentConfig()


def _exists(path: Path) -> bool:
    """False only when nothing is there; a path this user may not look at is left to the loader."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


def _command_name() -> str:
    """The subcommand being run, e.g. "keys init"."""
    names: list[str] = []
    ctx = click.get_current_context(silent=True)
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(names))


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"ektp-agent: {message}", err=True)
    sys.exit(code)


def emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=None, sort_keys=False))


pass_ctx: Callable[..., Any] = click.make_pass_decorator(Context)


class AgentGroup(click.Group):
    """Turns a permission problem anywhere below into one clear line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PermissionError as exc:
            fail(permission_message(exc, ctx.obj), EXIT_PROBLEM)


def permission_message(exc: PermissionError, obj: object) -> str:
    """One line naming what may not be used and what to do."""
    config = obj._config if isinstance(obj, Context) else None
    socket = config.api_socket if config is not None else None
    what = exc.filename
    if what is not None and socket is not None and Path(what) == socket:
        return (
            f"permission denied on the agent's API socket {what}: add this user to the group "
            "ektp (`sudo usermod -aG ektp $USER`, then log in again) or run as root (sudo)"
        )
    if what is None:  # e.g. connect(2) on a socket: it names no path
        why = exc.strerror or str(exc)
        return f"permission denied ({why}): run as root (sudo) or as a member of the ektp group"
    return f"permission denied on {what}: run as root (sudo) or as a member of the ektp group"


@click.group(
    cls=AgentGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.option(
    "--config",
    "config_arg",
    metavar="PATH",
    envvar="EKTP_CONFIG",
    help="Config file (TOML). Default /etc/ektp-agent/config.toml, or $EKTP_CONFIG.",
)
@click.version_option(__version__, prog_name="ektp-agent")
@click.pass_context
def main(ctx: click.Context, config_arg: str | None) -> None:
    """Edge agent of the e-KTP recorder kit: records enrollments offline, syncs them and
    reports kit health over MQTT.

    \b
    Examples:
      ektp-agent config init --kiosk-id 320715-01 --broker mqtt.example:8883 --to /etc/ektp-agent/config.toml
      ektp-agent --config /etc/ektp-agent/config.toml config check
      ektp-agent keys init
    """
    # Whatever the caller's umask: every file the kiosk makes (state, keys, exports, the
    # simulator's) is private. The API socket is opened up to its group explicitly.
    os.umask(0o077)
    ctx.obj = Context(config_arg)


# ----------------------------------------------------------------------------- config


@main.group("config")
def config_group() -> None:
    """Write a commented config file, or check one."""


@config_group.command("init")
@click.option(
    "--kiosk-id", "kiosk_id", metavar="ID", help="Set [kiosk] id (e.g. 320715-01); default: the host name."
)
@click.option("--broker", metavar="HOST:PORT", help="Set [mqtt] host and port (e.g. mqtt.example:8883).")
@click.option(
    "--simulate",
    is_flag=True,
    help="A simulated kit: the serial ports are the simulator's, as `run --simulate` uses them.",
)
@click.option(
    "--to",
    "to",
    metavar="PATH",
    type=click.Path(path_type=Path),
    help="Write the file here (mode 0640, the group of its directory). Default: print it on stdout.",
)
@click.option(
    "--force", is_flag=True, help="Replace what is at --to (atomically; a symlink itself, never its target)."
)
def config_init(
    kiosk_id: str | None, broker: str | None, simulate: bool, to: Path | None, force: bool
) -> None:
    """Write a config with every key the agent reads: its meaning, what it accepts, its default.

    Every key is commented out (so the file loads as the built-in defaults) except those
    the options set. An existing file is never overwritten without --force. The same
    file (without options) ships as examples/agent.toml.

    \b
    Examples:
      ektp-agent config init --kiosk-id 320715-01 --broker mqtt.example:8883 \\
          --to /etc/ektp-agent/config.toml
      ektp-agent config init --simulate --kiosk-id 320715-01 --broker localhost:1883 --to ./agent.toml
    """
    address = None
    if broker is not None:
        try:
            address = split_broker(broker)
        except ValueError as exc:
            fail(f"--broker {broker!r}: {exc}", EXIT_USAGE)
    text = config_template(kiosk_id=kiosk_id, broker=address, simulate=simulate)
    try:  # what is written must load: a value the loader refuses is named as the option
        written = parse_config(text, path=to)
    except ConfigError as exc:
        option = {"kiosk.id": f"--kiosk-id {kiosk_id!r}"}.get(exc.key, f"--broker {broker!r}")
        fail(f"{option}: expected {exc.expected}", EXIT_USAGE)
    if kiosk_id is None:
        click.echo(
            f"ektp-agent: note: no --kiosk-id, so [kiosk] id is left to its default, this machine's host"
            f" name ({written.kiosk.id}); set it before registering the kiosk at the centre",
            err=True,
        )
    if to is None:
        click.echo(text, nl=False)
        return
    try:
        write_config_file(to, text, force=force)
    except FileExistsError as exc:
        fail(write_error(exc, to), EXIT_USAGE)
    except PermissionError:
        fail(f"cannot write {to}: permission denied (run as root, e.g. with sudo)", EXIT_PROBLEM)
    except OSError as exc:
        fail(write_error(exc, to), EXIT_PROBLEM)
    click.echo(f"config written: {to}")
    click.echo(f"check it after every change: ektp-agent --config {to} config check")


@config_group.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the effective config as one JSON document.")
@pass_ctx
def config_check(ctx: Context, as_json: bool) -> None:
    """Validate the config file; exit 2 naming the key and the reason on error.

    Beyond each value: the MQTT files it names exist, reconnect_min_s is at most
    reconnect_max_s, an explicit store.max_bytes fits the disk that holds the store, and
    the key files, when there, are ones `run` can use. A key file not there yet is listed
    as the next step (exit 0): `ektp-agent keys init` makes the kiosk's, the centre's
    public key is copied from the centre. `run` makes the same checks.

    JSON: {"ok": true, "path", "ready" (false while a key file is missing), "missing":
    [{"key", "file", "reason"}], "config": the effective config}.

    \b
    Example:
      ektp-agent --config ./agent.toml config check
    """
    config = ctx.config
    try:
        check_environment(config)
        missing = check_key_files(config)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    if as_json:
        emit_json(
            {
                "ok": True,
                "path": str(ctx.path),
                "ready": not missing,
                "missing": [m.to_json() for m in missing],
                "config": as_dict(config),
            }
        )
        return
    click.echo(
        f"config OK: {config.source} (kiosk {config.kiosk.id}, broker {config.mqtt.host}:{config.mqtt.port})"
    )
    if missing:
        click.echo("before `ektp-agent run`:")
        for m in missing:
            click.echo(f"  {m.key}: {m.advice}")


# ----------------------------------------------------------------------------- keys


@main.group("keys")
def keys_group() -> None:
    """Create, rotate or show the kiosk's signing key pair."""


@keys_group.command("init")
@click.option(
    "--force",
    is_flag=True,
    help="Replace an existing key pair; the old one is moved aside, never destroyed.",
)
@pass_ctx
def keys_init(ctx: Context, force: bool) -> None:
    """Create the kiosk's Ed25519 signing key pair (both files mode 0600).

    Prints the public key file's path as the last line: register it at the centre with
    `ektp-central kiosk add KIOSK_ID --public-key FILE`. With --force an existing pair is
    first moved aside as with `keys rotate`.

    \b
    Example:
      ektp-agent keys init
    """
    new = _write_key(ctx, force=force)
    click.echo(f"kiosk {ctx.config.kiosk.id}: key {key_fingerprint(raw_public(new.key.public_key()))}")
    if new.retired_private_file is not None:
        click.echo(f"old key moved aside: {new.retired_private_file}")
    click.echo(f"private key: {new.private_file}")
    click.echo(str(new.public_file))


@keys_group.command("rotate")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def keys_rotate(ctx: Context, as_json: bool) -> None:
    """Make a new signing key; keep the old one moved aside (0600, named with the time).

    Prints the new public key and the centre command that registers it beside the old
    one (`ektp-central kiosk key add ID --public-key FILE --from TIME`), so that packets
    signed with either still verify there; the public key file's path is the last line.
    The running service signs with the old key until it restarts.

    \b
    Example:
      ektp-agent keys rotate
      systemctl restart ektp-agent
    """
    new = _write_key(ctx, rotate=True)
    kiosk_id = ctx.config.kiosk.id
    fingerprint = key_fingerprint(raw_public(new.key.public_key()))
    pem = new.public_file.read_text()
    command = f"ektp-central kiosk key add {kiosk_id} --public-key {kiosk_id}.key.pub --from {new.made_at}"
    if as_json:
        emit_json(
            {
                "kiosk_id": kiosk_id,
                "fingerprint": fingerprint,
                "private_key_file": str(new.private_file),
                "public_key_file": str(new.public_file),
                "public_key_pem": pem,
                "valid_from": new.made_at,
                "retired_private_key_file": str(new.retired_private_file),
                "retired_public_key_file": str(new.retired_public_file) if new.retired_public_file else None,
                "centre_command": command,
            }
        )
        return
    click.echo(f"kiosk {kiosk_id}: new key {fingerprint}")
    click.echo(f"old key moved aside: {new.retired_private_file} (keep it)")
    click.echo(pem.rstrip())
    click.echo(f"register it at the centre (copy {new.public_file} there as {kiosk_id}.key.pub):")
    click.echo(f"  {command}")
    click.echo("then restart the service so that it signs with the new key: systemctl restart ektp-agent")
    click.echo(str(new.public_file))


def _write_key(ctx: Context, *, force: bool = False, rotate: bool = False) -> kiosk_keys.KioskKey:
    """keys init / rotate, their failures as one line each."""
    path = ctx.config.kiosk_private_key
    try:
        return kiosk_keys.rotate(path) if rotate else kiosk_keys.create(path, force=force)
    except KeyFileError as exc:
        fail(str(exc), EXIT_USAGE if isinstance(exc, FileExistsError) else EXIT_PROBLEM)
    except PermissionError:
        raise  # the group's one line
    except OSError as exc:
        fail(f"cannot write the key pair at {path}: {exc.strerror}", EXIT_PROBLEM)


@keys_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def keys_show(ctx: Context, as_json: bool) -> None:
    """Show the kiosk's public key (PEM) and its fingerprint, for registration at the centre.

    \b
    Example:
      ektp-agent keys show
    """
    path = ctx.config.kiosk_private_key
    try:
        key = load_kiosk_private(path)
    except KeyFileError as exc:
        fail(str(exc), EXIT_PROBLEM)
    pub_file = public_path(path)
    pem = pub_file.read_text() if pub_file.exists() else ""
    fingerprint = key_fingerprint(raw_public(key.public_key()))
    if as_json:
        emit_json(
            {
                "kiosk_id": ctx.config.kiosk.id,
                "private_key_file": str(path),
                "public_key_file": str(pub_file),
                "fingerprint": fingerprint,
                "public_key_pem": pem,
            }
        )
        return
    click.echo(f"kiosk {ctx.config.kiosk.id}: key {fingerprint}")
    click.echo(pem.rstrip())
    click.echo(str(pub_file))


__all__ = ["EXIT_NOT_RUNNING", "EXIT_OK", "EXIT_PROBLEM", "EXIT_USAGE", "Context", "main"]


# The kiosk commands register themselves on ``main``; imported last, once ``main`` exists.
from agent import cli_kiosk as _kiosk_commands  # noqa: E402, F401
from agent import cli_outbox as _outbox_commands  # noqa: E402, F401
from agent import cli_remote as _remote_commands  # noqa: E402, F401
