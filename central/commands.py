"""Remote commands from the centre: sign a command for one kiosk, record it, publish it on the
kiosk's ``cmd`` topic with a short-lived MQTT client of its own, and wait for the kiosk's
signed result, verified with the kiosk's registered keys and stored.

    CommandSendError
     ├── UnknownKiosk  (also LookupError)       not registered, or every key of it revoked:
     │                                           nothing is signed, recorded or sent
     └── BrokerError   (also ConnectionError)   the broker cannot be reached, or refuses the
                                                 result subscription or the command

The client subscribes to ``{prefix}/{kiosk}/result`` before it publishes, so a kiosk that
answers at once is heard. The command goes QoS 1, not retained; a kiosk that is offline gets
it from its persistent session at the broker when it returns (if it has not expired by then),
and its result then reaches ``ektp-central run``, which stores it (central.consumer). A
PUBACK "No matching subscribers" means no session of the kiosk subscribes to its commands
(never connected with remote commands on, or offline longer than its session expiry): the
broker kept nothing, and the command is recorded as unsent.

Every verified result seen on the topic is stored (the same bytes once); one that does not
verify with the kiosk's keys is counted and logged, never stored as the kiosk's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from wire.command import (
    DEFAULT_TTL_S,
    Command,
    CommandError,
    CommandResult,
    sign_command,
    verify_result,
)

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from central.config import CentralConfig, CentralMqtt
    from central.keyring import CentralKeyring
    from central.store import CentralStore

log = logging.getLogger("ektp.central.commands")

DEFAULT_TIMEOUT_S = 30.0  # `kiosk cmd --timeout`
CONNECT_TIMEOUT_S = 10.0  # CONNACK and SUBACK
PUBLISH_TIMEOUT_S = 10.0  # PUBACK
NO_MATCHING_SUBSCRIBERS = 0x10
FINAL_STATUSES = ("ok", "failed", "refused", "expired")


class CommandSendError(Exception):
    """A command could not be sent; the message says what to do."""


class UnknownKiosk(CommandSendError, LookupError):
    def __init__(self, kiosk: str, message: str) -> None:
        super().__init__(message)
        self.kiosk = kiosk


class BrokerError(CommandSendError, ConnectionError):
    pass


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one command: its result, or None when none came within the timeout."""

    command: Command
    result: CommandResult | None
    unverified: int  # results on the kiosk's topic that did not verify with its keys
    seconds: float  # from publishing to the result (or to the timeout)

    @property
    def status(self) -> str:
        return self.result.status if self.result is not None else "timeout"

    def to_json(self) -> dict[str, Any]:
        c, r = self.command, self.result
        return {
            "kiosk": c.kiosk,
            "command_id": c.command_id,
            "verb": c.verb,
            "args": dict(c.args),
            "status": self.status,
            "reason": r.reason if r is not None else "",
            "result": dict(r.result) if r is not None else {},
            "issued_at": c.issued_at,
            "expires_at": c.expires_at,
            "finished_at": r.finished_at if r is not None else None,
            "issuer": c.issuer,
        }


# ----------------------------------------------------------------------------- verifying


def result_keys(store: CentralStore, kiosk: str, now: datetime | None = None) -> list[Ed25519PublicKey]:
    """The keys a result of ``kiosk`` may be signed with: each registered key not revoked now."""
    stamp = _utc_text(now or datetime.now(UTC))
    return [k.public_key for k in store.kiosk_keys(kiosk) if not k.revoked_at(stamp)]


def verified_result(store: CentralStore, kiosk: str, payload: bytes) -> CommandResult:
    """The result in ``payload``, sent on ``kiosk``'s topic and signed by one of its keys.

    :raises CommandError: naming the reason (``unknown-kiosk`` when it has no usable key)
    """
    keys = result_keys(store, kiosk)
    if not keys:
        raise CommandError("unknown-kiosk", f"kiosk {kiosk} has no registered key that is not revoked")
    return verify_result(payload, keys=keys, kiosk=kiosk)


