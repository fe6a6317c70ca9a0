"""Commented config files that explain themselves, made from the loaders' own key declarations.

agent/config.py and central/config.py each describe every key they read as a
:class:`KeyDoc` (its meaning, default and what the loader accepts); `config init`
renders those into a TOML file, and docs/configuration.md's tables come from the same
list, so neither can drift from what the loader checks. Every key is written commented
out with its default, except those `config init` was told to set: a file left as written
loads as the built-in defaults.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_FILE_MODE = 0o640  # owner writes, the service's group reads (it may name password files)
WIDTH = 88


@dataclass(frozen=True, slots=True)
class KeyDoc:
    """One config key as a technician reads it."""

    section: str  # "mqtt", "devices.fingerprint"
    name: str
    meaning: str  # one sentence: what the key is for
    default: object = None  # the built-in value; None: unset, or derived (default_text says how)
    default_text: str = ""  # words for a default that is not a fixed value ("{data_dir}/kiosk.key")
    allowed: str = ""  # what the loader accepts, in its own words
    example: object = None  # shown on the commented line when there is no fixed default
    hex: bool = False  # written as 0x1209 (USB ids)

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    def shown_default(self) -> str:
        if self.default_text:
            return self.default_text
        if self.default is None:
            return "none"
        return toml_value(self.default, hex=self.hex)

    def line_value(self) -> object:
        """What the commented-out line shows: the default, else the example."""
        if self.default is not None and not self.default_text:
            return self.default
        return self.example


def toml_value(value: object, *, hex: bool = False) -> str:
    """A TOML literal for a config value (strings and paths as basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:#06x}" if hex else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} has no place in a config file")
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # JSON's string escapes are TOML's
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v, hex=hex) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _comment(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(
        text, WIDTH, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}# ", break_on_hyphens=False
    )


def render(
    header: Iterable[str],
    keys: Iterable[KeyDoc],
    sections: Mapping[str, str],
    values: Mapping[str, object],
) -> str:
    """The commented TOML file: ``header`` paragraphs, then each section's keys.

    ``values`` (dotted key -> value) are written as active lines; every other key is commented
    out with its default (or, without one, an example).
    """
    lines: list[str] = []
    for paragraph in header:
        lines.extend(_comment(paragraph) if paragraph else ["#"])
    current = None
    for doc in keys:
        if doc.section != current:
            current = doc.section
            lines += ["", ""]
            lines.extend(_comment(sections.get(current, "")))
            lines.append(f"[{current}]")
        lines.append("")
        lines.extend(_comment(doc.meaning))
        accepts = f"Accepts {doc.allowed}. " if doc.allowed else ""
        lines.extend(_comment(f"{accepts}Default: {doc.shown_default()}."))
        if doc.key in values:
            lines.append(f"{doc.name} = {toml_value(values[doc.key], hex=doc.hex)}")
        else:
            lines.append(f"# {doc.name} = {toml_value(doc.line_value(), hex=doc.hex)}")
    return "\n".join(lines).lstrip("\n") + "\n"


def markdown_table(keys: Iterable[KeyDoc]) -> str:
    """docs/configuration.md's table of the keys: key, default, what it accepts, meaning."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    rows = ["| key | default | accepts | meaning |", "|---|---|---|---|"]
    for doc in keys:
        fixed = doc.default is not None and not doc.default_text
        default = f"`{doc.shown_default()}`" if fixed else doc.shown_default()
        rows.append(
            f"| `[{doc.section}] {doc.name}` | {cell(default)} | {cell(doc.allowed) or '-'} | {cell(doc.meaning)} |"
        )
    return "\n".join(rows) + "\n"


def split_broker(text: str) -> tuple[str, int | None]:
    """``HOST:PORT`` (or ``HOST``, ``[IPv6]:PORT``, a bare IPv6 address) as (host, port or None).

    :raises ValueError: naming what is wrong with it
    """
    host, port = text, ""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError("an IPv6 address goes in brackets before the port: [2001:db8::1]:8883")
        port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host:
        raise ValueError("the host is missing: expected HOST:PORT, e.g. mqtt.example:8883")
    if text.endswith(":") or (port and not port.isdigit()):
        raise ValueError(f"the port {port!r} is not a number: expected HOST:PORT, e.g. mqtt.example:8883")
    return host, int(port) if port else None


def write_config_file(path: Path, text: str, *, force: bool) -> None:
    """Write a config file, mode 0640, with the group of its directory (root:ektp under /etc/ektp-*).

    Without ``force`` the file is created exclusively and never through a symlink: anything at
    ``path`` (a file, a link, even a dangling one) is refused. With ``force`` a new file is written
    beside it and renamed over it, so a symlink there is replaced, never written through.

    :raises FileExistsError: something is at path and not force
    :raises OSError: the directory is missing or not writable, or path is a directory
    """
    data = text.encode("utf-8")
    directory = path.parent
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        group = os.fstat(dir_fd).st_gid
        if not force:
            _create(path.name, data, dir_fd, group)
        else:
            tmp = f".{path.name}.tmp-{os.getpid()}"
            _create(tmp, data, dir_fd, group)
            try:
                os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dir_fd)
                raise
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _create(name: str, data: bytes, dir_fd: int, group: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, CONFIG_FILE_MODE, dir_fd=dir_fd)
    try:
        os.fchmod(fd, CONFIG_FILE_MODE)  # whatever the umask (the agent's is 077)
        with contextlib.suppress(PermissionError):  # only root, or a member of the group, may
            os.fchown(fd, -1, group)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)
        raise
    os.close(fd)


def existing_kind(path: Path) -> str:
    """What is at path, in words for a refusal ("a file", "a symbolic link", ...)."""
    try:
        st = path.lstat()
    except OSError:
        return "something"
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if stat.S_ISDIR(st.st_mode):
        return "a directory"
    if stat.S_ISREG(st.st_mode):
        return "a file"
    return "a special file"


def write_error(exc: OSError, path: Path) -> str:
    """Why a config file could not be written at path, and what to do, in one line."""
    kind = existing_kind(path)
    if isinstance(exc, IsADirectoryError) or kind == "a directory":
        return f"{path} is a directory: give the file's path, e.g. --to {path / 'config.toml'}"
    if isinstance(exc, FileExistsError):
        replaced = (
            " (the link itself is replaced, never what it points to)" if kind == "a symbolic link" else ""
        )
        return f"{path} already exists ({kind}); pass --force to replace it{replaced}, or choose another --to"
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return f"cannot write {path}: the directory {path.parent} does not exist; create it first"
    return f"cannot write {path}: {exc.strerror or exc}"


def missing_mqtt_file(mqtt: Any) -> tuple[str, Path, str] | None:
    """The first of the MQTT password and TLS files an ``[mqtt]`` section names that is not a
    regular file: ``(key, path, "does not exist" or "is not a regular file")``, or None.

    A file this user may not look at counts as there: the service's user is the one that reads it.
    """
    for key in ("password_file", "ca_file", "cert_file", "key_file"):
        file: Path | None = getattr(mqtt, key)
        if file is None:
            continue
        try:
            if file.is_file():
                continue
        except PermissionError:
            continue
        return key, file, "is not a regular file" if file.exists() else "does not exist"
    return None
