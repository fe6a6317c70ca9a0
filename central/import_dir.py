"""`ektp-central import DIR`: the packet files of an export directory, read without trusting it.

An export directory comes from the field on a stick and may be hostile: a "packet" that is
a symlink to /etc/shadow or to the centre's own private key, a FIFO that hangs a reader, a
device node, a file of many gigabytes, or DIR itself a symlink into the centre's files. So:

- DIR is reached component by component with O_NOFOLLOW (a symlink anywhere in it is refused);
- entries are listed from DIR's descriptor, and only those that are regular files by their
  directory entry are opened, relative to that descriptor, with O_NOFOLLOW | O_NONBLOCK
  (a symlink swapped in fails, a FIFO cannot block the open); the opened descriptor's fstat
  decides (S_ISREG, one link, at most the largest packet, not a file of the centre's own);
- everything else is skipped, named with the reason, and makes the import exit 1; the good
  files are imported all the same.

Dotfiles are ignored (an export's temporary files), as before.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from central.config import CentralConfig
from central.ingest import MAX_PACKET_BYTES, STATUSES, Ingestor, IngestResult

IMPORT_BATCH_FILES = 64  # files ingested per store transaction
IMPORT_BATCH_BYTES = 64 * 1024 * 1024
MAX_FILE_BYTES = MAX_PACKET_BYTES  # the largest packet the ingest takes: nothing larger is read
_O_PATH = getattr(os, "O_PATH", os.O_RDONLY)  # Linux: a handle to walk through, no read permission needed
DIR_STEP_FLAGS = _O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class ImportDirError(Exception):
    """DIR itself cannot be read safely (missing, not a directory, reached through a symlink)."""

    def __init__(self, directory: str, problem: str) -> None:
        super().__init__(f"cannot import {printable(directory)}: {problem}")
        self.directory = directory


@dataclass(frozen=True, slots=True)
class Skipped:
    """An entry of DIR that was not read as a packet, and why."""

    file: str
    kind: (
        str  # symlink, directory, fifo, socket, device, other, hard_link, too_large, centre_file, unreadable
    )
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"file": self.file, "kind": self.kind, "reason": self.reason}


@dataclass(slots=True)
class ImportReport:
    """Each file's ingest result and each skipped entry, in name order."""

    directory: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    files: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def problem(self) -> bool:
        """Something needs a person: a file not stored (kept in quarantine) or an entry skipped."""
        not_stored = any(n for status, n in self.counts.items() if status not in ("stored", "duplicate"))
        return not_stored or bool(self.skipped)

    def note(self, name: str, result: IngestResult) -> None:
        self.counts[result.status] += 1
        self.files.append(
            {
                "file": name,
                "status": result.status,
                "packet_id": result.packet_id,
                "kiosk": result.kiosk,
                "seq": result.seq,
                "reason": result.reason,
            }
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            **self.counts,
            "files": self.files,
            "skipped": [s.to_json() for s in self.skipped],
        }

    def lines(self) -> list[str]:
        """The text report: each file not stored, each entry skipped, then the counts."""
        out = [
            f"{f['status']} {f['file']}: {f['reason'].removeprefix(f['status'] + ': ')}"
            for f in self.files
            if f["status"] not in ("stored", "duplicate")
        ]
        out += [f"skipped {s.file}: {s.reason}" for s in self.skipped]
        summary = ", ".join(f"{status} {n}" for status, n in self.counts.items())
        return [*out, summary + (f", skipped {len(self.skipped)}" if self.skipped else "")]


def printable(name: str) -> str:
    """A file name as text that is safe to print and to put in JSON: bytes that are not UTF-8
    and control characters (a terminal's escape sequences, newlines) shown as escapes."""
    text = os.fsencode(name).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def centre_files(config: CentralConfig) -> list[Path]:
    """The centre's own files, never to be read as packets (an import of the centre's own directory)."""
    files = [config.central_private_key]
    if config.source is not None:
        files.append(config.source)
    if not config.store_url.startswith(("postgresql://", "postgres://")):
        db = config.store_url
        files += [Path(db + suffix) for suffix in ("", "-wal", "-shm", "-journal")]
    return files