def check_kiosk(store: CentralStore, kiosk: str) -> None:
    """:raises UnknownKiosk: ``kiosk`` is not registered, or every key of it is revoked"""
    if not store.kiosk_keys(kiosk):
        raise UnknownKiosk(
            kiosk,
            f"kiosk {kiosk} is not registered: nothing sent (`ektp-central kiosks` lists the registered"
            f" kiosks; `ektp-central kiosk add {kiosk} --public-key FILE` registers it)",
        )
    if not result_keys(store, kiosk):
        raise UnknownKiosk(
            kiosk,
            f"every key of kiosk {kiosk} is revoked, so no result of it could be verified: nothing sent"
            f" (register its new key: `ektp-central kiosk key add {kiosk} --public-key FILE`)",
        )


# ----------------------------------------------------------------------------- the MQTT client


class CommandLink:
    """A short-lived MQTT client for one command: subscribed to the kiosk's results, then
    publishing the command. paho's thread only queues what it hears; the caller takes it."""

    def __init__(self, m: CentralMqtt, prefix: str, kiosk: str) -> None:
        self.m = m
        self.cmd_topic = f"{prefix}/{kiosk}/cmd"
        self.result_topic = f"{prefix}/{kiosk}/result"
        self.messages: queue.Queue[bytes] = queue.Queue()
        self._connack: queue.Queue[Any] = queue.Queue()
        self._suback: queue.Queue[list[Any]] = queue.Queue()
        self._puback: dict[int, Any] = {}
        self._published = threading.Condition()
        self._client: mqtt.Client | None = None

    def open(self, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        """Connect and subscribe to the results.

        :raises LinkSetupError: a TLS or password file cannot be used
        :raises BrokerError: the broker cannot be reached or refuses the login or the subscription
        """
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from central.consumer import configure_client

        m = self.m
        client_id = f"{m.client_id[:44]}-cmd-{secrets.token_hex(4)}"
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        client.suppress_exceptions = True
        configure_client(client, m)
        client.on_connect = lambda _c, _u, _f, rc, _p: self._connack.put(rc)
        client.on_subscribe = lambda _c, _u, _mid, rcs, _p: self._suback.put(list(rcs))
        client.on_message = lambda _c, _u, msg: self.messages.put(bytes(msg.payload))
        client.on_publish = self._on_publish
        where = f"{m.host}:{m.port}"
        try:
            client.connect(m.host, m.port, keepalive=30, clean_start=True)
        except (OSError, ValueError) as exc:  # refused, unreachable, TLS; ValueError: a bad host
            raise BrokerError(f"cannot connect to the broker at {where}: {exc}") from exc
        self._client = client
        client.loop_start()
        rc = self._take(self._connack, timeout_s, f"no CONNACK from the broker at {where}")
        if rc.is_failure:
            raise BrokerError(
                f"the broker at {where} refused the connection: {rc} (check [mqtt] username,"
                " password_file or the client certificate)"
            )
        client.subscribe(self.result_topic, qos=1)
        (granted,) = self._take(self._suback, timeout_s, f"no SUBACK from the broker at {where}")
        if granted.is_failure:
            raise BrokerError(
                f"the broker does not let this user read {self.result_topic} ({granted}): the result"
                " could not be heard, so nothing was sent. The centre's user must read"
                " +/result and write +/cmd (docs/operations.md, section 8)"
            )

    def publish(self, payload: bytes, timeout_s: float = PUBLISH_TIMEOUT_S) -> None:
        """Publish the command (QoS 1, not retained) and wait for its PUBACK.

        :raises BrokerError: no PUBACK in time, the broker refused it, or nobody subscribes
        """
        assert self._client is not None, "open() first"
        info = self._client.publish(self.cmd_topic, payload, qos=1, retain=False)
        deadline = time.monotonic() + timeout_s
        with self._published:
            while info.mid not in self._puback:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrokerError(
                        f"no PUBACK from the broker for {self.cmd_topic} within {timeout_s:.0f} s"
                    )
                self._published.wait(left)
            rc = self._puback.pop(info.mid)
        if rc.is_failure:
            raise BrokerError(
                f"the broker refused the command on {self.cmd_topic}: {rc} (the centre's user must be"
                " allowed to write +/cmd: docs/operations.md, section 8)"
            )
        if rc.value == NO_MATCHING_SUBSCRIBERS:
            raise BrokerError(
                f"nobody subscribes to {self.cmd_topic}: the kiosk has never connected with remote"
                " commands enabled, or it has been offline longer than its [remote] session_expiry_s;"
                " the broker kept nothing"
            )

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with self._published:
            self._puback[mid] = rc
            self._published.notify_all()

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.disconnect()
            client.loop_stop()

    def __enter__(self) -> CommandLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _take(q: queue.Queue[Any], timeout_s: float, what: str) -> Any:
        try:
            return q.get(timeout=timeout_s)
        except queue.Empty:
            raise BrokerError(f"{what} within {timeout_s:.0f} s") from None


# ----------------------------------------------------------------------------- sending


def send_command(
    config: CentralConfig,
    store: CentralStore,
    keyring: CentralKeyring,
    kiosk: str,
    verb: str,
    args: Mapping[str, Any],
    *,
    issuer: str,
    via: str,
    ttl_s: float = DEFAULT_TTL_S,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    on_sent: Callable[[Command], None] | None = None,
    stop: threading.Event | None = None,
) -> Outcome:
    """Sign, record, publish and wait: the command's outcome (its result, or a timeout).

    ``on_sent`` is called once the broker has the command; ``stop`` ends the wait early (a
    timeout). The command is recorded before it is published, and marked sent or unsent.

    :raises CommandError: an unknown verb or bad arguments (nothing signed)
    :raises ValueError: a bad issuer or time to live (nothing signed)
    :raises UnknownKiosk: the kiosk is not registered (nothing signed)
    :raises LinkSetupError: a TLS or password file of [mqtt] cannot be used (nothing sent)
    :raises BrokerError: the broker cannot be reached or refuses (the command is recorded unsent
        if it was signed by then)
    """
    check_kiosk(store, kiosk)
    payload, command = sign_command(kiosk, verb, args, keyring.signing, issuer=issuer, ttl_s=ttl_s)
    with CommandLink(config.mqtt, config.mqtt.topic_prefix, kiosk) as link:
        link.open()
        store.record_command(command, payload, via=via)
        try:
            link.publish(payload)
        except BrokerError as exc:
            store.command_sent(command.command_id, error=str(exc))
            raise
        store.command_sent(command.command_id)
        log.info(
            "command %s sent to kiosk %s: %s %s (by %s, valid until %s)",
            command.command_id,
            kiosk,
            verb,
            json.dumps(dict(command.args), sort_keys=True),
            issuer,
            command.expires_at,
        )
        if on_sent is not None:
            on_sent(command)
        return _await_result(store, link, command, timeout_s, stop)


def _await_result(
    store: CentralStore, link: CommandLink, command: Command, timeout_s: float, stop: threading.Event | None
) -> Outcome:
    started = time.monotonic()
    deadline = started + timeout_s
    unverified = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or (stop is not None and stop.is_set()):
            return Outcome(command, None, unverified, time.monotonic() - started)
        try:
            payload = link.messages.get(timeout=min(left, 0.2))
        except queue.Empty:
            continue
        try:
            result = verified_result(store, command.kiosk, payload)
        except CommandError as exc:
            unverified += 1
            log.warning(
                "a result on %s does not verify as kiosk %s's (%s): %s; not stored",
                link.result_topic,
                command.kiosk,
                exc.reason,
                exc,
            )
            continue
        store.record_result(result, payload)
        if result.command_id == command.command_id:
            return Outcome(command, result, unverified, time.monotonic() - started)


# ----------------------------------------------------------------------------- arguments as typed


AGE_RE = re.compile(r"([0-9]{1,6})([smhd])")
AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since_time(text: str, now: datetime | None = None) -> str:
    """A `logs --since` as typed: an RFC 3339 time with a zone, or an age before now (30m, 2h, 7d).

    :raises ValueError: neither (the message says what is expected)
    """
    m = AGE_RE.fullmatch(text.strip())
    if m is not None:
        return _utc_text((now or datetime.now(UTC)) - timedelta(seconds=int(m[1]) * AGE_UNITS[m[2]]))
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise ValueError(
            f"since {text[:40]!r}: expected an RFC 3339 time with a zone or an age such as 30m, 2h, 7d"
        )
    return _utc_text(when)


def packet_ids(texts: Iterable[str]) -> list[str]:
    """Packet ids as typed. :raises ValueError: one is not a UUID (named)"""
    ids = []
    for text in texts:
        try:
            ids.append(str(uuid.UUID(text)))
        except ValueError:
            raise ValueError(
                f"{text[:60]!r} is not a packet id (a UUID, as `ektp-agent queue` or `ektp-central packets` lists them)"
            ) from None
    return ids


# ----------------------------------------------------------------------------- showing a result


SAID_BY_THE_STATUS = ("ok", "service")  # a result's fields that its status already says
SUMMARY_CHARS = 120


def result_lines(verb: str, result: Mapping[str, Any]) -> list[str]:
    """A result, readably, one line each (indented by the caller): a diag's devices with detail
    and hint, the log lines, then the other fields as ``key: value``."""
    devices = device_reports(result)
    lines: list[str] = []
    if devices:
        width = max(len(d["device"]) for d in devices)
        for d in devices:
            detail = f": {d['detail']}" if d["detail"] else ""
            lines.append(f"{d['device'].ljust(width)}  {d['state']}{detail}")
            if d["hint"]:
                lines.append(f"{''.ljust(width)}  hint: {d['hint']}")
    logs = result.get("lines")
    if isinstance(logs, list):
        lines += [str(line) for line in logs]
    for key, value in result.items():
        if key in ("lines", "devices", "diag", "results") and (devices or key == "lines"):
            continue
        if key in SAID_BY_THE_STATUS:
            continue
        if isinstance(value, dict | list):
            text = json.dumps(value, sort_keys=True, ensure_ascii=False)
            lines.append(f"{key}: {text if len(text) <= 300 else text[:300] + ' ...'}")
        else:
            lines.append(f"{key}: {'-' if value is None else value}")
    return lines


def summary(verb: str, status: str, reason: str, result: Mapping[str, Any]) -> str:
    """One short line for a list: the devices that are not ok, the number of log lines, the
    reason of what failed or did not run, or the first few plain values."""
    devices = device_reports(result) if status in ("ok", "failed") else []
    if devices:
        bad = [f"{d['device']} {d['state']}" for d in devices if d["state"] not in ("ok", "untested")]
        text = ", ".join(bad) if bad else f"{len(devices)} devices ok"
    elif status == "ok" and isinstance(result.get("lines"), list):
        n = len(result["lines"])
        text = f"{n} log line{'' if n == 1 else 's'}"
    elif status != "ok":
        text = reason
    else:
        plain = [
            f"{k} {v}"
            for k, v in result.items()
            if k not in SAID_BY_THE_STATUS and (isinstance(v, str | int | float | bool) or v is None)
        ]
        text = ", ".join(plain[:4])
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 3] + "..."


