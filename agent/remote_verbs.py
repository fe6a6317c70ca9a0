"""What each of the centre's verbs does on the kiosk, through the service's own API handlers.

diag, status, sync and resubmit call the handlers the local API serves (``Service._handlers``),
so a remote command does exactly what the local one does; logs reads the redacted
:class:`~agent.log_buffer.LogBuffer`; selftest-interval, health-interval and reopen ask the
service (:class:`KioskControl`).

A result's status follows the local command's exit code: ``ok`` where `ektp-agent VERB`
exits 0, ``failed`` where it exits 1 (a device in fault, a status with a problem, rejected or
damaged packets after a sync, a named packet that is not a rejected one), the reason saying
why in the same words. Nothing here returns a NIK, a name or biometric bytes: the handlers'
documents carry none, and the log lines are redacted when they are logged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.api import ApiError
from agent.health import damage_problem, rejection_problem
from agent.log_buffer import LogBuffer
from wire.command import DEVICE_NAMES, MAX_BODY, Command

log = logging.getLogger("ektp.remote")

Handler = Callable[[dict[str, Any]], AsyncIterator[dict[str, Any]]]

VERB_TIMEOUT_S = 120.0  # a verb still running after this is reported failed (a diag takes at most ~15 s)
RESULT_ROOM = MAX_BODY - 8 * 1024  # the result document's bound, with room for the envelope
MAX_REASON_ITEMS = 4


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str  # ok or failed
    result: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    summary: str = ""


class KioskControl(Protocol):
    """What the running service offers the centre's commands beyond its local API."""

    def api_handlers(self) -> Mapping[str, Handler]: ...

    def enabled_devices(self) -> list[str]: ...

    def remote_status(self) -> dict[str, Any]: ...

    async def set_interval(self, verb: str, seconds: int, command: Command) -> dict[str, Any]: ...

    async def reopen(self, device: str) -> dict[str, Any]: ...


async def run_verb(command: Command, control: KioskControl, logs: LogBuffer) -> Outcome:
    """Run a verified, allowed command; any failure is an Outcome, never an exception."""
    try:
        return await asyncio.wait_for(_run(command, control, logs), VERB_TIMEOUT_S)
    except TimeoutError:
        return Outcome("failed", reason=f"{command.verb} did not finish within {VERB_TIMEOUT_S:.0f} s")
    except ApiError as exc:
        return Outcome("failed", reason=str(exc), summary=f"failed: {exc}")
    except Exception as exc:  # a bug must not leave the command unanswered
        log.exception("remote command %s (%s) failed", command.command_id, command.verb)
        return Outcome("failed", reason=f"internal error: {type(exc).__name__}: {exc}")


async def _run(command: Command, control: KioskControl, logs: LogBuffer) -> Outcome:
    verb, args = command.verb, command.args
    if verb == "diag":
        return await _diag(control, list(args["devices"]) or list(DEVICE_NAMES))
    if verb == "status":
        return await _status(control)
    if verb == "logs":
        return _logs(logs, int(args["lines"]), args.get("since"))
    if verb == "sync":
        return await _sync(control)
    if verb == "resubmit":
        request = {"rejected": True} if args["rejected"] else {"packet_ids": list(args["packet_ids"])}
        return await _resubmit(control, request)
    if verb in ("selftest-interval", "health-interval"):
        doc = await control.set_interval(verb, int(args["seconds"]), command)
        return Outcome("ok", doc, summary=f"{verb} {doc['seconds']} s (was {doc['was']:g} s)")
    if verb == "reopen":
        doc = await control.reopen(str(args["device"]))
        ok = bool(doc.get("passed"))
        reason = "" if ok else f"{doc['device']}: {doc.get('error') or doc.get('detail', '')}"
        return Outcome("ok" if ok else "failed", doc, reason, f"reopened {doc['device']}: {doc['state']}")
    raise ApiError(f"verb {verb!r} has no runner on this kiosk", "bad-request")  # wire.command lists more


