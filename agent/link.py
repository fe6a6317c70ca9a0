"""The MQTT link: status with a Last Will, retained health, and the drain of the outbox.

One ``Link`` owns the MQTT connection. Each connection attempt gets a fresh paho client,
so paho's in-memory queue never carries anything across a reconnect: the outbox is the
only durable queue, and after every (re)connect the drain re-sends every undelivered
packet in seq order, a window at a time. paho callbacks run on its network thread; they
only put events on the core's queue (``loop.call_soon_threadsafe``) and never block or
raise. A packet is in the window from its publish until the centre's signed ack:

    pending --publish, PUBACK success--> sent --verified ack "stored"/"duplicate"--> delivered
                                          sent --verified ack "rejected"--> rejected (kept)
    PUBACK failure code, or no ack within ack_timeout_s: published again (the centre is idempotent)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.ack import AckError, AckStatus, verify_ack
from agent.config import AgentConfig
from agent.keys import CentralPublicKeys
from agent.outbox import Outbox

log = logging.getLogger("ektp.link")

CONNECT_TIMEOUT_S = 10.0
STOP_PUBLISH_WAIT_S = 2.0
TICK_S = 0.5  # how often the drain looks at ack deadlines and retry times
RETRY_AFTER_REFUSAL_S = 5.0  # a PUBACK with a failure code: try that packet again after this
MQTT_OVERHEAD = 512  # fixed header, topic and user properties, generously
T = TypeVar("T")


@dataclass
class Flight:
    packet_id: str
    seq: int
    published_at: float
    mid: int
    pubacked: bool = False


@dataclass
class LinkStats:
    connected: bool = False
    reconnects: int = 0
    connection: int = 0
    last_error: str = ""
    connected_since: float | None = None
    receive_maximum: int | None = None
    maximum_packet_size: int | None = None
    in_flight: int = 0
    published: int = 0
    republished: int = 0
    refused_pubacks: int = 0
    ignored_acks: Counter[str] = field(default_factory=Counter)
    oversize: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "reconnects": self.reconnects,
            "connection": self.connection,
            "in_flight": self.in_flight,
            "published": self.published,
            "republished": self.republished,
            "refused_pubacks": self.refused_pubacks,
            "ignored_acks": sum(self.ignored_acks.values()),
            "oversize_packets": sorted(self.oversize),
            "broker_receive_maximum": self.receive_maximum,
            "broker_maximum_packet_size": self.maximum_packet_size,
            "last_error": self.last_error,
        }


# ----------------------------------------------------------------------------- events from paho's thread


@dataclass(frozen=True, slots=True)
class _Connected:
    client: mqtt.Client
    reason: ReasonCode
    properties: Properties | None


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
class _Message:
    topic: str
    payload: bytes


_Event = _Connected | _Disconnected | _Published | _Message


class Link:
    """The kiosk's MQTT link. ``run()`` until ``stop()``; never raises for network trouble."""

    def __init__(
        self,
        config: AgentConfig,
        outbox: Outbox,
        central_keys: CentralPublicKeys,
        *,
        db: Executor,
        health: Callable[[], Awaitable[dict[str, Any]]],
        connection_file: Path | None = None,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.central_keys = central_keys
        self.health = health
        self.stats = LinkStats()
        self.kiosk = config.kiosk.id
        prefix = f"{config.mqtt.topic_prefix}/{self.kiosk}"
        self.topic_status, self.topic_health = f"{prefix}/status", f"{prefix}/health"
        self.topic_enrollment, self.topic_ack = f"{prefix}/enrollment", f"{prefix}/ack"
        self._db_executor = db
        self._connection_file = connection_file or config.kiosk.data_dir / "mqtt-connection"
        self._events: asyncio.Queue[_Event] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._health_now = asyncio.Event()
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flights: dict[str, Flight] = {}
        self._mids: dict[int, str] = {}
        self._retry: dict[str, float] = {}  # packet id -> monotonic time it may go again

    # ------------------------------------------------------------------------- public surface

    def wake(self) -> None:
        """New packets were committed or a sync was asked for: look at the outbox now."""
        self._wake.set()

    def health_changed(self) -> None:
        """Publish health now rather than at the next interval."""
        self._health_now.set()

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        attempt = 0
        while not self._stopping.is_set():
            client = await self._connect()
            if client is not None:
                attempt = 0
                try:
                    await self._session(client)
                finally:
                    await self._teardown(client)
            if self._stopping.is_set():
                break
            attempt += 1
            await self._sleep_or_stop(self._backoff(attempt))

    # ------------------------------------------------------------------------- connection

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter, so that a fleet does not reconnect in lockstep."""
        cap = min(self.config.mqtt.reconnect_max_s, self.config.mqtt.reconnect_min_s * 2 ** min(attempt, 20))
        return random.uniform(self.config.mqtt.reconnect_min_s / 2, cap)

    def _next_connection_number(self) -> int:
        try:
            n = int(self._connection_file.read_text().strip() or 0) + 1
        except (FileNotFoundError, ValueError):
            n = 1
        try:
            self._connection_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._connection_file.with_suffix(".tmp")
            tmp.write_text(str(n))
            tmp.replace(self._connection_file)
        except OSError as exc:  # a read-only or full disk must not stop the link
            log.warning("cannot record the connection counter in %s: %s", self._connection_file, exc)
        return n

    def _status_payload(self, state: str, connection: int) -> bytes:
        return json.dumps(
            {"state": state, "kiosk_id": self.kiosk, "connection": connection, "ts": _now_rfc3339()}
        ).encode()

    def _new_client(self, connection: int) -> mqtt.Client:
        m = self.config.mqtt
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"ektp-agent-{self.kiosk}",
            protocol=mqtt.MQTTv5,
        )
        client.suppress_exceptions = True
        client.max_inflight_messages_set(m.window + 8)  # the window plus status and health
        client.max_queued_messages_set(0)
        client.will_set(self.topic_status, self._status_payload("offline", connection), qos=1, retain=True)
        if m.tls:
            client.tls_set(
                ca_certs=str(m.ca_file) if m.ca_file else None,
                certfile=str(m.cert_file) if m.cert_file else None,
                keyfile=str(m.key_file) if m.key_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if m.username:
            password = m.password_file.read_text().strip() if m.password_file else None
            client.username_pw_set(m.username, password)
        post = self._post

        def on_connect(c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, props: Properties | None) -> None:
            post(_Connected(c, rc, props))

        def on_disconnect(c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
            post(_Disconnected(c, str(rc)))

        def on_publish(c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
            post(_Published(c, mid, rc))

        def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            post(_Message(msg.topic, bytes(msg.payload)))

        client.on_connect, client.on_disconnect = on_connect, on_disconnect
        client.on_publish, client.on_message = on_publish, on_message
        return client

    def _post(self, event: _Event) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed under us at shutdown
                loop.call_soon_threadsafe(self._events.put_nowait, event)

    async def _connect(self) -> mqtt.Client | None:
        connection = self._next_connection_number()
        client = self._new_client(connection)
        m = self.config.mqtt
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0
        try:
            await asyncio.to_thread(
                client.connect, m.host, m.port, m.keepalive_s, clean_start=True, properties=props
            )
        except (OSError, ValueError, ssl.SSLError) as exc:
            self._note_error(f"cannot connect to {m.host}:{m.port}: {exc}")
            return None
        client.loop_start()
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while True:
            try:
                event = await asyncio.wait_for(self._events.get(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                self._note_error(f"no CONNACK from {m.host}:{m.port} within {CONNECT_TIMEOUT_S:.0f} s")
                await self._teardown(client)
                return None
            if isinstance(event, _Connected) and event.client is client:
                if event.reason.is_failure:
                    self._note_error(f"broker {m.host}:{m.port} refused the connection: {event.reason}")
                    await self._teardown(client)
                    return None
                self._on_connected(event, connection)
                return client
            if isinstance(event, _Disconnected) and event.client is client:
                self._note_error(f"connection to {m.host}:{m.port} closed before CONNACK: {event.reason}")
                await self._teardown(client)
                return None

    def _on_connected(self, event: _Connected, connection: int) -> None:
        props = event.properties
        receive_max = getattr(props, "ReceiveMaximum", None) if props is not None else None
        max_packet = getattr(props, "MaximumPacketSize", None) if props is not None else None
        s = self.stats
        if s.connection:
            s.reconnects += 1
        s.connected, s.connection, s.connected_since = True, connection, time.monotonic()
        s.receive_maximum, s.maximum_packet_size, s.last_error = receive_max, max_packet, ""
        log.info(
            "connected to %s:%d (connection %d, broker receive maximum %s, maximum packet size %s)",
            self.config.mqtt.host,
            self.config.mqtt.port,
            connection,
            receive_max or "unlimited",
            max_packet or "unlimited",
        )

    def _note_error(self, message: str) -> None:
        if message != self.stats.last_error:
            log.warning("%s; retrying with backoff", message)
        self.stats.last_error = message

    async def _teardown(self, client: mqtt.Client) -> None:
        with contextlib.suppress(Exception):
            client.disconnect()
        await asyncio.to_thread(client.loop_stop)
        while not self._events.empty():  # late events of the old client (they hold it alive)
            self._events.get_nowait()
        self.stats.connected = False
        self.stats.connected_since = None
        self._flights.clear()
        self._mids.clear()
        self._retry.clear()
        self.stats.in_flight = 0

    async def _sleep_or_stop(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # ------------------------------------------------------------------------- one connected session

    async def _session(self, client: mqtt.Client) -> None:
        self._client = client
        client.subscribe(self.topic_ack, qos=1)
        client.publish(
            self.topic_status, self._status_payload("online", self.stats.connection), qos=1, retain=True
        )
        await self._publish_health(client)
        health_task = asyncio.create_task(self._health_loop(client), name="link-health")
        cursor = 0  # every undelivered packet is (re)sent after a (re)connect
        exhausted = False
        try:
            while not self._stopping.is_set():
                if self._wake.is_set():
                    self._wake.clear()
                    exhausted = False
                cursor, exhausted = await self._fill_window(client, cursor, exhausted)
                try:
                    event = await asyncio.wait_for(self._next_event_or_wake(), TICK_S)
                except TimeoutError:
                    event = None
                if isinstance(event, _Disconnected) and event.client is client:
                    self._note_error(f"link lost: {event.reason}")
                    return
                if event is not None:
                    await self._handle(client, event)
                self._expire_flights()
            await self._goodbye(client)
        finally:
            health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await health_task
            self._client = None

    async def _next_event_or_wake(self) -> _Event | None:
        get = asyncio.ensure_future(self._events.get())
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            done, _ = await asyncio.wait({get, wake}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()
            if not get.done():
                get.cancel()
        if get in done and not get.cancelled():
            return get.result()
        return None

    def _window(self) -> int:
        receive_max = self.stats.receive_maximum or 65535
        return max(1, min(self.config.mqtt.window, receive_max))

    async def _fill_window(self, client: mqtt.Client, cursor: int, exhausted: bool) -> tuple[int, bool]:
        room = self._window() - len(self._flights)
        now = time.monotonic()
        due = [pid for pid, at in self._retry.items() if at <= now][: max(room, 0)]
        for packet_id in due:
            del self._retry[packet_id]
            loaded = await self._db(self._load, packet_id)
            if loaded is not None:  # None: delivered or rejected meanwhile
                self._publish(client, packet_id, loaded[0], loaded[1], again=True)
                room -= 1
        if room <= 0 or exhausted:
            return cursor, exhausted
        batch = await self._db(lambda: self.outbox.next_batch(cursor, room, include_sent=True))
        for item in batch:
            cursor = max(cursor, item.seq)
            if item.packet_id in self._flights or item.packet_id in self._retry:
                continue
            if self._too_big(item.packet_id, len(item.data)):
                continue
            self._publish(client, item.packet_id, item.seq, item.data)
        return cursor, len(batch) < room

    def _too_big(self, packet_id: str, size: int) -> bool:
        limit = self.stats.maximum_packet_size
        if limit is None or size + MQTT_OVERHEAD <= limit:
            return False
        if packet_id not in self.stats.oversize:
            self.stats.oversize.add(packet_id)
            log.error(
                "packet %s is %d bytes, over the broker's maximum packet size %d: kept in the outbox, not sent; "
                "raise the broker's message_size_limit or export the packet (`ektp-agent export`)",
                packet_id,
                size,
                limit,
            )
            self.health_changed()
        return True

    def _publish(
        self, client: mqtt.Client, packet_id: str, seq: int, data: bytes, *, again: bool = False
    ) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.UserProperty = [("packet-id", packet_id), ("seq", str(seq)), ("kiosk", self.kiosk)]
        info = client.publish(self.topic_enrollment, data, qos=1, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self._retry[packet_id] = time.monotonic() + RETRY_AFTER_REFUSAL_S
            return
        self._flights[packet_id] = Flight(packet_id, seq, time.monotonic(), info.mid)
        self._mids[info.mid] = packet_id
        self.stats.published += 1
        self.stats.republished += int(again)
        self.stats.in_flight = len(self._flights)

    async def _handle(self, client: mqtt.Client, event: _Event) -> None:
        if isinstance(event, _Published) and event.client is client:
            packet_id = self._mids.pop(event.mid, None)
            flight = self._flights.get(packet_id) if packet_id else None
            if flight is None or packet_id is None:
                return  # status/health, or a packet already acked by the centre
            if event.reason.is_failure:
                # MQTT 5: the broker will not retransmit; nobody has the packet. Try again later.
                self.stats.refused_pubacks += 1
                log.warning(
                    "broker refused packet %s (seq %d): %s; will retry", packet_id, flight.seq, event.reason
                )
                del self._flights[packet_id]
                self._retry[packet_id] = time.monotonic() + RETRY_AFTER_REFUSAL_S
                self.stats.in_flight = len(self._flights)
                return
            flight.pubacked = True
            await self._db(self.outbox.mark_sent, [packet_id])
        elif isinstance(event, _Message) and event.topic == self.topic_ack:
            await self._on_ack(event.payload)

    async def _on_ack(self, payload: bytes) -> None:
        try:
            ack = verify_ack(payload, key=self.central_keys.signing, kiosk=self.kiosk)
        except AckError as exc:
            self.stats.ignored_acks[exc.reason] += 1
            n = self.stats.ignored_acks[exc.reason]
            if n == 1 or n % 100 == 0:
                log.warning("ignored a message on %s (%s, %d so far): %s", self.topic_ack, exc.reason, n, exc)
            return
        delivered = [r.packet_id for r in ack.results if r.status.delivered]
        if delivered:
            await self._db(self.outbox.mark_delivered, delivered)
        for r in ack.results:
            if r.status is AckStatus.REJECTED:
                log.error("the centre rejected packet %s: %s (kept on the kiosk)", r.packet_id, r.reason)
                await self._db(self.outbox.mark_rejected, r.packet_id, r.reason)
        for r in ack.results:
            flight = self._flights.pop(r.packet_id, None)
            if flight is not None:
                self._mids.pop(flight.mid, None)
            self._retry.pop(r.packet_id, None)
        self.stats.in_flight = len(self._flights)

    def _expire_flights(self) -> None:
        """Packets published but not acked within ack_timeout_s go again (the centre is idempotent)."""
        limit = time.monotonic() - self.config.mqtt.ack_timeout_s
        for packet_id, flight in list(self._flights.items()):
            if flight.published_at < limit:
                del self._flights[packet_id]
                self._mids.pop(flight.mid, None)
                self._retry[packet_id] = 0.0
        self.stats.in_flight = len(self._flights)

    async def _health_loop(self, client: mqtt.Client) -> None:
        interval = self.config.health.interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._health_now.wait(), interval)
            self._health_now.clear()
            await self._publish_health(client)

    async def _publish_health(self, client: mqtt.Client) -> None:
        try:
            doc = await self.health()
        except Exception:  # health must never take the link down
            log.exception("building the health snapshot failed")
            return
        client.publish(self.topic_health, json.dumps(doc).encode(), qos=1, retain=True)

    async def _goodbye(self, client: mqtt.Client) -> None:
        """A clean stop: the Will is not sent on a clean disconnect, so say offline ourselves."""
        info = client.publish(
            self.topic_status, self._status_payload("offline", self.stats.connection), qos=1, retain=True
        )
        with contextlib.suppress(Exception):
            await asyncio.to_thread(info.wait_for_publish, STOP_PUBLISH_WAIT_S)

    def _load(self, packet_id: str) -> tuple[int, bytes] | None:
        """(seq, bytes) of a packet still awaiting delivery; runs on the outbox's thread."""
        info = self.outbox.info(packet_id)
        if info is None or info.state not in ("pending", "sent"):
            return None
        self.outbox.requeue([packet_id])  # counts the attempt; the publish moves it to sent again
        data = self.outbox.get(packet_id)
        return None if data is None else (info.seq, data)

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_executor, lambda: fn(*args))


def _now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
