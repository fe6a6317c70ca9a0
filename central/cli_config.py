"""`ektp-central config`: write a commented config file, and check one before `run`."""

from __future__ import annotations

from pathlib import Path

import click

from central.cli import EXIT_PROBLEM, EXIT_USAGE, Context, emit_json, fail, main, pass_ctx
from central.config import (
    ConfigError,
    as_dict,
    check_environment,
    check_key_files,
    config_template,
    parse_central_config,
)
from wire.config_file import split_broker, write_config_file, write_error


@main.group("config")
def config_group() -> None:
    """Write a commented config file, or check one."""


@config_group.command("init")
@click.option(
    "--to",
    "to",
    metavar="PATH",
    type=click.Path(path_type=Path),
    help="Write the file here (mode 0640, the group of its directory). Default: print it on stdout.",
)
@click.option("--broker", metavar="HOST:PORT", help="Set [mqtt] host and port (e.g. mqtt.example:8883).")
@click.option(
    "--force", is_flag=True, help="Replace what is at --to (atomically; a symlink itself, never its target)."
)
def config_init(to: Path | None, broker: str | None, force: bool) -> None:
    """Write a config with every key the centre reads: its meaning, what it accepts, its default.

    Every key is commented out (so the file loads as the built-in defaults) except those
    the options set. An existing file is never overwritten without --force. The same
    file ships as examples/central.toml.

    \b
    Example:
      ektp-central config init --broker mqtt.example:8883 --to /etc/ektp-central/config.toml
      ektp-central --config /etc/ektp-central/config.toml config check
    """
    address = None
    if broker is not None:
        try:
            address = split_broker(broker)
        except ValueError as exc:
            fail(f"--broker {broker!r}: {exc}", EXIT_USAGE)
    text = config_template(broker=address)
    try:  # what is written must load: a value the loader refuses is named as the option
        parse_central_config(text, to or Path("config.toml"))
    except ConfigError as exc:
        fail(f"--broker {broker!r}: expected {exc.expected}", EXIT_USAGE)
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
    click.echo(f"check it after every change: ektp-central --config {to} config check")


@config_group.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the effective config as one JSON document.")
@pass_ctx
def config_check(ctx: Context, as_json: bool) -> None:
    """Validate the config file; exit 2 naming the key and the reason on error.

    Beyond each value: the TLS and password files it names exist, and the centre's key
    file, when there, is one `run` can use. A key file not made yet is listed as the next
    step (exit 0): `ektp-central keys init` makes it. `run` makes the same checks.

    JSON: {"ok": true, "path", "ready" (false while a key file is missing), "missing":
    [{"key", "file", "reason"}], "config": {section: {key: value}}}; a store URL's
    password is never shown.

    \b
    Example:
      ektp-central --config /etc/ektp-central/config.toml config check
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
    mqtt = config.mqtt
    click.echo(f"config OK: {ctx.path} (broker {mqtt.host}:{mqtt.port}, instance {mqtt.instance})")
    if missing:
        click.echo("before `ektp-central run`:")
        for m in missing:
            click.echo(f"  {m.key}: {m.advice}")
