"""Remote commands: the centre's signed command to one kiosk (the `cmd` topic's payload) and the
kiosk's signed result (the `result` topic's payload).

Byte layout (big-endian) of both, as the ack's (wire.ack), documented in docs/protocol.md:

    offset  size  field
    0       4     magic: b"EKTC" a command, b"EKTR" a result
    4       1     format version (1)
    5       4     body length N (<= MAX_BODY)
    9       N     body: UTF-8 JSON (below)
    9+N     64    Ed25519 signature over bytes 0 .. 9+N: a command by the centre's signing key,
                  a result by the kiosk's own signing key

The magic is signed, so a command, a result and an ack (b"EKTA") can never pass for one
another even though the centre signs both commands and acks with one key.

Command body: ``{"kiosk", "command_id" (a UUID), "verb", "args": {...}, "issued_at",
"expires_at" (RFC 3339 UTC), "issuer" (who at the centre sent it)}``. Result body:
``{"kiosk", "command_id", "verb", "status", "reason", "result": {...}, "finished_at"}`` where
status is ``ok``, ``failed`` (ran, and what it ran failed), ``refused`` (not run: a bad
signature, another kiosk's, a replay, a verb disabled or unknown, bad arguments) or
``expired`` (not run: past its expiry).

The verbs are a closed list (:data:`VERBS`); :func:`check_args` bounds every argument. There
is no shell, no file transfer and no config write beyond the bounded intervals.

Everything here is untrusted input on the receiving side: anything that fails any check
raises :class:`CommandError` naming the reason, and nothing is run.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from wire.names import KIOSK_ID_RE

MAGIC_COMMAND = b"EKTC"
MAGIC_RESULT = b"EKTR"
VERSION = 1
MAX_BODY = 256 * 1024  # a result of 1,000 log lines fits; anything larger is garbage
SIG_LEN = 64
_HEAD = struct.Struct(">4sBI")

DEVICE_NAMES = ("fingerprint", "signature", "iris", "camera")
VERBS = ("diag", "status", "logs", "sync", "resubmit", "selftest-interval", "health-interval", "reopen")
STATUSES = ("ok", "failed", "refused", "expired")
DEFAULT_TTL_S = 3600
MAX_TTL_S = 7 * 86400  # a command may wait for an offline kiosk at most a week
MAX_LOG_LINES = 1000
DEFAULT_LOG_LINES = 200
INTERVAL_BOUNDS_S = {"selftest-interval": (10, 3600), "health-interval": (10, 3600)}
MAX_ISSUER = 64
MAX_REASON = 500
MAX_RESUBMIT_IDS = 1000
ISSUER_RE = re.compile(r"[A-Za-z0-9_.@ -]{1,64}")


class CommandError(ValueError):
    """A command or result that must not be acted on. ``reason`` is a short machine word:
    truncated, bad-magic, wrong-version, bad-length, bad-signature, malformed, wrong-kiosk,
    unknown-verb, bad-args, expired. ``command_id`` and ``verb`` are what the payload claimed,
    unverified unless the signature checked (for the refusal result's reference only)."""

    def __init__(self, reason: str, message: str, *, command_id: str = "", verb: str = "") -> None:
        super().__init__(message)
        self.reason, self.command_id, self.verb = reason, command_id, verb


@dataclass(frozen=True, slots=True)
class Command:
    kiosk: str
    command_id: str
    verb: str
    args: Mapping[str, Any]
    issued_at: str
    expires_at: str
    issuer: str

    def expired(self, now: dt.datetime | None = None) -> bool:
        return _parse_time(self.expires_at) <= (now or dt.datetime.now(dt.UTC))

    def to_json(self) -> dict[str, Any]:
        return {
            "kiosk": self.kiosk,
            "command_id": self.command_id,
            "verb": self.verb,
            "args": dict(self.args),
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "issuer": self.issuer,
        }


@dataclass(frozen=True, slots=True)
class CommandResult:
    kiosk: str
    command_id: str
    verb: str
    status: str  # one of STATUSES
    reason: str = ""
    result: Mapping[str, Any] = field(default_factory=dict)
    finished_at: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "kiosk": self.kiosk,
            "command_id": self.command_id,
            "verb": self.verb,
            "status": self.status,
            "reason": self.reason,
            "result": dict(self.result),
            "finished_at": self.finished_at,
        }


