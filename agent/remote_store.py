"""What the kiosk keeps about the centre's commands: ``{data_dir}/remote.db`` and the interval
overrides in ``{data_dir}/remote-settings.json``.

remote.db (SQLite, WAL, synchronous=FULL, mode 0600; one writer, the service's remote thread;
`ektp-agent remote log` reads it read-only, with the service running or not):

    executed  one row per verified command id, kept until its expiry (+ a day for clock
              steps): a second copy is a replay. state ``running`` (written BEFORE the
              command runs: a crash cannot make it run twice), ``answered`` (its signed result
              is held until the broker has it, so a redelivery re-sends the same result),
              ``done`` (result published and command acknowledged).
    audit     every command received and what became of it: who (the issuer the centre
              signed, "(unverified)" for a message that did not verify), what (verb and
              arguments), when, status, reason and a short summary of the result. The last
              AUDIT_ROWS rows are kept.

remote-settings.json: ``{"health-interval": {"seconds", "set_by", "set_at", "command_id"}, ...}``
written atomically; `ektp-agent config reset-remote` removes it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.files import PRIVATE_FILE, fsync_dir
from wire.command import INTERVAL_BOUNDS_S, Command, utc_text

log = logging.getLogger("ektp.remote")

DB_NAME = "remote.db"
SETTINGS_NAME = "remote-settings.json"
AUDIT_ROWS = 10_000
KEEP_AFTER_EXPIRY_S = 86400.0  # an executed id outlives its expiry by a day: a clock stepped back
BUSY_TIMEOUT_S = 10.0
MAX_SUMMARY = 300
MAX_ARGS_TEXT = 2000
PRUNE_EVERY = 100  # writes between two prunes
SELFTEST_FLOOR_S = 0.5  # the service never self-tests more often than this

RUNNING, ANSWERED, DONE = "running", "answered", "done"

_DDL = (
    """CREATE TABLE IF NOT EXISTS executed (
        command_id TEXT PRIMARY KEY,
        expires_at REAL NOT NULL,
        state TEXT NOT NULL,
        audit_id INTEGER NOT NULL,
        result BLOB
    )""",
    """CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        received_at TEXT NOT NULL,
        command_id TEXT NOT NULL,
        issuer TEXT NOT NULL,
        verb TEXT NOT NULL,
        args TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        summary TEXT NOT NULL DEFAULT '',
        finished_at TEXT
    )""",
)


class RemoteStoreError(Exception):
    """remote.db cannot be opened or read; the message names the file and what to do."""


@dataclass(frozen=True, slots=True)
class Claim:
    """What the store knew of a verified command when it arrived."""

    state: str  # "new" (now recorded as running), or RUNNING, ANSWERED, DONE from before
    audit_id: int
    result: bytes | None = None  # ANSWERED: the signed result to send again
    received_at: str = ""  # when it first arrived (for a replay's reason)


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    received_at: str
    command_id: str
    issuer: str
    verb: str
    args: dict[str, Any]
    status: str
    reason: str
    summary: str
    finished_at: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "received_at": self.received_at,
            "command_id": self.command_id,
            "issuer": self.issuer,
            "verb": self.verb,
            "args": self.args,
            "status": self.status,
            "reason": self.reason,
            "summary": self.summary,
            "finished_at": self.finished_at,
        }


def db_path(data_dir: Path) -> Path:
    return data_dir / DB_NAME


def _now() -> str:
    return utc_text(dt.datetime.now(dt.UTC))


class RemoteStore:
    """remote.db for the service's remote thread (every method blocks: call it on that thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writes = 0
        try:
            _private_file(path)
            self._conn = sqlite3.connect(str(path), isolation_level=None, timeout=BUSY_TIMEOUT_S)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            for ddl in _DDL:
                self._conn.execute(ddl)
            self.prune()
        except (OSError, sqlite3.Error) as exc:
            raise RemoteStoreError(
                f"cannot open the remote commands' log {path}: {exc}; remote commands are refused until it"
                " opens (check the data dir's permissions and free space; moving the file aside starts an"
                " empty log, and commands already run before could then run again until they expire)"
            ) from exc

    def close(self) -> None:
        self._conn.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")
        self._writes += 1
        if self._writes % PRUNE_EVERY == 0:
            self.prune()

    def claim(self, command: Command, expires_at: float) -> Claim:
        """Record a verified command as running (one transaction, synced) unless its id is known."""
        with self._tx() as c:
            row = c.execute(
                "SELECT e.state, e.audit_id, e.result, a.received_at FROM executed e"
                " LEFT JOIN audit a ON a.id = e.audit_id WHERE e.command_id = ?",
                (command.command_id,),
            ).fetchone()
            if row is not None:
                return Claim(str(row[0]), int(row[1]), row[2], str(row[3] or ""))
            audit_id = self._audit(c, command.command_id, command.issuer, command.verb, command.args, RUNNING)
            c.execute(
                "INSERT INTO executed (command_id, expires_at, state, audit_id) VALUES (?, ?, ?, ?)",
                (command.command_id, expires_at, RUNNING, audit_id),
            )
        return Claim("new", audit_id)

    def finish(self, audit_id: int, status: str, reason: str, summary: str, result: bytes) -> None:
        """The command's outcome; its signed result is held until :meth:`acknowledged`."""
        with self._tx() as c:
            c.execute(
                "UPDATE audit SET status = ?, reason = ?, summary = ?, finished_at = ? WHERE id = ?",
                (status, reason[: MAX_SUMMARY * 2], summary[:MAX_SUMMARY], _now(), audit_id),
            )
            c.execute(
                "UPDATE executed SET state = ?, result = ? WHERE audit_id = ?", (ANSWERED, result, audit_id)
            )

    def acknowledged(self, command_id: str) -> None:
        """The result is with the broker and the command acknowledged: drop the held result."""
        with self._tx() as c:
            c.execute("UPDATE executed SET state = ?, result = NULL WHERE command_id = ?", (DONE, command_id))

    def record(
        self, command_id: str, issuer: str, verb: str, args: Any, status: str, reason: str, summary: str = ""
    ) -> int:
        """An audit row for a command answered without running (a refusal, a replay, an expiry)."""
        with self._tx() as c:
            audit_id = self._audit(c, command_id, issuer, verb, args, status, reason, summary, finished=True)
        return audit_id

    def _audit(
        self,
        c: sqlite3.Connection,
        command_id: str,
        issuer: str,
        verb: str,
        args: Any,
        status: str,
        reason: str = "",
        summary: str = "",
        *,
        finished: bool = False,
    ) -> int:
        try:
            args_text = json.dumps(args, sort_keys=True, default=str)
        except (TypeError, ValueError):
            args_text = "{}"
        if len(args_text) > MAX_ARGS_TEXT:
            args_text = json.dumps({"(cut)": args_text[:MAX_ARGS_TEXT]})
        now = _now()
        cur = c.execute(
            "INSERT INTO audit (received_at, command_id, issuer, verb, args, status, reason, summary,"
            " finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                now,
                command_id[:64],
                issuer[:64],
                verb[:40],
                args_text,
                status,
                reason[: MAX_SUMMARY * 2],
                summary[:MAX_SUMMARY],
                now if finished else None,
            ),
        )
        return int(cur.lastrowid or 0)

    def prune(self, now: float | None = None) -> None:
        """Forget ids past their expiry (and a day) and audit rows beyond the last AUDIT_ROWS."""
        cutoff = (time.time() if now is None else now) - KEEP_AFTER_EXPIRY_S
        self._conn.execute("DELETE FROM executed WHERE expires_at < ?", (cutoff,))
        self._conn.execute("DELETE FROM audit WHERE id <= (SELECT MAX(id) FROM audit) - ?", (AUDIT_ROWS,))

    def interrupted(self) -> int:
        """Commands left running by a stop or a crash: their audit rows say so (at start-up)."""
        with self._tx() as c:
            cur = c.execute(
                "UPDATE audit SET status = 'failed', reason = 'interrupted: the service stopped while it"
                " ran; not run again', finished_at = ? WHERE status = 'running'",
                (_now(),),
            )
        return cur.rowcount


