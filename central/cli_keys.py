"""`ektp-central` key commands: the centre's own key pairs, and the kiosks' signing keys."""

from __future__ import annotations

from pathlib import Path

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
    main,
    pass_ctx,
    print_table,
)
from wire.keys import (
    CentralPrivateKeys,
    KeyFileError,
    create_central_keys,
    key_fingerprint,
    public_path,
    raw_public,
)


@main.group("keys")
def keys_group() -> None:
    """Create the centre's key pairs."""


@keys_group.command("init")
@click.option(
    "--force",
    is_flag=True,
    help="Keys exist already: rotate them (as `keys rotate`: the old pair is kept, never overwritten).",
)
@pass_ctx
def keys_init(ctx: Context, force: bool) -> None:
    """Create the centre's X25519 (packet encryption) and Ed25519 (ack signing) key pairs.

    The private file (mode 0600) holds both keys; the public file, the private path with
    `.pub` appended, goes to every kiosk as its `keys.central_public_key`. Its path is
    printed as the last line. Existing keys are never overwritten: exit 2 without --force,
    a rotation with it.

    \b
    Example:
      ektp-central --config central.toml keys init
    """
    path = ctx.config.central_private_key
    if force and path.exists():
        _rotate(path)
        return
    try:
        keys = create_central_keys(path)
    except KeyFileError as exc:
        fail(
            f"{exc}" if not isinstance(exc, FileExistsError) else f"{exc} (or `ektp-central keys rotate`)",
            EXIT_USAGE if isinstance(exc, FileExistsError) else EXIT_PROBLEM,
        )
    except OSError as exc:
        fail(f"cannot write the key pair at {path}: {exc.strerror}", EXIT_PROBLEM)
    _print_pair(keys, path)


@keys_group.command("rotate")
@pass_ctx
def keys_rotate(ctx: Context) -> None:
    """Make a new key pair; the old one is kept beside it and still opens older packets.

    The current private file moves aside as `<file>.retired-<UTC time>` (with its .pub) and
    a new pair takes its place. Restart `ektp-central run`, then give every kiosk the new
    .pub (printed last) as its `keys.central_public_key` and restart its service. Until a
    kiosk has it, packets it sealed to the old key still open, and its acks are signed with
    each key pair so it can verify one (docs/central.md, "Rotating the centre's keys").

    \b
    Example:
      ektp-central --config central.toml keys rotate
    """
    _rotate(ctx.config.central_private_key)


def _rotate(path: Path) -> None:
    from central.keyring import retired_files, rotate

    try:
        keys, retired = rotate(path)
    except KeyFileError as exc:
        fail(f"cannot rotate the centre's keys: {exc}", EXIT_PROBLEM)
    except OSError as exc:
        fail(f"cannot rotate the centre's keys at {path}: {exc}", EXIT_PROBLEM)
    click.echo(f"retired key pair: {retired} ({len(retired_files(path))} retired in all; keep them)")
    _print_pair(keys, path)


def _print_pair(keys: CentralPrivateKeys, path: Path) -> None:
    pub = keys.public()
    click.echo(f"encryption key {key_fingerprint(raw_public(pub.encryption))}")
    click.echo(f"signing key    {key_fingerprint(raw_public(pub.signing))}")
    click.echo(f"private keys: {path}")
    click.echo(str(public_path(path)))


def _public_pem(public_key: str) -> tuple[bytes, str]:
    """(the PEM of a kiosk's public key file, its fingerprint); exit 2 on a bad file."""
    from pathlib import Path

    from cryptography.hazmat.primitives import serialization

    from wire.keys import load_kiosk_public

    try:
        key = load_kiosk_public(Path(public_key))
    except KeyFileError as exc:
        fail(str(exc), EXIT_USAGE)
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, key_fingerprint(raw_public(key))