def args_text(args: Mapping[str, Any]) -> str | None:
    """A command's arguments in a few words: ``devices=iris lines=50``; None when it has none."""
    shown = []
    for key, value in args.items():
        if value in (None, [], False):
            continue
        if isinstance(value, list):
            value = ",".join(map(str, value[:3])) + (f",+{len(value) - 3}" if len(value) > 3 else "")
        shown.append(f"{key}={value}" if value is not True else key)
    return " ".join(shown) or None


def device_reports(result: Mapping[str, Any]) -> list[dict[str, str]]:
    """A result's device reports, whatever their container: a list of ``{"device", "state", ...}``
    (or ``{"diag": {...}}`` lines, as the local API streams them) or ``{name: {"state", ...}}``."""
    found: list[dict[str, str]] = []
    for key in ("devices", "diag", "results"):
        value = result.get(key)
        items: list[tuple[str | None, Any]] = []
        if isinstance(value, list):
            items = [(None, v) for v in value]
        elif isinstance(value, dict):
            items = list(value.items()) if all(isinstance(v, dict) for v in value.values()) else []
        for name, item in items:
            if isinstance(item, dict) and isinstance(item.get("diag"), dict):
                item = item["diag"]
            if not isinstance(item, dict) or not isinstance(item.get("state"), str):
                continue
            found.append(
                {
                    "device": str(item.get("device") or item.get("name") or name or "?"),
                    "state": item["state"],
                    "detail": str(item.get("detail") or ""),
                    "hint": str(item.get("hint") or ""),
                }
            )
        if found:
            break
    return found


def _utc_text(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
