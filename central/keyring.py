"""The centre's key pairs over time: the current pair and the retired ones it still opens packets with.

`ektp-central keys rotate` moves the current private file aside as
``<file>.retired-<UTC time>`` (its ``.pub`` beside it) and writes a new pair in its place;
nothing is overwritten. Packets a kiosk sealed to a retired key (in its outbox when the
centre rotated, or made before the kiosk got the new ``.pub``) still open with it.

Acks: a kiosk verifies them with the centre ``.pub`` it has. Until a kiosk has sent a packet
sealed to the current key, the centre cannot know which ``.pub`` it holds, so its acks go
out signed once with each key pair's signing key (newest first); the kiosk acts on the one
it can verify and ignores the others. Once a kiosk's packet opens with the current key,
its acks are signed with the current key only.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from wire.keys import CentralPrivateKeys, KeyFileError, create_central_keys, load_central_private, public_path
from wire.packet import PacketError, PacketHeader, open_body

RETIRED_MARK = ".retired-"


@dataclass(frozen=True, slots=True)
class CentralKeyring:
    """The current key pair first, then the retired ones, newest first."""

    generations: tuple[CentralPrivateKeys, ...]

    @property
    def current(self) -> CentralPrivateKeys:
        return self.generations[0]

    @property
    def encryption(self) -> X25519PrivateKey:
        return self.current.encryption

    @property
    def signing(self) -> Ed25519PrivateKey:
        return self.current.signing

    def open_body(self, data: bytes, header: PacketHeader) -> tuple[bytes, int]:
        """The body, and the generation (0 = current) whose key opened it.

        :raises PacketError: no key of the ring opens it (the error of the current key's try)
        """
        first: PacketError | None = None
        for generation, keys in enumerate(self.generations):
            try:
                return open_body(data, header, keys.encryption), generation
            except PacketError as exc:
                first = first or exc
        assert first is not None
        raise first


def as_keyring(keys: CentralPrivateKeys | CentralKeyring) -> CentralKeyring:
    return keys if isinstance(keys, CentralKeyring) else CentralKeyring((keys,))


def retired_files(private_path: Path) -> list[Path]:
    """The retired private files of ``private_path``, newest first (their names sort by time)."""
    prefix = private_path.name + RETIRED_MARK
    found = [
        p
        for p in private_path.parent.glob(prefix + "*")
        if not p.name.endswith(".pub") and not p.name.startswith(".")
    ]
    return sorted(found, key=lambda p: p.name, reverse=True)


def load_keyring(private_path: Path) -> CentralKeyring:
    """The current pair at ``private_path`` and every retired one beside it.

    :raises KeyFileError: any of them missing, too open or invalid (named in the message)
    """
    current = load_central_private(private_path)
    return CentralKeyring((current, *(load_central_private(p) for p in retired_files(private_path))))


def rotate(private_path: Path, *, now: dt.datetime | None = None) -> tuple[CentralPrivateKeys, Path]:
    """Move the current pair aside (never overwritten) and create a new one: (new keys, retired file).

    :raises KeyFileError: no current pair to rotate, or it is invalid
    :raises OSError: the files cannot be moved or written
    """
    load_central_private(private_path)  # refuse to rotate what is not a valid pair
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%S.%fZ")
    retired = private_path.with_name(private_path.name + RETIRED_MARK + stamp)
    if retired.exists():
        raise KeyFileError(f"{retired} already exists; try again", path=retired)
    pub = public_path(private_path)
    os.link(private_path, retired)  # the old pair exists under both names until the new one is in place
    if pub.exists():
        os.link(pub, public_path(retired))
    _fsync_dir(private_path.parent)
    keys = create_central_keys(private_path, force=True)  # atomic replace of both files
    return keys, retired


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