@kiosk_group.command("add")
@click.argument("kiosk_id", metavar="ID")
@click.option(
    "--public-key",
    "public_key",
    required=True,
    metavar="FILE",
    help="The kiosk's public key file (the `.pub` that `ektp-agent keys init` printed).",
)
@click.option(
    "--replace", is_flag=True, help="Give ID this key from now on (as `kiosk key add`; old keys are kept)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_ctx
def kiosk_add(ctx: Context, kiosk_id: str, public_key: str, replace: bool, as_json: bool) -> None:
    """Register kiosk ID with its Ed25519 public key, so its packets are verified and stored.

    Packets from a kiosk that is not registered are kept in quarantine and acknowledged as
    rejected; `quarantine retry --all` stores them once it is registered. Registering the
    same key again is a no-op; another key for a registered ID needs --replace (exit 2
    without it), which adds it as `kiosk key add` does: the old key is kept for the
    packets it signed.

    \b
    Example:
      ektp-central --config central.toml kiosk add 320715-01 --public-key 320715-01.key.pub
      ektp-central --config central.toml quarantine retry --all
    """
    from central.store import KioskAlreadyRegistered

    _kiosk_id(kiosk_id)
    pem, fingerprint = _public_pem(public_key)
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


@kiosk_group.group("key")
def kiosk_key_group() -> None:
    """A kiosk's signing keys over time: add a rotated key, revoke a compromised one, list them."""


@kiosk_key_group.command("add")
@click.argument("kiosk_id", metavar="ID")
@click.option(
    "--public-key",
    "public_key",
    required=True,
    metavar="FILE",
    help="The kiosk's new public key file (.pub).",
)
@click.option(
    "--from",
    "valid_from",
    metavar="TIME",
    help="When the kiosk started signing with it (RFC 3339, e.g. 2026-12-01T17:00:00Z); default now."
    " `ektp-agent keys rotate` prints it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_ctx
def kiosk_key_add(
    ctx: Context, kiosk_id: str, public_key: str, valid_from: str | None, as_json: bool
) -> None:
    """Register a registered kiosk's new signing key (after `ektp-agent keys rotate`).

    The key is valid from --from on; the kiosk's earlier keys stay, valid until then, so
    the packets it signed before the rotation (still in its outbox, or in an export) verify
    and store as before. Adding a key that is already registered is a no-op.

    \b
    Example:
      ektp-central --config central.toml kiosk key add 320715-01 --public-key new.key.pub \\
          --from 2026-12-01T17:00:00Z
    """
    from central.store import StoreInputError

    _kiosk_id(kiosk_id)
    pem, fingerprint = _public_pem(public_key)
    with central_store(ctx) as store:
        try:
            changed = store.add_kiosk_key(kiosk_id, pem, valid_from=valid_from)
        except StoreInputError as exc:
            fail(str(exc), EXIT_USAGE)
        keys = [k.to_json() for k in store.kiosk_keys(kiosk_id)]
    if as_json:
        emit_json({"kiosk": kiosk_id, "fingerprint": fingerprint, "changed": changed, "keys": keys})
    elif changed:
        start = next(k["valid_from"] for k in keys if k["fingerprint"] == fingerprint)
        click.echo(f"kiosk {kiosk_id}: key {fingerprint} added, valid from {start} ({len(keys)} keys)")
    else:
        click.echo(f"kiosk {kiosk_id} already has key {fingerprint}")


@kiosk_key_group.command("revoke")
@click.argument("kiosk_id", metavar="ID")
@click.argument("fingerprint")
@click.option(
    "--since",
    metavar="TIME",
    help="The earliest time the key may have been compromised (RFC 3339); default now.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_ctx
def kiosk_key_revoke(ctx: Context, kiosk_id: str, fingerprint: str, since: str | None, as_json: bool) -> None:
    """Revoke a kiosk key: packets it signed that claim to be made at or after --since are refused.

    Refused packets are kept in quarantine with reason `revoked_key` and acknowledged to
    the kiosk as rejected. Packets stored before stay stored; earlier ones still verify.
    FINGERPRINT is as `kiosk key list ID` shows it.

    \b
    Example:
      ektp-central --config central.toml kiosk key revoke 320715-01 1a2b:3c4d:... --since 2026-11-30T00:00:00Z
    """
    from central.store import StoreInputError

    _kiosk_id(kiosk_id)
    with central_store(ctx) as store:
        try:
            key = store.revoke_kiosk_key(kiosk_id, fingerprint, since=since)
        except StoreInputError as exc:
            fail(str(exc), EXIT_USAGE)
    if as_json:
        emit_json(key.to_json())
    else:
        click.echo(f"kiosk {kiosk_id}: key {fingerprint} revoked since {key.revoked_since}")


@kiosk_key_group.command("list")
@click.argument("kiosk_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list.")
@pass_ctx
def kiosk_key_list(ctx: Context, kiosk_id: str, as_json: bool) -> None:
    """List a kiosk's signing keys, oldest first: when each holds, and whether it is revoked.

    \b
    Example:
      ektp-central --config central.toml kiosk key list 320715-01 --json
    """
    _kiosk_id(kiosk_id)
    with central_store(ctx) as store:
        keys = [k.to_json() for k in store.kiosk_keys(kiosk_id)]
    if not keys:
        fail(f"kiosk {kiosk_id} is not registered (`ektp-central kiosks` lists those that are)", EXIT_PROBLEM)
    if as_json:
        emit_json(keys)
        return
    print_table(
        ["fingerprint", "valid_from", "valid_until", "revoked_since", "current"],
        [
            [
                k["fingerprint"],
                k["valid_from"],
                k["valid_until"],
                k["revoked_since"],
                "yes" if k["current"] else "",
            ]
            for k in keys
        ],
    )


@main.command("kiosks")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list.")
@pass_ctx
def kiosks_cmd(ctx: Context, as_json: bool) -> None:
    """List the registered kiosks: id, current key fingerprint, when added, how many keys.

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
        ["kiosk", "fingerprint", "added_at", "keys"],
        [[r["kiosk"], r["fingerprint"], r["added_at"], r["keys"]] for r in rows],
    )