def utc_text(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _parse_time(text: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError(f"time {text!r} has no zone")
    return when


# ----------------------------------------------------------------------------- arguments


def check_args(verb: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """The verb's arguments, checked and with their defaults. :raises CommandError: unknown-verb, bad-args"""
    if verb not in VERBS:
        raise CommandError("unknown-verb", f"verb {verb[:40]!r} is not one of {', '.join(VERBS)}", verb=verb)
    if not isinstance(args, Mapping):
        raise CommandError("bad-args", f"{verb}: arguments are not an object", verb=verb)
    allowed = {
        "diag": {"devices"},
        "status": set(),
        "logs": {"lines", "since"},
        "sync": set(),
        "resubmit": {"packet_ids", "rejected"},
        "selftest-interval": {"seconds"},
        "health-interval": {"seconds"},
        "reopen": {"device"},
    }[verb]
    extra = sorted(str(k)[:40] for k in args if k not in allowed)
    if extra:
        raise CommandError("bad-args", f"{verb}: unknown arguments {', '.join(extra)}", verb=verb)
    try:
        return _checked(verb, args)
    except (TypeError, ValueError) as exc:
        raise CommandError("bad-args", f"{verb}: {exc}", verb=verb) from None


def _checked(verb: str, args: Mapping[str, Any]) -> dict[str, Any]:
    if verb == "diag":
        devices = args.get("devices", [])
        if not isinstance(devices, list) or any(d not in DEVICE_NAMES for d in devices):
            raise ValueError(f"devices must be a list of {', '.join(DEVICE_NAMES)}")
        return {"devices": sorted(set(devices), key=DEVICE_NAMES.index)}
    if verb == "logs":
        lines = args.get("lines", DEFAULT_LOG_LINES)
        if not isinstance(lines, int) or isinstance(lines, bool) or not 1 <= lines <= MAX_LOG_LINES:
            raise ValueError(f"lines must be a whole number, 1-{MAX_LOG_LINES}")
        since = args.get("since")
        if since is not None:
            if not isinstance(since, str):
                raise ValueError("since must be an RFC 3339 time")
            since = utc_text(_parse_time(since))
        return {"lines": lines, "since": since}
    if verb == "resubmit":
        ids, rejected = args.get("packet_ids", []), args.get("rejected", False)
        if not isinstance(rejected, bool):
            raise ValueError("rejected must be true or false")
        if not isinstance(ids, list) or len(ids) > MAX_RESUBMIT_IDS:
            raise ValueError(f"packet_ids must be a list of at most {MAX_RESUBMIT_IDS} packet ids")
        ids = [str(uuid.UUID(str(i))) for i in ids]
        if bool(ids) == rejected:
            raise ValueError("name packet_ids or set rejected, not both and not neither")
        return {"packet_ids": ids, "rejected": rejected}
    if verb in INTERVAL_BOUNDS_S:
        low, high = INTERVAL_BOUNDS_S[verb]
        seconds = args.get("seconds")
        if not isinstance(seconds, int) or isinstance(seconds, bool) or not low <= seconds <= high:
            raise ValueError(f"seconds must be a whole number, {low}-{high}")
        return {"seconds": seconds}
    if verb == "reopen":
        device = args.get("device")
        if device not in DEVICE_NAMES:
            raise ValueError(f"device must be one of {', '.join(DEVICE_NAMES)}")
        return {"device": device}
    return {}  # status, sync


# ----------------------------------------------------------------------------- encoding


def _seal(magic: bytes, body: Mapping[str, Any], key: Ed25519PrivateKey) -> bytes:
    data = json.dumps(body, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
    if len(data) > MAX_BODY:
        raise ValueError(f"body of {len(data)} bytes is over the {MAX_BODY}-byte limit")
    signed = _HEAD.pack(magic, VERSION, len(data)) + data
    return signed + key.sign(signed)


def _open(
    payload: bytes, magic: bytes, what: str, keys: Sequence[Ed25519PublicKey], signer: str
) -> dict[str, Any]:
    """The body of a payload whose signature verifies with one of ``keys``. :raises CommandError:"""
    if len(payload) < _HEAD.size + SIG_LEN:
        raise CommandError("truncated", f"{what} of {len(payload)} bytes is shorter than any valid one")
    found, version, length = _HEAD.unpack_from(payload)
    if found != magic:
        raise CommandError("bad-magic", f"payload is not an ektp {what} (bad magic)")
    if version != VERSION:
        raise CommandError("wrong-version", f"{what} format version {version}, this reads version {VERSION}")
    if length > MAX_BODY or len(payload) != _HEAD.size + length + SIG_LEN:
        raise CommandError(
            "bad-length", f"{what} declares a {length}-byte body in a {len(payload)}-byte payload"
        )
    signed, signature = payload[: _HEAD.size + length], payload[_HEAD.size + length :]
    try:
        doc = json.loads(signed[_HEAD.size :])
    except ValueError:
        doc = None
    claimed = doc if isinstance(doc, dict) else {}
    ref = {"command_id": str(claimed.get("command_id", ""))[:64], "verb": str(claimed.get("verb", ""))[:40]}
    for key in keys:
        try:
            key.verify(signature, signed)
            break
        except InvalidSignature:
            continue
    else:
        raise CommandError("bad-signature", f"{what} signature does not verify with {signer}", **ref)
    if not isinstance(doc, dict):
        raise CommandError("malformed", f"signed {what} body is not a JSON object", **ref)
    return doc


def sign_command(
    kiosk: str,
    verb: str,
    args: Mapping[str, Any],
    key: Ed25519PrivateKey,
    *,
    issuer: str,
    ttl_s: float = DEFAULT_TTL_S,
    command_id: str | None = None,
    now: dt.datetime | None = None,
) -> tuple[bytes, Command]:
    """The centre's side: a signed command for ``kiosk``, valid ``ttl_s`` seconds from ``now``.

    :raises CommandError: an unknown verb or bad arguments (nothing is signed)
    :raises ValueError: a bad kiosk id, issuer or time to live
    """
    if KIOSK_ID_RE.fullmatch(kiosk) is None:
        raise ValueError(f"kiosk id {kiosk!r} is invalid")
    if ISSUER_RE.fullmatch(issuer) is None:
        raise ValueError(f"issuer {issuer!r} is not 1-64 characters of A-Z a-z 0-9 _ . @ - and space")
    if not 1 <= ttl_s <= MAX_TTL_S:
        raise ValueError(f"time to live {ttl_s} s is not between 1 s and {MAX_TTL_S} s (7 days)")
    issued = now or dt.datetime.now(dt.UTC)
    command = Command(
        kiosk=kiosk,
        command_id=command_id or str(uuid.uuid4()),
        verb=verb,
        args=check_args(verb, args),
        issued_at=utc_text(issued),
        expires_at=utc_text(issued + dt.timedelta(seconds=ttl_s)),
        issuer=issuer,
    )
    return _seal(MAGIC_COMMAND, command.to_json(), key), command


def verify_command(
    payload: bytes,
    *,
    keys: Sequence[Ed25519PublicKey],
    kiosk: str,
    now: dt.datetime | None = None,
) -> Command:
    """The kiosk's side: everything about a command meant for ``kiosk``, signed by one of the
    centre's ``keys`` (its current and retired signing keys), not expired at ``now``.

    Replays are the caller's to refuse (it keeps the ids it ran until their expiry).
    :raises CommandError: naming the reason; nothing may be run
    """
    doc = _open(payload, MAGIC_COMMAND, "command", keys, "the centre's key")
    ref = {"command_id": str(doc.get("command_id", ""))[:64], "verb": str(doc.get("verb", ""))[:40]}
    try:
        command = Command(
            kiosk=str(doc["kiosk"]),
            command_id=str(uuid.UUID(str(doc["command_id"]))),
            verb=str(doc["verb"]),
            args=doc.get("args", {}),
            issued_at=utc_text(_parse_time(str(doc["issued_at"]))),
            expires_at=utc_text(_parse_time(str(doc["expires_at"]))),
            issuer=str(doc.get("issuer", ""))[:MAX_ISSUER],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CommandError("malformed", f"signed command body is malformed: {exc}", **ref) from None
    ref["command_id"] = command.command_id
    if command.kiosk != kiosk:
        raise CommandError(
            "wrong-kiosk", f"command is for kiosk {command.kiosk[:64]!r}, not {kiosk!r}", **ref
        )
    args = check_args(command.verb, command.args)
    if _parse_time(command.expires_at) - _parse_time(command.issued_at) > dt.timedelta(seconds=MAX_TTL_S):
        raise CommandError("bad-args", f"command lives longer than {MAX_TTL_S} s (7 days)", **ref)
    if command.expired(now):
        raise CommandError("expired", f"command expired at {command.expires_at}", **ref)
    return Command(**{**command.to_json(), "args": args})


def sign_result(result: CommandResult, key: Ed25519PrivateKey) -> bytes:
    """The kiosk's side: its signed result (``finished_at`` stamped now if empty)."""
    if result.status not in STATUSES:
        raise ValueError(f"status {result.status!r} is not one of {', '.join(STATUSES)}")
    body = result.to_json()
    body["finished_at"] = result.finished_at or utc_text(dt.datetime.now(dt.UTC))
    body["reason"] = result.reason[:MAX_REASON]
    return _seal(MAGIC_RESULT, body, key)


def verify_result(payload: bytes, *, keys: Sequence[Ed25519PublicKey], kiosk: str) -> CommandResult:
    """The centre's side: a result from ``kiosk``, signed by one of its registered ``keys``.

    :raises CommandError: naming the reason; the result must not be stored as the kiosk's
    """
    doc = _open(payload, MAGIC_RESULT, "result", keys, f"kiosk {kiosk}'s key")
    try:
        result = CommandResult(
            kiosk=str(doc["kiosk"]),
            command_id=str(uuid.UUID(str(doc["command_id"]))),
            verb=str(doc["verb"])[:40],
            status=str(doc["status"]),
            reason=str(doc.get("reason", ""))[:MAX_REASON],
            result=doc.get("result", {}),
            finished_at=str(doc.get("finished_at", ""))[:40],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CommandError("malformed", f"signed result body is malformed: {exc}") from None
    if result.kiosk != kiosk:
        raise CommandError(
            "wrong-kiosk", f"result names kiosk {result.kiosk[:64]!r}, sent on {kiosk!r}'s topic"
        )
    if result.status not in STATUSES or not isinstance(result.result, dict):
        raise CommandError("malformed", f"result status {result.status[:20]!r} or its result is not valid")
    return result
