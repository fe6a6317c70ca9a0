"""`ektp-central web`: serve the fleet web view; `web passwd`: manage its users file."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from types import FrameType

import click

from central.cli import EXIT_PROBLEM, EXIT_USAGE, Context, fail, main, pass_ctx
from central.config import parse_listen


@main.group("web", invoke_without_command=True)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Where to listen (default: [web] listen, else 127.0.0.1:8080). An address other than"
    " loopback needs [web] users_file.",
)
@click.pass_context
def web_group(click_ctx: click.Context, listen: str | None) -> None:
    """Serve the fleet web view until SIGTERM or Ctrl-C: / the fleet, /kiosk/ID one kiosk,
    /metrics for Prometheus, /healthz. Prints the URL first. Pages only read, but for the
    remote-command forms, which need a login (docs/web.md).

    On loopback no login is asked; any other address needs [web] users_file (HTTP basic;
    `web passwd NAME` writes it), and TLS comes from a reverse proxy in front (docs/web.md).
    `ektp-central run` serves the same view itself when [web] listen is set; this command is
    for a centre whose consumer runs elsewhere, or for a look on a workstation.

    \b
    Examples:
      ektp-central --config central.toml web
      ektp-central --config central.toml web --listen 127.0.0.1:8081
      ektp-central --config central.toml web passwd alice
    """
    if click_ctx.invoked_subcommand is not None:
        return
    ctx: Context = click_ctx.obj
    serve(ctx, listen)


def serve(ctx: Context, listen: str | None) -> None:
    from central.store import StoreError, open_store
    from central.web.app import create_app
    from central.web.auth import WebAuthError, check_exposure
    from central.web.server import WebListenError, WebServer, listen_socket

    config = ctx.config
    try:
        host, port = parse_listen(listen) if listen else config.web.address()
    except ValueError:
        fail(f"--listen {listen!r}: expected HOST:PORT or [IPv6]:PORT (e.g. 127.0.0.1:8080)", EXIT_USAGE)
    try:
        check_exposure(host, config.web.users_file)
    except WebAuthError as exc:
        fail(str(exc), EXIT_USAGE)
    try:
        open_store(
            config.store_url
        ).close()  # a store that cannot be read is named now, not at the first page
    except StoreError as exc:
        fail(str(exc), EXIT_PROBLEM)
    try:
        app = create_app(config, lambda: open_store(config.store_url))
    except WebAuthError as exc:
        fail(f"{exc} ([web] users_file in {ctx.path})", EXIT_USAGE)
    try:
        sock = listen_socket(host, port)
    except WebListenError as exc:
        fail(str(exc), EXIT_USAGE)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    server = WebServer(app, sock)
    login = f"HTTP basic login (users in {config.web.users_file})" if config.web.users_file else "no login"
    click.echo(f"serving the fleet view on {server.url} ({login}); Ctrl-C or SIGTERM stops it")
    sys.stdout.flush()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # a second Ctrl-C does not wait for open connections
        server.stop(force=server.server.should_exit and signum == signal.SIGINT)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.serve()


@web_group.command("passwd")
@click.argument("name")
@click.option(
    "--users-file",
    "users_file",
    metavar="PATH",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The users file to write (default: [web] users_file of the config).",
)
@pass_ctx
def passwd_cmd(ctx: Context, name: str, users_file: Path | None) -> None:
    """Set NAME's password in the web view's users file (added, or replaced if NAME is there).

    The password is read twice from the terminal, or once (its first line) from stdin when
    that is not a terminal; at least 8 characters. The file keeps a scrypt hash with a
    random salt per user (never the password), mode 0640, replaced atomically. A running
    web view reads the file again by itself at the next request.

    \b
    Examples:
      ektp-central --config /etc/ektp-central/config.toml web passwd alice
      printf '%s\\n' "$PASSWORD" | ektp-central web passwd prometheus --users-file web-users
    """
    from central.web.auth import UsersFileError, check_password, set_password

    if users_file is None:
        users_file = ctx.config.web.users_file
        if users_file is None:
            fail(f"name the users file: --users-file PATH, or [web] users_file in {ctx.path}", EXIT_USAGE)
    password = _read_password(name)
    try:
        check_password(password)
    except ValueError as exc:
        fail(f"{exc}: nothing written", EXIT_USAGE)
    try:
        new = set_password(users_file, name, password)
    except UsersFileError as exc:
        fail(f"{exc}: nothing written", EXIT_USAGE)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        fail(f"cannot write the users file {users_file}: {exc.strerror or exc}", EXIT_USAGE)
    click.echo(f"{'added' if new else 'changed the password of'} {name} in {users_file}")


def _read_password(name: str) -> str:
    if sys.stdin.isatty():
        try:
            return str(click.prompt(f"password for {name}", hide_input=True, confirmation_prompt=True))
        except click.Abort:
            fail("no password given: nothing written", EXIT_USAGE)
    line = sys.stdin.readline()
    if not line.strip():
        fail("no password on stdin (one line expected): nothing written", EXIT_USAGE)
    return line.rstrip("\r\n")