async def _collect(control: KioskControl, op: str, request: dict[str, Any]) -> list[dict[str, Any]]:
    return [item async for item in control.api_handlers()[op]({"op": op, **request})]


def _joined(items: list[str]) -> str:
    more = len(items) - MAX_REASON_ITEMS
    return "; ".join(items[:MAX_REASON_ITEMS]) + (f"; and {more} more" if more > 0 else "")


async def _diag(control: KioskControl, names: list[str]) -> Outcome:
    enabled = set(control.enabled_devices())
    tested = [n for n in names if n in enabled]
    found = {
        d["diag"]["device"]: d["diag"]
        for d in (await _collect(control, "diag", {"devices": tested}) if tested else [])
    }
    devices = []
    for name in names:
        if name in found:
            devices.append({**found[name], "skipped": False})
        else:  # as `ektp-agent diag` lists a device the config disables
            devices.append(
                {
                    "device": name,
                    "state": "absent",
                    "passed": False,
                    "detail": f"disabled in the config (devices.{name}.enabled = false); not tested",
                    "hint": f"set devices.{name}.enabled = true to use it",
                    "tried": "",
                    "skipped": True,
                }
            )
    failing = [d for d in devices if not d["skipped"] and not d["passed"]]
    summary = ", ".join(f"{d['device']} {'skip' if d['skipped'] else d['state']}" for d in devices)
    doc = {"ok": not failing, "service": "running", "devices": devices}
    if not failing:
        return Outcome("ok", doc, summary=summary)
    reason = _joined([f"{d['device']}: {d['state']}: {d['detail']}" for d in failing])
    return Outcome("failed", doc, reason, summary)


async def _status(control: KioskControl) -> Outcome:
    doc = (await _collect(control, "status", {}))[0]
    doc["remote"] = control.remote_status()
    problems = [p["message"] for p in doc.get("problems", [])]
    q = doc.get("queue", {})
    summary = (
        f"{len(problems)} problem(s); backlog {q.get('pending', '?')}; "
        f"link {'up' if doc.get('link', {}).get('connected') else 'down'}"
    )
    return Outcome("failed" if problems else "ok", doc, _joined(problems), summary)


async def _sync(control: KioskControl) -> Outcome:
    doc = (await _collect(control, "sync", {}))[0]
    problems = []
    if doc.get("rejected"):
        problems.append(rejection_problem(int(doc["rejected"]), doc.get("rejected_reason")))
    if doc.get("damaged"):
        problems.append(damage_problem(int(doc["damaged"])))
    summary = f"sync asked; {doc['undelivered']} undelivered; link {'up' if doc['connected'] else 'down'}"
    return Outcome("failed" if problems else "ok", doc, _joined(problems), summary)


async def _resubmit(control: KioskControl, request: dict[str, Any]) -> Outcome:
    doc = (await _collect(control, "resubmit", request))[0]
    not_rejected = doc.get("not_rejected", [])
    summary = f"resubmitted {doc['resubmitted']}" + (
        f"; {len(not_rejected)} not rejected" if not_rejected else ""
    )
    if not not_rejected:
        return Outcome("ok", doc, summary=summary)
    reason = _joined(
        [f"packet {r['packet_id']} is {r['state']}, not rejected: nothing done" for r in not_rejected]
    )
    return Outcome("failed", doc, reason, summary)


def _logs(logs: LogBuffer, count: int, since: str | None) -> Outcome:
    after = dt.datetime.fromisoformat(since.replace("Z", "+00:00")) if since else None
    lines = logs.lines(count, after)
    cut = 0
    while lines and len(json.dumps(lines)) > RESULT_ROOM:  # the oldest go first
        drop = max(1, len(lines) // 10)
        lines, cut = lines[drop:], cut + drop
    doc = {"lines": lines, "count": len(lines), "cut": cut, "buffered": len(logs), "since": since}
    return Outcome("ok", doc, summary=f"{len(lines)} line(s)" + (f", {cut} cut for size" if cut else ""))


__all__ = ["VERB_TIMEOUT_S", "KioskControl", "Outcome", "run_verb"]