def read_audit(path: Path, limit: int | None = None) -> list[AuditRow]:
    """The audit log, oldest first, opened read-only (the service may be running or not).

    :raises FileNotFoundError: no remote.db yet (no command ever arrived)
    :raises RemoteStoreError: it cannot be read
    """
    if not path.exists():
        raise FileNotFoundError(path)
    query = "SELECT id, received_at, command_id, issuer, verb, args, status, reason, summary, finished_at"
    query += " FROM audit ORDER BY id DESC" + (" LIMIT ?" if limit else "")
    params = (limit,) if limit else ()
    rows = None
    for flags in ("mode=ro", "immutable=1"):
        try:
            conn = sqlite3.connect(f"{path.absolute().as_uri()}?{flags}", uri=True, timeout=BUSY_TIMEOUT_S)
        except sqlite3.Error as exc:
            raise RemoteStoreError(f"cannot open {path}: {exc}") from exc
        try:
            rows = conn.execute(query, params).fetchall()
            break
        except sqlite3.OperationalError as exc:
            # no write access to make the -shm and no -wal to read: the file alone is the truth
            if "unable to open" in str(exc) and not Path(f"{path}-wal").exists() and flags == "mode=ro":
                continue
            raise RemoteStoreError(f"cannot read {path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise RemoteStoreError(f"cannot read {path}: {exc}") from exc
        finally:
            conn.close()
    out = []
    for r in reversed(rows or []):
        try:
            args = json.loads(r[5])
        except ValueError:
            args = {}
        out.append(AuditRow(r[0], r[1], r[2], r[3], r[4], args if isinstance(args, dict) else {}, *r[6:]))
    return out


def _private_file(path: Path) -> None:
    """Create the database 0600 before SQLite does (its -wal and -shm copy the mode)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        if os.fstat(fd).st_mode & 0o777 != PRIVATE_FILE:
            os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- interval overrides


@dataclass(frozen=True, slots=True)
class Override:
    """One interval the centre set: its value and who set it when."""

    seconds: int
    set_by: str
    set_at: str
    command_id: str

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "set_by": self.set_by,
            "set_at": self.set_at,
            "command_id": self.command_id,
        }


def intervals_in_force(config_health_s: float, overrides: dict[str, Override]) -> tuple[float, float]:
    """(health, self-test) seconds: the centre's overrides, else [health] interval_s and half of
    the health interval in force (the peripherals are self-tested twice per health report)."""
    health = overrides["health-interval"].seconds if "health-interval" in overrides else config_health_s
    selftest = overrides.get("selftest-interval")
    return float(health), float(selftest.seconds) if selftest else max(SELFTEST_FLOOR_S, health / 2)


def settings_path(data_dir: Path) -> Path:
    return data_dir / SETTINGS_NAME


def read_overrides(path: Path) -> dict[str, Override]:
    """The overrides in force: those in the file within their bounds (anything else is ignored, logged)."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring the remote interval overrides in %s: %s (the config's values apply)", path, exc)
        return {}
    out: dict[str, Override] = {}
    for verb, (low, high) in INTERVAL_BOUNDS_S.items():
        entry = doc.get(verb) if isinstance(doc, dict) else None
        if entry is None:
            continue
        try:
            seconds = entry["seconds"]
            if not isinstance(seconds, int) or isinstance(seconds, bool) or not low <= seconds <= high:
                raise ValueError(f"seconds {seconds!r} is not a whole number {low}-{high}")
            out[verb] = Override(
                seconds, str(entry["set_by"])[:64], str(entry["set_at"])[:40], str(entry["command_id"])[:64]
            )
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring the %s override in %s: %s", verb, path, exc)
    return out


def write_overrides(path: Path, overrides: dict[str, Override]) -> None:
    """Replace the file atomically (0600, synced); no overrides: remove it."""
    if not overrides:
        remove_overrides(path)
        return
    data = json.dumps({verb: o.to_json() for verb, o in sorted(overrides.items())}, indent=1).encode()
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fsync_dir(path.parent)


def remove_overrides(path: Path) -> dict[str, Override]:
    """Remove the file; returns what it held."""
    held = read_overrides(path)
    try:
        path.unlink()
    except FileNotFoundError:
        return held
    fsync_dir(path.parent)
    return held


__all__ = [
    "AUDIT_ROWS",
    "AuditRow",
    "Claim",
    "Override",
    "RemoteStore",
    "RemoteStoreError",
    "db_path",
    "intervals_in_force",
    "read_audit",
    "read_overrides",
    "remove_overrides",
    "settings_path",
    "write_overrides",
]