class ExportDir:
    """An export directory opened for reading: its entry names, and each entry read safely."""

    def __init__(self, directory: str, protected: Iterable[Path] = ()) -> None:
        self.directory = directory
        self._fd = open_directory(directory)
        try:
            with os.scandir(self._fd) as listing:
                self.names = sorted(e.name for e in listing if not e.name.startswith("."))
        except OSError as exc:
            os.close(self._fd)
            raise ImportDirError(directory, f"cannot list it: {exc.strerror}") from exc
        self._protected: dict[tuple[int, int], Path] = {}
        for path in protected:
            try:
                st = os.stat(path)
            except (OSError, ValueError):
                continue
            self._protected[(st.st_dev, st.st_ino)] = path

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ExportDir:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def read(self, name: str) -> bytes | Skipped:
        """The bytes of entry ``name`` if it is a plain packet-sized file of DIR, else why not."""
        shown = printable(name)
        try:
            entry_mode = os.stat(name, dir_fd=self._fd, follow_symlinks=False).st_mode
        except OSError as exc:
            return Skipped(shown, "unreadable", f"cannot read it: {exc.strerror}")
        if not stat.S_ISREG(entry_mode):  # never opened: a device may act on open, a FIFO may block
            return self._not_regular(name, entry_mode)
        return self.read_file(name)

    def read_file(self, name: str) -> bytes | Skipped:
        """Open ``name`` in DIR without following a symlink or blocking on a FIFO, and let the
        opened descriptor's fstat decide: the entry may have been replaced since it was listed."""
        shown = printable(name)
        try:
            fd = os.open(name, FILE_FLAGS, dir_fd=self._fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # replaced by a symlink since it was listed
                return Skipped(shown, "symlink", "a symlink: never followed (copy the file itself)")
            return Skipped(shown, "unreadable", f"cannot read it: {exc.strerror}")
        with open(fd, "rb", closefd=True) as f:
            st = os.fstat(fd)  # what was opened decides, not what the listing said
            if not stat.S_ISREG(st.st_mode):
                return self._not_regular(name, st.st_mode)
            own = self._protected.get((st.st_dev, st.st_ino))
            if own is not None:
                return Skipped(shown, "centre_file", f"the centre's own file {own}: never imported")
            if st.st_nlink > 1:
                return Skipped(
                    shown,
                    "hard_link",
                    f"a hard link ({st.st_nlink} names for one file): only plain files are imported; copy it",
                )
            if st.st_size > MAX_FILE_BYTES:
                return _too_large(shown, st.st_size)
            try:
                data = f.read(MAX_FILE_BYTES + 1)
            except OSError as exc:
                return Skipped(shown, "unreadable", f"cannot read it: {exc.strerror}")
        if len(data) > MAX_FILE_BYTES:  # grew after the fstat
            return _too_large(shown, len(data))
        return data

    def _not_regular(self, name: str, mode: int) -> Skipped:
        shown = printable(name)
        if stat.S_ISLNK(mode):
            try:
                target = f" to {printable(os.readlink(name, dir_fd=self._fd))}"
            except OSError:
                target = ""
            return Skipped(shown, "symlink", f"a symlink{target}: never followed (copy the file itself)")
        if stat.S_ISDIR(mode):
            return Skipped(
                shown,
                "directory",
                f"a directory: not entered (import it on its own: ektp-central import "
                f"{printable(os.path.join(self.directory, name))})",
            )
        kinds = {
            stat.S_ISFIFO: ("fifo", "a FIFO (named pipe)"),
            stat.S_ISSOCK: ("socket", "a socket"),
            stat.S_ISCHR: ("device", "a character device"),
            stat.S_ISBLK: ("device", "a block device"),
        }
        kind, what = next((v for test, v in kinds.items() if test(mode)), ("other", "not a regular file"))
        return Skipped(shown, kind, f"{what}, not a packet file: never opened")


def _too_large(shown: str, size: int) -> Skipped:
    return Skipped(
        shown, "too_large", f"{size} bytes, over the {MAX_FILE_BYTES}-byte cap of a packet: not read"
    )


def open_directory(directory: str) -> int:
    """A descriptor of DIR, reached one component at a time without following a symlink.

    :raises ImportDirError: DIR is missing, not a directory, unreadable, or a symlink is on its path
    """
    absolute = directory.startswith("/")
    parts = [p for p in directory.split("/") if p not in ("", ".")]
    fd = os.open("/" if absolute else ".", DIR_STEP_FLAGS if parts else DIR_FLAGS)
    walked = "/" if absolute else ""
    try:
        for i, part in enumerate(parts):
            flags = DIR_FLAGS if i == len(parts) - 1 else DIR_STEP_FLAGS
            try:
                step = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                raise ImportDirError(directory, _why_not(fd, part, walked + part, exc)) from exc
            os.close(fd)
            fd, walked = step, f"{walked}{part}/"
    except BaseException:
        os.close(fd)
        raise
    return fd


def _why_not(parent_fd: int, part: str, walked: str, exc: OSError) -> str:
    try:
        mode = os.stat(part, dir_fd=parent_fd, follow_symlinks=False).st_mode
    except OSError:
        mode = 0
    if stat.S_ISLNK(mode):
        real = os.path.realpath(walked)
        return (
            f"{printable(walked)} is a symlink (to {printable(real)}); import follows no symlink, so that"
            f" a stick cannot point it at other files: if you trust it, import {printable(real)}"
        )
    if mode and not stat.S_ISDIR(mode):
        return f"{printable(walked)} is not a directory"
    return f"{printable(walked)}: {exc.strerror}"


def import_files(
    export: ExportDir, ingestor: Ingestor, advance: Callable[[int], None] = lambda _n: None
) -> ImportReport:
    """Ingest every packet file of ``export``, batched as the consumer does; the rest is skipped."""
    report = ImportReport(export.directory)
    for batch in _batches(export, report, advance):
        results = ingestor.ingest_many([data for _, data in batch], "import")
        for (name, _), result in zip(batch, results, strict=True):
            report.note(name, result)
        advance(len(batch))
    return report


def _batches(
    export: ExportDir, report: ImportReport, advance: Callable[[int], None]
) -> Iterator[list[tuple[str, bytes]]]:
    batch: list[tuple[str, bytes]] = []
    size = 0
    for name in export.names:
        data = export.read(name)
        if isinstance(data, Skipped):
            report.skipped.append(data)
            advance(1)
            continue
        batch.append((printable(name), data))
        size += len(data)
        if len(batch) >= IMPORT_BATCH_FILES or size >= IMPORT_BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
