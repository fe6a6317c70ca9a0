"""`ektp-central`: the reference central consumer and its administration commands.

Exit codes as the agent's: 0 well, 1 a problem found, 2 usage or config error.
"""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import click

from agent import __version__
from agent.config import ConfigError
from agent.keys import KeyFileError, create_central_keys, key_fingerprint, public_path, raw_public
from central.config import DEFAULT_CENTRAL_CONFIG, CentralConfig, load_central_config

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"ektp-central: {message}", err=True)
    sys.exit(code)


def emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc))


class Context:
    def __init__(self, config_arg: str | None) -> None:
        from pathlib import Path

        self.path = Path(config_arg) if config_arg else DEFAULT_CENTRAL_CONFIG
        self.explicit = config_arg is not None
        self._config: CentralConfig | None = None

    @property
    def config(self) -> CentralConfig:
        if self._config is None:
            try:
                self._config = load_central_config(self.path, required=self.explicit)
            except ConfigError as exc:
                fail(str(exc), EXIT_USAGE)
        return self._config


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
      ektp-central --config central.toml keys init
      ektp-central --config central.toml kiosk add 320715-01 --public-key kiosk.key.pub
      ektp-central --config central.toml run
    """
    ctx.obj = Context(config_arg)


@main.group("keys")
def keys_group() -> None:
    """Create the centre's key pairs."""


@keys_group.command("init")
@click.option(
    "--force", is_flag=True, help="Replace existing keys (every kiosk must then get the new .pub file)."
)
@pass_ctx
def keys_init(ctx: Context, force: bool) -> None:
    """Create the centre's X25519 (packet encryption) and Ed25519 (ack signing) key pairs.

    The private file (mode 0600) holds both keys; the public file, the private path with
    `.pub` appended, goes to every kiosk as its `keys.central_public_key`. Its path is
    printed as the last line.

    \b
    Example:
      ektp-central --config central.toml keys init
    """
    path = ctx.config.central_private_key
    try:
        keys = create_central_keys(path, force=force)
    except KeyFileError as exc:
        fail(str(exc), EXIT_USAGE if isinstance(exc, FileExistsError) else EXIT_PROBLEM)
    except OSError as exc:
        fail(f"cannot write the key pair at {path}: {exc.strerror}", EXIT_PROBLEM)
    pub = keys.public()
    click.echo(f"encryption key {key_fingerprint(raw_public(pub.encryption))}")
    click.echo(f"signing key    {key_fingerprint(raw_public(pub.signing))}")
    click.echo(f"private keys: {path}")
    click.echo(str(public_path(path)))
