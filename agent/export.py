"""`ektp-agent export`: the undelivered packets as files on removable media, for a trip to the centre.

The target is often a USB stick that anyone may have prepared, so nothing already in it
is trusted. DIR must be a plain directory (a symlink, FIFO, device or file is refused);
a missing DIR is created. Every write then goes through file descriptors, never through
a path looked up again::

    DIR (opened O_DIRECTORY | O_NOFOLLOW)
     +-- .ektp-export-XXXXXXXX/   a fresh folder the export creates (0700, never an existing one)
     |      each packet written here O_CREAT | O_EXCL | O_NOFOLLOW, mode 0600, fsynced
     +-- 0000000001-<packet id>.ektp   <- renamed in from the fresh folder

A rename replaces whatever stands at the final name (a planted symlink, a FIFO, a hard
link to someone's file) without following or opening it; an existing name is only ever
opened O_NOFOLLOW | O_NONBLOCK and read when it is a plain file, so a FIFO cannot hang
the export. A file already there with the same bytes is kept (idempotent). DIR is
fsynced after the renames, then the fresh folder is removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from agent.files import PRIVATE_DIR, fsync_dir, write_new_file

STAGING_PREFIX = ".ektp-export-"


class ExportError(Exception):
    """The export cannot go on; ``usage`` is true when the target itself is wrong (exit 2)."""

    def __init__(self, message: str, *, path: Path, usage: bool = False) -> None:
        super().__init__(message)
        self.path = path
        self.usage = usage


@dataclass(frozen=True, slots=True)
class ExportItem:
    """One packet to write: its final file name, its state and a way to read its bytes."""

    name: str
    state: str
    read: Callable[[], bytes | None]  # None: delivered meanwhile, nothing to write


@dataclass(slots=True)
class ExportReport:
    written: int = 0
    kept: int = 0
    by_state: dict[str, int] = field(default_factory=dict)


def file_name(seq: int, packet_id: str) -> str:
    return f"{seq:010d}-{packet_id}.ektp"


def export(
    target: Path, items: Iterable[ExportItem], *, progress: Callable[[], None] = lambda: None
) -> ExportReport:
    """Write items into target as described in the module docstring.

    :raises ExportError: target is not a plain directory (usage), or a write failed
    """
    dir_fd = open_target(target)
    report = ExportReport()
    try:
        staging = _make_staging(dir_fd, target)
        try:
            stage_fd = os.open(
                staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
            )
            try:
                for item in items:
                    progress()
                    data = item.read()
                    if data is None:
                        continue
                    report.by_state[item.state] = report.by_state.get(item.state, 0) + 1
                    if _same_file_there(dir_fd, item.name, data):
                        report.kept += 1
                        continue
                    _place(dir_fd, stage_fd, item.name, data, target)
                    report.written += 1
                fsync_dir(dir_fd)
            finally:
                os.close(stage_fd)
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(staging, dir_fd=dir_fd)
    except OSError as exc:
        where = f" ({target / exc.filename})" if isinstance(exc.filename, str) else ""
        raise ExportError(f"cannot write to {target}: {exc.strerror or exc}{where}", path=target) from exc
    finally:
        os.close(dir_fd)
    return report


def open_target(target: Path) -> int:
    """An fd of target, created if missing, which must be a plain directory.

    :raises ExportError: target is a symlink, FIFO, device, socket or file (usage), or cannot be made
    """
    try:
        target.mkdir(mode=PRIVATE_DIR, parents=True)
    except FileExistsError:
        pass  # looked at below, without following it
    except OSError as exc:
        raise ExportError(f"cannot create the export folder {target}: {exc.strerror}", path=target) from exc
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        return os.open(target, flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ExportError(
                f"refusing to export to {target}: it is {_what(target)}, not a plain directory. "
                "Give a directory, e.g. the USB stick's mount point or a new folder on it",
                path=target,
                usage=True,
            ) from exc
        raise ExportError(f"cannot open the export folder {target}: {exc.strerror}", path=target) from exc


def _what(path: Path) -> str:
    try:
        st = path.lstat()
    except OSError:
        return "not a directory"
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        with contextlib.suppress(OSError):
            return f"a symbolic link (to {os.readlink(path)})"
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a file"


def _make_staging(dir_fd: int, target: Path) -> str:
    for _ in range(100):
        name = f"{STAGING_PREFIX}{secrets.token_hex(4)}"
        try:
            os.mkdir(name, PRIVATE_DIR, dir_fd=dir_fd)
        except FileExistsError:
            continue
        return name
    raise ExportError(f"cannot create a fresh folder in {target}", path=target)  # pragma: no cover


def _same_file_there(dir_fd: int, name: str, data: bytes) -> bool:
    """Whether a plain, singly linked file with exactly data stands at name (never following it)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return False  # absent, a symlink (ELOOP), or unreadable: replaced by the rename
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size != len(data):
            return False
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(len(data) + 1) == data
    finally:
        os.close(fd)


def _place(dir_fd: int, stage_fd: int, name: str, data: bytes, target: Path) -> None:
    write_new_file(name, data, dir_fd=stage_fd)
    try:
        os.rename(name, name, src_dir_fd=stage_fd, dst_dir_fd=dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=stage_fd)
        if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
            raise ExportError(
                f"cannot write {target / name}: a directory stands at that name; move it away and export again",
                path=target / name,
            ) from exc
        raise
