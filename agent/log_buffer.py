"""The service's recent log lines, kept in memory and redacted, for the centre's `logs` command.

:class:`LogBuffer` is a logging handler beside the journal's: it keeps the last ``capacity``
lines, each already redacted (:func:`redact`) when it is logged, so nothing personal is ever
held here, let alone sent. The service never logs a NIK, a name or biometric data on
purpose; the redaction is the second line of defence for what could slip in through an
exception's text:

- a NIK: any run of 12 or more digits, also split by single spaces, dots or dashes
  ("3273 0142 0995 7462"), becomes ``[number]``;
- a value given under a personal key (``name='...'``, ``"address": "..."``, nama, alamat,
  birth_place, tempat_lahir) becomes ``[redacted]``;
- a bytes literal (``b'...'``) and any run of 40 or more base64 characters that mixes letters
  and digits or cases (image data, keys, hashes) becomes ``[data]``;
- an exception adds only its type and message (redacted), never its traceback;
- a line is cut at ``line_max`` characters.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import re
import threading

CAPACITY = 1000  # wire.command.MAX_LOG_LINES: the most a `logs` command may ask for
LINE_MAX = 400

_NUMBER_RE = re.compile(r"(?<!\d)\d(?:[ .-]?\d){11,}(?!\d)")
_PERSONAL_KEYS = r"name|nama|full_name|address|alamat|birth_place|tempat_lahir|religion|agama"
_PERSONAL_RE = re.compile(
    rf"""(?ix) (["']?\b(?:{_PERSONAL_KEYS})\b["']? \s* [:=] \s*)  # the key, quoted or not
        ( "(?:[^"\\]|\\.)*" | '(?:[^'\\]|\\.)*' | [^\s,;)}}\]]+ )  # its value"""
)
_BYTES_RE = re.compile(r"""\bb(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")
_BLOB_RE = re.compile(r"[A-Za-z0-9+/=]{40,}")


def redact(text: str) -> str:
    """``text`` without anything that could be a NIK, a personal value or raw data (module docstring)."""
    text = _BYTES_RE.sub("[data]", text)
    text = _PERSONAL_RE.sub(lambda m: m.group(1) + "[redacted]", text)
    text = _BLOB_RE.sub(lambda m: "[data]" if _mixed(m.group(0)) else m.group(0), text)
    return _NUMBER_RE.sub("[number]", text)


def _mixed(run: str) -> bool:
    """Data mixes at least two of upper case, lower case and digits; a path of words does not."""
    kinds = (any(c.isupper() for c in run), any(c.islower() for c in run), any(c.isdigit() for c in run))
    return sum(kinds) >= 2


class LogBuffer(logging.Handler):
    """The last ``capacity`` log lines as ``(created, "TIME LEVEL logger: message")``, redacted."""

    def __init__(self, capacity: int = CAPACITY, *, line_max: int = LINE_MAX) -> None:
        super().__init__(logging.NOTSET)
        self.line_max = line_max
        self._guard = threading.Lock()
        self._lines: collections.deque[tuple[float, str]] = collections.deque(maxlen=capacity)
        self.dropped = 0  # lines pushed out by newer ones since the start

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                message += f" | {type(exc).__name__}: {exc}"
            when = dt.datetime.fromtimestamp(record.created, dt.UTC)
            stamp = when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            line = redact(f"{stamp} {record.levelname} {record.name}: {' '.join(message.split())}")
            if len(line) > self.line_max:
                line = line[: self.line_max - 1] + "…"
        except Exception:  # a log call must never fail because of this buffer
            self.handleError(record)
            return
        with self._guard:
            if len(self._lines) == self._lines.maxlen:
                self.dropped += 1
            self._lines.append((record.created, line))

    def lines(self, count: int, since: dt.datetime | None = None) -> list[str]:
        """The last ``count`` lines (oldest first), only those logged at or after ``since``."""
        floor = since.timestamp() if since is not None else float("-inf")
        with self._guard:
            kept = [line for created, line in self._lines if created >= floor]
        return kept[-count:] if count > 0 else []

    def __len__(self) -> int:
        return len(self._lines)


__all__ = ["CAPACITY", "LogBuffer", "redact"]
