"""The centre's commands on the kiosk: their own MQTT connection, the trust checks, the audit
log, and the signed result (docs/protocol.md "Remote commands").

One :class:`RemoteCommands` owns a paho client of its own (client id ``{kiosk}-remote``), apart
from the link's: the link's session is clean and carries the Last Will, this one is
PERSISTENT (clean_start false, session expiry ``[remote] session_expiry_s``), so the broker
keeps the QoS 1 commands sent while the kiosk is offline and delivers them when it returns.
Commands are acknowledged by hand (``manual_ack``), one at a time, in the order they came:

    verify (wire.command.verify_command: the centre's signature, this kiosk, a known verb
      with bounded arguments, not expired)            else a signed refusal ("refused"/"expired")
    claim in remote.db (its id recorded as running, synced, BEFORE it runs)
      id seen before: ran and answered -> a replay, refused; answered but not acknowledged
      (the kiosk stopped in between) -> the same result again; left running by a crash ->
      "failed: interrupted", never run twice
    [remote] enabled and verbs allow it                else a signed refusal
    run it through the service's handlers (agent.remote_verbs)
    the signed result (the kiosk's key) on {prefix}/{kiosk}/result, QoS 1; after its PUBACK the
      command's PUBACK: a kiosk that stops before has the command again from the broker

paho's callbacks only hand events to the core's queue (``call_soon_threadsafe``); remote.db is
used on a thread of its own. Nothing here ends ``run()`` but ``stop()``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import sqlite3
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import AgentConfig
from agent.link.session import CONNECT_TIMEOUT_S, backoff, secure
from agent.log_buffer import LogBuffer, redact
from agent.remote_store import ANSWERED, DONE, RUNNING, Override, RemoteStore, RemoteStoreError, db_path
from agent.remote_verbs import KioskControl, Outcome, run_verb
from wire.command import (
    MAX_BODY,
    VERBS,
    Command,
    CommandError,
    CommandResult,
    sign_result,
    verify_command,
)

log = logging.getLogger("ektp.remote")

MAX_INCOMING_PACKET = MAX_BODY + 8 * 1024  # told to the broker: anything larger is not a command
RESULT_PUBACK_TIMEOUT_S = 30.0  # no PUBACK for a result this long: the connection is taken for dead
STABLE_SESSION_S = 10.0
UNVERIFIED_PER_MINUTE = 20  # refusals of messages that do not verify: beyond, they are dropped unanswered
NIL_ID = str(uuid.UUID(int=0))  # a refusal's command id when the message named none that can be read
UNVERIFIED = "(unverified)"
_SIGNED_REASONS = ("malformed", "wrong-kiosk", "unknown-verb", "bad-args", "expired")  # the signature held
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Connected:
    client: mqtt.Client
    reason: ReasonCode
    session_present: bool


@dataclass(frozen=True, slots=True)
class _Disconnected:
    client: mqtt.Client
    reason: str


@dataclass(frozen=True, slots=True)
class _Published:
    client: mqtt.Client
    mid: int
    reason: ReasonCode


@dataclass(frozen=True, slots=True)
class _Subscribed:
    client: mqtt.Client
    reasons: list[ReasonCode]


@dataclass(frozen=True, slots=True)
class _Incoming:
    client: mqtt.Client
    topic: str
    mid: int
    qos: int
    payload: bytes


_Event = _Connected | _Disconnected | _Published | _Subscribed | _Incoming


class _Lost(Exception):
    """The connection ended while a result waited for its PUBACK."""


class RemoteCommands:
    """The kiosk's side of remote commands. ``run()`` until ``stop()``."""

    def __init__(
        self,
        config: AgentConfig,
        control: KioskControl,
        logs: LogBuffer,
        *,
        kiosk_key: Ed25519PrivateKey,
        centre_keys: list[Ed25519PublicKey],
        store_path: Path | None = None,
    ) -> None:
        self.config = config
        self.control = control
        self.logs = logs
        self.kiosk = config.kiosk.id
        self.kiosk_key = kiosk_key
        self.centre_keys = centre_keys
        self.store_path = store_path or db_path(config.kiosk.data_dir)
        prefix = f"{config.mqtt.topic_prefix}/{self.kiosk}"
        self.topic_cmd, self.topic_result = f"{prefix}/cmd", f"{prefix}/result"
        self.connected = False
        self.last_error = ""
        self.handled = 0  # commands answered since the start
        self._store: RemoteStore | None = None
        self._db_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="remote-db")
        self._events: asyncio.Queue[_Event] = asyncio.Queue()
        self._backlog: collections.deque[_Incoming] = collections.deque()
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unverified: collections.deque[float] = collections.deque()
        self._dropped_unverified = 0

    # ------------------------------------------------------------------------- public surface

    def status_json(self) -> dict[str, Any]:
        return {"connected": self.connected, "last_error": self.last_error, "handled": self.handled}

    async def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await self._open_store()
            attempt = 0
            while not self._stopping.is_set():
                try:
                    client = await self._connect()
                    if client is not None:
                        began = time.monotonic()
                        try:
                            await self._session(client)
                        finally:
                            await self._teardown(client)
                        if time.monotonic() - began >= STABLE_SESSION_S:
                            attempt = 0
                except Exception as exc:  # a bug must not end remote commands: log it and start over
                    log.exception("remote commands: the connection failed; reconnecting")
                    self.last_error = f"failure: {type(exc).__name__}: {exc}"
                if self._stopping.is_set():
                    break
                attempt += 1
                await self._sleep_or_stop(backoff(self.config.mqtt, attempt))
        finally:
            if self._store is not None:
                with contextlib.suppress(Exception):
                    await self._db(self._store.close)
            self._db_thread.shutdown(wait=True)

    # ------------------------------------------------------------------------- the store

    async def _open_store(self) -> None:
        if self._store is not None:
            return
        try:
            store = await self._db(lambda: RemoteStore(self.store_path))
        except RemoteStoreError as exc:
            self._note_error(str(exc))
            return
        try:
            left = await self._db(store.interrupted)
        except sqlite3.Error as exc:
            await self._db(store.close)
            self._note_error(f"cannot write the remote commands' log {self.store_path}: {exc}")
            return
        self._store = store
        if left:
            log.warning(
                "%d remote command(s) were interrupted by the last stop; they are not run again", left
            )

    async def _db(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db_thread, fn)

    # ------------------------------------------------------------------------- the connection

    def _post(self, event: _Event) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed under us at shutdown
                loop.call_soon_threadsafe(self._events.put_nowait, event)

    def _new_client(self) -> mqtt.Client:
        """:raises OSError: the password file cannot be read; :raises ssl.SSLError: bad TLS files"""
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{self.kiosk}-remote",
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,  # the backoff here decides, as the link's does
            manual_ack=True,  # a command's PUBACK goes only after its result is with the broker
        )
        client.suppress_exceptions = True
        secure(client, self.config.mqtt)
        post = self._post

        def on_connect(c: mqtt.Client, _u: Any, flags: Any, rc: ReasonCode, _p: Any) -> None:
            post(_Connected(c, rc, bool(getattr(flags, "session_present", False))))

        def on_disconnect(c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
            post(_Disconnected(c, str(rc)))

        def on_publish(c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
            post(_Published(c, mid, rc))

        def on_subscribe(c: mqtt.Client, _u: Any, _mid: int, rcs: list[ReasonCode], _p: Any) -> None:
            post(_Subscribed(c, list(rcs)))

        def on_message(c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            post(_Incoming(c, msg.topic, msg.mid, msg.qos, bytes(msg.payload)))

        client.on_connect, client.on_disconnect = on_connect, on_disconnect
        client.on_publish, client.on_subscribe, client.on_message = on_publish, on_subscribe, on_message
        return client

    async def _connect(self) -> mqtt.Client | None:
        m = self.config.mqtt
        try:
            client = self._new_client()
        except (OSError, ValueError, ssl.SSLError) as exc:
            self._note_error(f"cannot set up the MQTT client (TLS files, password file): {exc}")
            return None
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.config.remote.session_expiry_s
        props.MaximumPacketSize = MAX_INCOMING_PACKET
        try:
            await asyncio.to_thread(
                client.connect, m.host, m.port, m.keepalive_s, clean_start=False, properties=props
            )
        except (OSError, ValueError, ssl.SSLError) as exc:
            self._note_error(f"cannot connect to {m.host}:{m.port}: {exc}")
            return None
        client.loop_start()
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while True:
            event = await self._next_event(deadline - time.monotonic())
            if self._stopping.is_set() or event is None:
                if event is None and not self._stopping.is_set():
                    self._note_error(f"no CONNACK from {m.host}:{m.port} within {CONNECT_TIMEOUT_S:.0f} s")
                await self._teardown(client)
                return None
            if isinstance(event, _Connected) and event.client is client:
                if event.reason.is_failure:
                    self._note_error(f"broker {m.host}:{m.port} refused the connection: {event.reason}")
                    await self._teardown(client)
                    return None
                self.connected, self.last_error = True, ""
                log.info(
                    "remote commands: connected to %s:%d (%s session)",
                    m.host,
                    m.port,
                    "resumed" if event.session_present else "new",
                )
                return client
            if isinstance(event, _Disconnected) and event.client is client:
                self._note_error(f"connection to {m.host}:{m.port} closed before CONNACK: {event.reason}")
                await self._teardown(client)
                return None
            if isinstance(event, _Incoming) and event.client is client:
                self._backlog.append(event)  # a resumed session's queue can come right behind CONNACK

    def _note_error(self, message: str) -> None:
        if message != self.last_error:
            log.warning("remote commands: %s; retrying with backoff", message)
        self.last_error = message

    async def _teardown(self, client: mqtt.Client) -> None:
        self.connected = False
        with contextlib.suppress(Exception):
            client.disconnect()
        await asyncio.to_thread(client.loop_stop)
        while not self._events.empty():  # late events of the old client
            self._events.get_nowait()
        self._backlog.clear()  # not acknowledged: the broker delivers them again

    async def _sleep_or_stop(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _next_event(self, timeout: float, *, stop_aware: bool = True) -> _Event | None:
        """The next event from paho; None at the timeout (or on stop, when ``stop_aware``)."""
        get = asyncio.ensure_future(self._events.get())
        stop = asyncio.ensure_future(self._stopping.wait() if stop_aware else asyncio.sleep(timeout + 1))
        try:
            done, _ = await asyncio.wait(
                {get, stop}, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stop.cancel()
            if not get.done():
                get.cancel()
        if get in done and not get.cancelled():
            return get.result()
        return None

    # ------------------------------------------------------------------------- one session

    async def _session(self, client: mqtt.Client) -> None:
        client.subscribe(self.topic_cmd, qos=1)
        while not self._stopping.is_set():
            if self._backlog:
                incoming = self._backlog.popleft()
                try:
                    await self._handle(client, incoming)
                except _Lost as exc:
                    self._note_error(f"link lost: {exc}")
                    return
                continue
            event = await self._next_event(1.0)
            if event is None or event.client is not client:
                continue
            if isinstance(event, _Disconnected):
                self._note_error(f"link lost: {event.reason}")
                return
            if isinstance(event, _Subscribed):
                self._check_subscription(event)
            elif isinstance(event, _Incoming):
                self._backlog.append(event)

    def _check_subscription(self, event: _Subscribed) -> None:
        refused = [rc for rc in event.reasons if rc.is_failure]
        if refused:
            self._note_error(
                f"the broker refused the subscription to {self.topic_cmd} ({refused[0]}): no command can"
                " reach this kiosk; the broker's ACL must let it read its own cmd topic (docs/operations.md)"
            )

    async def _handle(self, client: mqtt.Client, incoming: _Incoming) -> None:
        if incoming.topic != self.topic_cmd:
            client.ack(incoming.mid, incoming.qos)
            return
        try:
            command = verify_command(incoming.payload, keys=self.centre_keys, kiosk=self.kiosk)
        except CommandError as exc:
            await self._refuse_unverified(client, incoming, exc)
            return
        await self._open_store()
        if self._store is None:
            await self._answer(
                client,
                incoming,
                command,
                Outcome("refused", reason=f"the kiosk cannot record commands: {self.last_error}"),
                audit=False,
            )
            return
        store = self._store
        expires = _timestamp(command.expires_at)
        claim = await self._db(lambda: store.claim(command, expires))
        if claim.state == ANSWERED and claim.result is not None:  # answered, the stop came before the ack
            log.info(
                "remote command %s came again before it was acknowledged: its result again",
                command.command_id,
            )
            await self._publish_and_ack(client, incoming, command.command_id, claim.result)
            return
        if claim.state == RUNNING:
            outcome = Outcome("failed", reason="interrupted: the service stopped while it ran; not run again")
            await self._finish(client, incoming, command, claim.audit_id, outcome)
            return
        if claim.state in (ANSWERED, DONE):
            reason = f"replay: command {command.command_id} was already received at {claim.received_at}; not run again"
            await self._answer(client, incoming, command, Outcome("refused", reason=reason))
            return
        refusal = self._policy(command)
        if refusal:
            await self._finish(client, incoming, command, claim.audit_id, Outcome("refused", reason=refusal))
            return
        log.info(
            "remote command %s from %s: %s %s",
            command.command_id,
            command.issuer,
            command.verb,
            json.dumps(dict(command.args), sort_keys=True)[:300],
        )
        outcome = await run_verb(command, self.control, self.logs)
        await self._finish(client, incoming, command, claim.audit_id, outcome)

    def _policy(self, command: Command) -> str:
        """Why this kiosk's config refuses the command ("" when it allows it)."""
        r = self.config.remote
        if not r.enabled:
            return "remote commands are disabled on this kiosk ([remote] enabled = false)"
        if command.verb not in r.verbs:
            allowed = ", ".join(r.verbs) or "none"
            return f"verb {command.verb} is not allowed on this kiosk ([remote] verbs: {allowed})"
        return ""

    async def _finish(
        self, client: mqtt.Client, incoming: _Incoming, command: Command, audit_id: int, outcome: Outcome
    ) -> None:
        """Sign the outcome, record it with its result (held until acknowledged), publish, ack."""
        payload, outcome = self._sign(command.command_id, command.verb, outcome)
        store = self._store
        assert store is not None
        summary = outcome.summary or outcome.reason
        await self._db(lambda: store.finish(audit_id, outcome.status, outcome.reason, summary, payload))
        self._log_outcome(command.command_id, command.verb, outcome)
        await self._publish_and_ack(client, incoming, command.command_id, payload)

    async def _answer(
        self,
        client: mqtt.Client,
        incoming: _Incoming,
        command: Command,
        outcome: Outcome,
        *,
        audit: bool = True,
    ) -> None:
        """A verified command answered without running it (a replay, no store)."""
        payload, outcome = self._sign(command.command_id, command.verb, outcome)
        if audit and self._store is not None:
            store = self._store
            await self._db(
                lambda: store.record(
                    command.command_id,
                    command.issuer,
                    command.verb,
                    command.args,
                    outcome.status,
                    outcome.reason,
                )
            )
        self._log_outcome(command.command_id, command.verb, outcome)
        await self._publish_and_ack(client, incoming, None, payload)

    async def _refuse_unverified(self, client: mqtt.Client, incoming: _Incoming, exc: CommandError) -> None:
        """A message that is not a valid command for this kiosk: a signed refusal naming why.

        Messages whose signature does not verify are answered at most UNVERIFIED_PER_MINUTE
        times a minute (a flood on the topic must not become a flood of signatures and audit rows).
        """
        status = "expired" if exc.reason == "expired" else "refused"
        signed = exc.reason in _SIGNED_REASONS
        if not signed and not self._unverified_allowed():
            client.ack(incoming.mid, incoming.qos)
            return
        command_id = _uuid_or_nil(exc.command_id)
        claimed = _claimed_body(incoming.payload) if signed else {}
        issuer = str(claimed.get("issuer", ""))[:64] if signed else UNVERIFIED
        args = claimed.get("args") if isinstance(claimed.get("args"), dict) else {}
        verb = exc.verb or str(claimed.get("verb", ""))[:40]
        outcome = Outcome(status, reason=f"{exc.reason}: {exc}")
        payload, outcome = self._sign(command_id, verb, outcome)
        if self._store is not None:
            store = self._store
            await self._db(
                lambda: store.record(command_id, issuer, verb, args, outcome.status, outcome.reason)
            )
        self._log_outcome(command_id, verb, outcome)
        await self._publish_and_ack(client, incoming, None, payload)

    def _unverified_allowed(self) -> bool:
        now = time.monotonic()
        while self._unverified and now - self._unverified[0] > 60:
            self._unverified.popleft()
        if len(self._unverified) >= UNVERIFIED_PER_MINUTE:
            self._dropped_unverified += 1
            if self._dropped_unverified in (1, 10) or self._dropped_unverified % 100 == 0:
                log.warning(
                    "remote commands: %d messages on %s that do not verify left unanswered (over %d a minute)",
                    self._dropped_unverified,
                    self.topic_cmd,
                    UNVERIFIED_PER_MINUTE,
                )
            return False
        self._unverified.append(now)
        return True

    def _sign(self, command_id: str, verb: str, outcome: Outcome) -> tuple[bytes, Outcome]:
        """The signed result; one over the size bound becomes a failure that says so."""
        outcome = dataclasses.replace(outcome, reason=redact(outcome.reason))  # a second line of defence
        result = CommandResult(
            self.kiosk, command_id, verb[:40], outcome.status, outcome.reason, outcome.result
        )
        try:
            return sign_result(result, self.kiosk_key), outcome
        except ValueError as exc:  # over MAX_BODY
            outcome = Outcome(
                "failed", reason=f"the result is too large to send: {exc}", summary=outcome.summary
            )
            result = CommandResult(self.kiosk, command_id, verb[:40], outcome.status, outcome.reason, {})
            return sign_result(result, self.kiosk_key), outcome

    def _log_outcome(self, command_id: str, verb: str, outcome: Outcome) -> None:
        self.handled += 1
        level = logging.INFO if outcome.status == "ok" else logging.WARNING
        why = f": {outcome.reason}" if outcome.reason else ""
        log.log(level, "remote command %s (%s): %s%s", command_id, verb or "?", outcome.status, why[:500])

    async def _publish_and_ack(
        self, client: mqtt.Client, incoming: _Incoming, command_id: str | None, payload: bytes
    ) -> None:
        """The result on the result topic; once the broker has it, the command's PUBACK.

        :raises _Lost: the connection ended first (the broker delivers the command again)
        """
        info = client.publish(self.topic_result, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise _Lost(f"cannot publish the result: {mqtt.error_string(info.rc)}")
        deadline = time.monotonic() + RESULT_PUBACK_TIMEOUT_S
        while True:
            # not cut short by a stop: a result the broker has is not sent twice
            event = await self._next_event(deadline - time.monotonic(), stop_aware=False)
            if event is None:
                raise _Lost(f"no PUBACK for a result within {RESULT_PUBACK_TIMEOUT_S:.0f} s")
            if event.client is not client:
                continue
            if isinstance(event, _Disconnected):
                raise _Lost(event.reason)
            if isinstance(event, _Incoming):
                self._backlog.append(event)
            elif isinstance(event, _Subscribed):
                self._check_subscription(event)
            elif isinstance(event, _Published) and event.mid == info.mid:
                if event.reason.is_failure:  # e.g. 0x87: the ACL does not let the kiosk write results
                    log.error(
                        "the broker refused the result on %s (%s): the centre will not see it; the broker's"
                        " ACL must let this kiosk write its own result topic",
                        self.topic_result,
                        event.reason,
                    )
                break
        client.ack(incoming.mid, incoming.qos)
        if command_id is not None and self._store is not None:
            store = self._store
            await self._db(lambda: store.acknowledged(command_id))


def _timestamp(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _uuid_or_nil(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return NIL_ID


def _claimed_body(payload: bytes) -> dict[str, Any]:
    """The JSON body of a command whose signature verified but which was refused (for the audit)."""
    try:
        length = int.from_bytes(payload[5:9], "big")
        doc = json.loads(payload[9 : 9 + length])
    except (ValueError, IndexError):
        return {}
    return doc if isinstance(doc, dict) else {}


# ----------------------------------------------------------------------------- status


def status_json(
    config: AgentConfig,
    overrides: dict[str, Override],
    *,
    health_interval_s: float,
    selftest_interval_s: float,
    connection: dict[str, Any] | None,
) -> dict[str, Any]:
    """The status document's ``remote``: what the kiosk accepts, the intervals in force and who set them."""
    r = config.remote
    return {
        "enabled": r.enabled,
        "verbs": list(r.verbs) if r.enabled else [],
        "refused_verbs": [v for v in VERBS if not r.enabled or v not in r.verbs],
        "health_interval_s": health_interval_s,
        "selftest_interval_s": selftest_interval_s,
        "overrides": {verb: o.to_json() for verb, o in sorted(overrides.items())},
        "link": connection or {"connected": False},
    }


__all__ = ["RemoteCommands", "status_json"]
