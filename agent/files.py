"""Writing the kiosk's own files safely: created exclusively, never through a symlink, synced.

Every file the kiosk makes is private (0600): its data dir holds biometric ciphertext,
keys and state, and an export on a USB stick carries the same packets.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def write_new_file(
    path: Path | str, data: bytes, *, mode: int = PRIVATE_FILE, dir_fd: int | None = None
) -> None:
    """Create path (relative to dir_fd when given) with data and mode, and fsync it.

    O_EXCL | O_NOFOLLOW: an existing file, symlink or FIFO at path is an error
    (FileExistsError), never written through.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, mode, dir_fd=dir_fd)
    with os.fdopen(fd, "wb") as f:
        with contextlib.suppress(PermissionError):  # a FAT stick keeps its mount's modes
            os.fchmod(fd, mode)  # the umask must not loosen or tighten what was asked for
        f.write(data)
        f.flush()
        os.fsync(fd)


def fsync_dir(directory: Path | int) -> None:
    """Make the creations and renames in directory (a path or an open fd) durable."""
    if isinstance(directory, int):
        os.fsync(directory)
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
