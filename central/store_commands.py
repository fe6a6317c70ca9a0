"""The remote commands in the central store: each command the centre signed for a kiosk (who,
what, when, whether the broker took it) and every signed result a kiosk sent back.

A command is one row of ``commands``, keyed by its id. Results are rows of ``command_results``,
keyed by the SHA-256 of the signed bytes: the same result delivered twice (to ``run`` and to
``kiosk cmd``, or again by the broker) is one row, but a second, different result for one
command is kept beside the first. That happens when a command is replayed: the kiosk answers
the copy with a signed refusal under the same command id, and the first answer must stay
the command's outcome. A result for a command id the centre never recorded is kept too (a
kiosk refusing a command nobody here sent is worth seeing).

What became of a command (``status``):

    ok, failed, refused, expired   the kiosk's first result said so
    sending                        recorded, the broker has not confirmed it yet
    unsent                         the broker refused it or could not be reached (send_error)
    pending                        the broker has it; no result yet, not expired
    unanswered                     expired without a result

A mixin of CentralStore (central.store): it uses the store's transaction and DDL types.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from wire.command import STATUSES, Command, CommandResult

if TYPE_CHECKING:
    from central.store import Sql

VIAS = ("cli", "web")  # where a command was sent from
OPEN_STATUSES = ("sending", "pending")  # a result may still come
COMMAND_LOG_LIMIT = 200  # `kiosk cmd-log` and the web view list at most this many commands


class CommandTables:
    """Commands sent to kiosks and the results they sent back (mixed into CentralStore)."""

    BLOB = "BLOB"
    SERIAL_PK = "INTEGER PRIMARY KEY AUTOINCREMENT"

    if TYPE_CHECKING:

        def _tx(self, *, write: bool = True) -> AbstractContextManager[Sql]: ...

    def _command_schema(self) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS commands ("
            " command_id TEXT PRIMARY KEY, kiosk TEXT NOT NULL, verb TEXT NOT NULL, args TEXT NOT NULL,"
            " issuer TEXT NOT NULL, via TEXT NOT NULL, issued_at TEXT NOT NULL, expires_at TEXT NOT NULL,"
            f" sent_at TEXT, send_error TEXT, payload {self.BLOB} NOT NULL)",
            "CREATE INDEX IF NOT EXISTS commands_kiosk ON commands (kiosk, issued_at)",
            "CREATE TABLE IF NOT EXISTS command_results ("
            f" id {self.SERIAL_PK}, kiosk TEXT NOT NULL, command_id TEXT NOT NULL, verb TEXT NOT NULL,"
            " status TEXT NOT NULL, reason TEXT NOT NULL, result TEXT NOT NULL, finished_at TEXT NOT NULL,"
            f" received_at TEXT NOT NULL, sha256 TEXT NOT NULL UNIQUE, payload {self.BLOB} NOT NULL)",
            "CREATE INDEX IF NOT EXISTS command_results_kiosk ON command_results (kiosk, command_id)",
        ]

    # ------------------------------------------------------------------ writing

    def record_command(self, command: Command, payload: bytes, *, via: str) -> None:
        """Keep a command the centre signed (before it is published).

        :raises StoreInputError: a bad kiosk id or ``via``, or a command id already recorded
        """
        from central.store import StoreInputError, check_kiosk_id

        check_kiosk_id(command.kiosk)
        if via not in VIAS:
            raise StoreInputError(f"command source {via!r} is not one of {', '.join(VIAS)}")
        args = json.dumps(dict(command.args), sort_keys=True)
        with self._tx() as sql:
            if sql("SELECT 1 FROM commands WHERE command_id = ?", [command.command_id]).fetchone():
                raise StoreInputError(f"command {command.command_id} is recorded already")
            sql(
                "INSERT INTO commands (command_id, kiosk, verb, args, issuer, via, issued_at, expires_at,"
                " sent_at, send_error, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?)",
                [
                    command.command_id,
                    command.kiosk,
                    command.verb,
                    args,
                    command.issuer,
                    via,
                    command.issued_at,
                    command.expires_at,
                    bytes(payload),
                ],
            )

    def command_sent(self, command_id: str, *, error: str | None = None, now: datetime | None = None) -> None:
        """The broker took the command (``error`` None), or it did not: ``error`` says why."""
        stamp = _utc_text(now or datetime.now(UTC))
        with self._tx() as sql:
            if error is None:
                sql(
                    "UPDATE commands SET sent_at = ?, send_error = NULL WHERE command_id = ?",
                    [stamp, command_id],
                )
            else:
                sql("UPDATE commands SET send_error = ? WHERE command_id = ?", [error[:500], command_id])

    def record_result(self, result: CommandResult, payload: bytes, *, now: datetime | None = None) -> bool:
        """Keep a kiosk's verified result (the caller verified ``payload``); False if these exact
        signed bytes were kept before.

        :raises StoreInputError: a bad kiosk id, status, or a result that is not plain JSON
        """
        from central.store import StoreInputError, check_kiosk_id

        check_kiosk_id(result.kiosk)
        if result.status not in STATUSES:
            raise StoreInputError(f"result status {result.status!r} is not one of {', '.join(STATUSES)}")
        try:
            text = json.dumps(dict(result.result), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise StoreInputError(f"result of command {result.command_id} is not plain JSON: {exc}") from None
        digest = hashlib.sha256(payload).hexdigest()
        with self._tx() as sql:
            return bool(
                sql(
                    "INSERT INTO command_results (kiosk, command_id, verb, status, reason, result, finished_at,"
                    " received_at, sha256, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (sha256) DO NOTHING",
                    [
                        result.kiosk,
                        result.command_id,
                        result.verb,
                        result.status,
                        result.reason,
                        text,
                        result.finished_at,
                        _utc_text(now or datetime.now(UTC)),
                        digest,
                        bytes(payload),
                    ],
                ).rowcount
            )

    # ------------------------------------------------------------------ reading

    def command_log(
        self,
        kiosk: str,
        *,
        limit: int = COMMAND_LOG_LIMIT,
        command_id: str | None = None,
        now: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """The commands sent to ``kiosk`` (newest first, at most ``limit``) and what became of each,
        then the results of that kiosk for commands the centre has no record of.

        Each entry: ``kiosk, command_id, verb, args, issuer, via, issued_at, expires_at, sent_at,
        send_error, status`` (module docstring), ``reason, result, finished_at, received_at`` (of
        the first result, or empty), ``other_results`` (later results for the same id: status,
        reason, finished_at, received_at) and ``recorded`` (False: a result without a command
        recorded here). With ``command_id``, that command only.
        """
        when = _utc_text(now or datetime.now(UTC))
        where, params = "kiosk = ?", [kiosk]
        if command_id is not None:
            where, params = "kiosk = ? AND command_id = ?", [kiosk, command_id]
        with self._tx(write=False) as sql:
            commands = sql(
                "SELECT command_id, verb, args, issuer, via, issued_at, expires_at, sent_at, send_error"
                f" FROM commands WHERE {where} ORDER BY issued_at DESC, command_id LIMIT ?",
                [*params, int(limit)],
            ).fetchall()
            ids = [row[0] for row in commands]
            results = _results_of(sql, kiosk, ids)
            orphans = sql(
                "SELECT command_id, verb, status, reason, result, finished_at, received_at FROM command_results"
                f" WHERE {where} AND command_id NOT IN (SELECT command_id FROM commands WHERE kiosk = ?)"
                " ORDER BY id",
                [*params, kiosk],
            ).fetchall()
        log = [_entry(kiosk, row, results.get(row[0], []), when) for row in commands]
        seen: dict[str, dict[str, Any]] = {}
        for cid, verb, status, reason, result, finished_at, received_at in orphans:
            if cid in seen:
                seen[cid]["other_results"].append(_other(status, reason, finished_at, received_at))
                continue
            seen[cid] = {
                **_blank(kiosk, cid, verb),
                "status": status,
                "reason": reason,
                "result": json.loads(result),
                "finished_at": finished_at,
                "received_at": received_at,
            }
        return log + list(seen.values())[: max(0, int(limit) - len(log))]

    def command_entry(
        self, kiosk: str, command_id: str, *, now: datetime | None = None
    ) -> dict[str, Any] | None:
        """One command of ``kiosk`` as :meth:`command_log` shows it, or None."""
        found = self.command_log(kiosk, command_id=command_id, limit=1, now=now)
        return found[0] if found else None


def _results_of(sql: Sql, kiosk: str, ids: Sequence[str]) -> dict[str, list[Sequence[Any]]]:
    """The results of ``kiosk`` for ``ids``, per id in the order received."""
    found: dict[str, list[Sequence[Any]]] = {}
    for start in range(0, len(ids), 500):
        part = list(ids[start : start + 500])
        marks = ", ".join("?" for _ in part)
        rows = sql(
            "SELECT command_id, status, reason, result, finished_at, received_at FROM command_results"
            f" WHERE kiosk = ? AND command_id IN ({marks}) ORDER BY id",
            [kiosk, *part],
        ).fetchall()
        for row in rows:
            found.setdefault(row[0], []).append(row[1:])
    return found


def _blank(kiosk: str, command_id: str, verb: str) -> dict[str, Any]:
    return {
        "kiosk": kiosk,
        "command_id": command_id,
        "verb": verb,
        "args": {},
        "issuer": None,
        "via": None,
        "issued_at": None,
        "expires_at": None,
        "sent_at": None,
        "send_error": None,
        "status": "",
        "reason": "",
        "result": {},
        "finished_at": None,
        "received_at": None,
        "other_results": [],
        "recorded": False,
    }


def _other(status: str, reason: str, finished_at: str, received_at: str) -> dict[str, str]:
    return {"status": status, "reason": reason, "finished_at": finished_at, "received_at": received_at}


def _entry(kiosk: str, row: Sequence[Any], results: list[Sequence[Any]], now: str) -> dict[str, Any]:
    command_id, verb, args, issuer, via, issued_at, expires_at, sent_at, send_error = row
    entry = {
        **_blank(kiosk, command_id, verb),
        "args": json.loads(args),
        "issuer": issuer,
        "via": via,
        "issued_at": issued_at,
        "expires_at": expires_at,
        "sent_at": sent_at,
        "send_error": send_error,
        "recorded": True,
    }
    if results:
        status, reason, result, finished_at, received_at = results[0]
        entry.update(
            status=status,
            reason=reason,
            result=json.loads(result),
            finished_at=finished_at,
            received_at=received_at,
            other_results=[_other(*r[:2], *r[3:]) for r in results[1:]],
        )
    elif send_error is not None:
        entry.update(status="unsent", reason=send_error)
    elif sent_at is None:
        entry["status"] = "sending" if expires_at > now else "unsent"
    else:
        entry["status"] = "pending" if expires_at > now else "unanswered"
    return entry


def _utc_text(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
