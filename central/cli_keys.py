"""`ektp-central` key commands: the centre's own key pairs, and the kiosks' signing keys."""

from __future__ import annotations

import click

from central.cli import (
    EXIT_PROBLEM,
    EXIT_USAGE,
    Context,
    central_store,
    emit_json,
    fail,
    main,
    pass_ctx,
    print_table,
)
from wire.keys import KeyFileError, create_central_keys, key_fingerprint, public_path, raw_public


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


@main.group("kiosk")
def kiosk_group() -> None:
    """Register kiosks (their packet signing keys)."""


@kiosk_group.command("add")
@click.argument("kiosk_id", metavar="ID")
@click.option(
    "--public-key",
    "public_key",
    required=True,
    metavar="FILE",
    help="The kiosk's public key file (the `.pub` that `ektp-agent keys init` printed).",
)
@click.option("--replace", is_flag=True, help="Replace the key already registered for ID.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_ctx
def kiosk_add(ctx: Context, kiosk_id: str, public_key: str, replace: bool, as_json: bool) -> None:
    """Register kiosk ID with its Ed25519 public key, so its packets are verified and stored.

    Packets from a kiosk that is not registered are kept in quarantine and acknowledged as
    rejected; `quarantine retry --all` stores them once it is registered. Registering the
    same key again is a no-op; another key for a registered ID needs --replace (exit 2
    without it).

    \b
    Example:
      ektp-central --config central.toml kiosk add 320715-01 --public-key 320715-01.key.pub
      ektp-central --config central.toml quarantine retry --all
    """
    from pathlib import Path

    from cryptography.hazmat.primitives import serialization

    from central.store import KioskAlreadyRegistered
    from wire.keys import load_kiosk_public
    from wire.names import KIOSK_ID_RE

    if KIOSK_ID_RE.fullmatch(kiosk_id) is None:
        fail(
            f'kiosk id {kiosk_id!r} is invalid: expected 1-64 characters from A-Z a-z 0-9 _ - (e.g. "320715-01")',
            EXIT_USAGE,
        )
    try:
        key = load_kiosk_public(Path(public_key))
    except KeyFileError as exc:
        fail(str(exc), EXIT_USAGE)
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    fingerprint = key_fingerprint(raw_public(key))
    with central_store(ctx) as store:
        try:
            changed = store.add_kiosk(kiosk_id, pem, replace=replace)
        except KioskAlreadyRegistered as exc:
            fail(str(exc), EXIT_USAGE)
    if as_json:
        emit_json({"kiosk": kiosk_id, "fingerprint": fingerprint, "changed": changed})
    elif changed:
        click.echo(f"kiosk {kiosk_id} registered, key {fingerprint}")
    else:
        click.echo(f"kiosk {kiosk_id} was already registered with this key ({fingerprint})")


@main.command("kiosks")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list.")
@pass_ctx
def kiosks_cmd(ctx: Context, as_json: bool) -> None:
    """List the registered kiosks: id, key fingerprint, when added.

    \b
    Example:
      ektp-central --config central.toml kiosks --json
    """
    with central_store(ctx) as store:
        rows = store.kiosks()
    if as_json:
        emit_json(rows)
        return
    print_table(
        ["kiosk", "fingerprint", "added_at"], [[r["kiosk"], r["fingerprint"], r["added_at"]] for r in rows]
    )
