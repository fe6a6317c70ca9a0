"""The kiosk's signing key over its life: create, rotate, and keep every key it signed with.

A key is never destroyed in place: `keys rotate` and `keys init --force` first copy the
current pair aside to ``{key}.retired-YYYYMMDDTHHMMSSZ`` (and ``.pub``), mode 0600,
created exclusively so that nothing is ever overwritten, and only then write the new
pair. The retired keys still verify the packets they signed, which the outbox checks
when it salvages a damaged store (:func:`retired_public_keys`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.files import fsync_dir, write_new_file
from wire.keys import KeyFileError, KeyFileMissing, create_kiosk_key, load_kiosk_private, public_path

log = logging.getLogger("ektp.keys")

RETIRED_MARK = ".retired-"
FILE_MODE = 0o600  # the kiosk's files are private, the public key included (it is in data_dir)


@dataclass(frozen=True, slots=True)
class KioskKey:
    """A key pair just written, and where the one it replaced went (None: there was none)."""

    key: Ed25519PrivateKey
    private_file: Path
    public_file: Path
    made_at: str  # RFC 3339 UTC: from when the kiosk signs with it (the centre's `--from`)
    retired_private_file: Path | None = None
    retired_public_file: Path | None = None


def create(path: Path, *, force: bool = False) -> KioskKey:
    """`keys init`: a new pair at path; with force an existing pair is retired first, never lost.

    :raises KeyFileExists: a key exists and not force
    :raises OSError: the files cannot be written
    """
    now = time.gmtime()
    retired_private: Path | None = None
    retired_public: Path | None = None
    if force and path.exists():
        retired_private, retired_public = retire(path, now)
    key = create_kiosk_key(path, force=force)
    os.chmod(public_path(path), FILE_MODE)
    made_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", now)
    return KioskKey(key, path, public_path(path), made_at, retired_private, retired_public)


def rotate(path: Path) -> KioskKey:
    """`keys rotate`: retire the current pair, then write a new one.

    :raises KeyFileMissing: there is no key to rotate
    :raises OSError: the files cannot be written
    """
    if not path.exists():
        raise KeyFileMissing(f"no kiosk key at {path} to rotate; create one with `keys init`", path=path)
    return create(path, force=True)


def retire(path: Path, when: time.struct_time | None = None) -> tuple[Path, Path | None]:
    """Copy the pair at path to a name dated ``when`` (UTC; default now) beside it, mode 0600,
    never over an existing file.

    Returns the retired private and public files (None when there was no public file).
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", when or time.gmtime())
    for n in range(1000):
        target = path.with_name(f"{path.name}{RETIRED_MARK}{stamp}{f'-{n}' if n else ''}")
        if not target.exists() and not public_path(target).exists():
            break
    else:  # pragma: no cover - a thousand rotations in one second
        raise FileExistsError(f"cannot find a free name to retire {path}")
    write_new_file(target, path.read_bytes(), mode=FILE_MODE)
    pub = public_path(path)
    retired_pub = None
    if pub.exists():
        retired_pub = public_path(target)
        write_new_file(retired_pub, pub.read_bytes(), mode=FILE_MODE)
    fsync_dir(path.parent)
    log.info("kiosk key %s retired to %s", path, target)
    return target, retired_pub


def retired_public_keys(path: Path) -> list[Ed25519PublicKey]:
    """The public keys of every key retired beside the key at path, newest first.

    A retired file that cannot be read is logged and left out.
    """
    keys = []
    for retired in sorted(path.parent.glob(f"{path.name}{RETIRED_MARK}*"), reverse=True):
        if retired.name.endswith(".pub"):
            continue
        try:
            keys.append(load_kiosk_private(retired).public_key())
        except KeyFileError as exc:
            log.warning("retired kiosk key %s left out: %s", retired, exc)
    return keys
