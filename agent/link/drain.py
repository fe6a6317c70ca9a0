"""The drain: one ``Link`` owns the MQTT connection, feeds the transfer window from the
outbox, applies the centre's answers and publishes health (the package docstring says how)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import AgentConfig
from agent.link.session import (
    CONNECT_TIMEOUT_S,
    MAX_INCOMING_PACKET,
    Connected,
    Disconnected,
    Event,
    Message,
    Published,
    backoff,
    new_client,
    next_connection_number,
    status_payload,
)
from agent.link.stats import LinkStats
from agent.link.transfer import Outcome, Sent, TransferWindow
from agent.outbox import Outbox
from wire.ack import AckError, AckResult, verify_ack
from wire.chunk import HEAD_LEN, Chunk, packet_sha256
from wire.keys import CentralPublicKeys

log = logging.getLogger("ektp.link")

STOP_PUBLISH_WAIT_S = 2.0
TICK_S = 0.5  # how often the drain looks at ack deadlines and retry times
OUTBOX_RETRY_S = 5.0  # an outbox call failed: the drain tries again after this
STABLE_SESSION_S = 10.0  # a connection that lasted this long (or moved bytes) resets the reconnect backoff
MQTT_OVERHEAD = 512  # fixed header, topic and user properties, generously
NO_MATCHING_SUBSCRIBERS = 0x10  # PUBACK reason: accepted, but nobody subscribes (no centre running)
T = TypeVar("T")


class _OutboxFailed(Exception):
    """An outbox call of the drain failed; already logged and shown in health."""


class Link:
    """The kiosk's MQTT link. ``run()`` until ``stop()``; never raises for network or outbox trouble."""

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
        # read at every wait: the service sets it (the centre's health-interval) without a restart,
        # then calls health_changed() so that the new interval counts from now
        self.health_interval_s = config.health.interval_s
        self.stats = LinkStats()
        self.kiosk = config.kiosk.id
        prefix = f"{config.mqtt.topic_prefix}/{self.kiosk}"
        self.topic_status, self.topic_health = f"{prefix}/status", f"{prefix}/health"
        self.topic_enrollment, self.topic_ack = f"{prefix}/enrollment", f"{prefix}/ack"
        self._db_executor = db
        self._connection_file = connection_file or config.kiosk.data_dir / "mqtt-connection"
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._health_now = asyncio.Event()
        self._slot_freed = asyncio.Event()  # a PUBACK arrived: room under the broker's Receive Maximum
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connect_now = asyncio.Event()  # a sync was asked for: cut the reconnect backoff short
        self._rescan = False  # a sync was asked for: read the outbox from its start again
        self.window = TransferWindow(
            chunk_bytes=config.mqtt.chunk_bytes,
            max_packets=config.mqtt.window,
            stall_s=config.mqtt.ack_timeout_s,
        )
        self._chunks: dict[int, Sent] = {}  # mid of a chunk's publish -> the chunk
        self._marked_sent: set[str] = set()  # packets whose first chunk was PUBACKed (pending -> sent)
        self._awaiting: dict[int, str] = {}  # mid of every QoS 1 publish without its PUBACK -> what it is
        # Outcomes written to the outbox at the drain's next quiet moment, one transaction each,
        # so the outbox's fsyncs overlap the centre's commit instead of stalling the window:
        self._sent_unwritten: list[str] = []  # PUBACKed with success
        self._delivered_unwritten: list[str] = []  # in a verified ack as stored or duplicate
        self._outbox_errors: dict[str, str] = {}  # failing outbox action -> its message
        self._refused_logged: set[str] = set()

    # ------------------------------------------------------------------------- public surface

    def wake(self) -> None:
        """New packets were committed or a sync was asked for: look at the outbox now."""
        self._wake.set()

    def sync_now(self) -> None:
        """Someone asked for a sync: look at the outbox now and, if the link is down, try it now."""
        self._rescan = True  # resubmitted packets lie behind the drain's cursor
        self._wake.set()
        self._connect_now.set()

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
            try:
                client = await self._connect()
                if client is not None:
                    connected, confirmed = time.monotonic(), self.window.confirmed_total
                    try:
                        await self._session(client)
                    finally:
                        await self._teardown(client)
                    # a session that lasted, or that moved bytes to the centre, was a working
                    # link: on a link cut every few seconds the backoff must not climb
                    if (
                        time.monotonic() - connected >= STABLE_SESSION_S
                        or self.window.confirmed_total > confirmed
                    ):
                        attempt = 0
            except Exception as exc:  # a bug must not end the drain: log it loudly and start over
                log.exception("the MQTT link failed; reconnecting")
                self.stats.last_error = f"link failure: {type(exc).__name__}: {exc}"
            if self._stopping.is_set():
                break
            attempt += 1
            self._connect_now.clear()
            await self._sleep_or_stop(backoff(self.config.mqtt, attempt), self._connect_now)

    # ------------------------------------------------------------------------- connection

    def _post(self, event: Event) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed under us at shutdown
                loop.call_soon_threadsafe(self._events.put_nowait, event)

    async def _connect(self) -> mqtt.Client | None:
        """A connected client, or None (the reason noted) after a failure or on stop."""
        m = self.config.mqtt
        connection = next_connection_number(self._connection_file)
        try:
            client = new_client(self.config, self.topic_status, connection, self._post)
        except (OSError, ValueError, ssl.SSLError) as exc:
            self._note_error(f"cannot set up the MQTT client (TLS files, password file): {exc}")
            return None
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0
        props.MaximumPacketSize = MAX_INCOMING_PACKET
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
            event = await self._next_event(deadline - time.monotonic(), self._stopping)
            if self._stopping.is_set():
                await self._teardown(client)
                return None
            if event is None:
                self._note_error(f"no CONNACK from {m.host}:{m.port} within {CONNECT_TIMEOUT_S:.0f} s")
                await self._teardown(client)
                return None
            if isinstance(event, Connected) and event.client is client:
                if event.reason.is_failure:
                    self._note_error(f"broker {m.host}:{m.port} refused the connection: {event.reason}")
                    await self._teardown(client)
                    return None
                self._on_connected(event, connection)
                return client
            if isinstance(event, Disconnected) and event.client is client:
                self._note_error(f"connection to {m.host}:{m.port} closed before CONNACK: {event.reason}")
                await self._teardown(client)
                return None

    def _on_connected(self, event: Connected, connection: int) -> None:
        props = event.properties
        receive_max = getattr(props, "ReceiveMaximum", None) if props is not None else None
        max_packet = getattr(props, "MaximumPacketSize", None) if props is not None else None
        s = self.stats
        if s.connection:
            s.reconnects += 1
        s.connected, s.connection, s.connected_since = True, connection, time.monotonic()
        s.receive_maximum, s.maximum_packet_size, s.last_error = receive_max, max_packet, ""
        self.window.max_message = (
            None if max_packet is None else max(1024, max_packet - MQTT_OVERHEAD - HEAD_LEN)
        )
        self._outbox_errors.clear()
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
        # paho's thread hands events over with call_soon_threadsafe: those it scheduled before it
        # stopped run at the next turn of the loop, so yield once before dropping the late events
        # of the old client (each holds it, and its socket pair, alive)
        await asyncio.sleep(0)
        while not self._events.empty():
            self._events.get_nowait()
        self.stats.connected = False
        self.stats.connected_since = None
        self.window.connection_lost()
        self._chunks.clear()
        self._awaiting.clear()
        self.stats.awaiting_puback = 0
        self._note_window()

    async def _sleep_or_stop(self, seconds: float, cut_short: asyncio.Event | None = None) -> None:
        waits = [asyncio.ensure_future(self._stopping.wait())]
        if cut_short is not None:
            waits.append(asyncio.ensure_future(cut_short.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _next_event(self, timeout: float, wake: asyncio.Event) -> Event | None:
        """The next event from paho, or None when ``wake`` is set or ``timeout`` passed."""
        get = asyncio.ensure_future(self._events.get())
        woken = asyncio.ensure_future(wake.wait())
        try:
            done, _ = await asyncio.wait(
                {get, woken}, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            woken.cancel()
            if not get.done():
                get.cancel()  # an event it was about to take stays in the queue
        if get in done and not get.cancelled():
            return get.result()
        return None

    # ------------------------------------------------------------------------- one connected session

    async def _session(self, client: mqtt.Client) -> None:
        self._client = client
        client.subscribe(self.topic_ack, qos=1)
        self._publish_status(client, "online")
        self._health_now.set()  # the health task publishes at once
        health_task = asyncio.create_task(self._health_loop(client), name="link-health")
        cursor = 0  # every undelivered packet is (re)sent after a (re)connect
        exhausted = False
        paused_until = 0.0  # after an outbox failure, the drain waits before it reads again
        try:
            while not self._stopping.is_set():
                if self._wake.is_set():
                    self._wake.clear()
                    exhausted = False
                    if self._rescan:
                        self._rescan, cursor = False, 0
                if time.monotonic() >= paused_until:
                    try:
                        cursor, exhausted = await self._fill_window(client, cursor, exhausted)
                        if self._events.empty():  # the window is on the wire: now the bookkeeping
                            await self._write_outcomes()
                    except Exception as exc:
                        self._drain_failed("filling the window", exc)
                        paused_until = time.monotonic() + OUTBOX_RETRY_S
                event = await self._next_event(TICK_S, self._wake)
                if isinstance(event, Disconnected) and event.client is client:
                    self._note_error(f"link lost: {event.reason}")
                    return
                if event is not None:
                    try:
                        await self._handle(client, event)
                    except Exception as exc:
                        self._drain_failed("handling a broker event", exc)
                        paused_until = time.monotonic() + OUTBOX_RETRY_S
                try:
                    await self._expire_flights()
                except Exception as exc:  # the probes go all the same; only the attempt count is lost
                    self._drain_failed("counting attempts of stalled packets", exc)
            await self._goodbye(client)
        finally:
            with contextlib.suppress(_OutboxFailed):  # else they are written in the next session
                await self._write_outcomes()
            health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await health_task
            self._client = None

    def _drain_failed(self, doing: str, exc: Exception) -> None:
        if not isinstance(exc, _OutboxFailed):  # an outbox failure is logged where it happened
            log.exception("the drain failed while %s; trying again in %.0f s", doing, OUTBOX_RETRY_S)
            self.stats.last_error = f"drain failure while {doing}: {type(exc).__name__}: {exc}"
            self.health_changed()

    def _receive_maximum(self) -> int:
        return self.stats.receive_maximum or 65535

    async def _fill_window(self, client: mqtt.Client, cursor: int, exhausted: bool) -> tuple[int, bool]:
        """Publish the chunks that are due, reading packets from the outbox as the window wants them;
        returns (cursor, exhausted). Room under the broker's Receive Maximum is looked at before
        every publish: the health task may take a slot meanwhile."""
        window = self.window
        while len(self._awaiting) < self._receive_maximum():
            chunk = window.next_chunk()
            if chunk is not None:
                self._publish(client, chunk)
                continue
            wanted = 0 if exhausted else window.packets_wanted()
            if wanted <= 0:
                break
            batch = await self._db(
                "read the next packets",
                functools.partial(self.outbox.next_batch, include_sent=True),
                cursor,
                wanted,
            )
            for item in batch:
                cursor = max(cursor, item.seq)
                if item.packet_id in self._delivered_unwritten:
                    continue  # a verified ack freed it; the outbox does not know yet
                if item.packet_id not in window.transfers:
                    if item.state == "sent":
                        self._marked_sent.add(item.packet_id)
                    window.add(
                        item.packet_id, item.seq, item.data, resume=item.state == "sent" or item.attempts > 0
                    )
            if len(batch) < wanted:
                exhausted = True
            if not batch:
                break
        self._note_window()
        return cursor, exhausted

    def _note_window(self) -> None:
        s, w = self.stats, self.window
        s.in_flight = len(w.transfers)
        s.in_flight_peak = max(s.in_flight_peak, s.in_flight)
        s.in_flight_bytes = w.in_flight()
        s.rate_bytes_per_s = round(w.rate)
        s.chunk_bytes = w.chunk_size()
        s.damaged, s.probes = w.damaged, w.probes

    def _track(self, info: mqtt.MQTTMessageInfo, what: str) -> bool:
        """Count a QoS 1 publish against the broker's Receive Maximum until its PUBACK."""
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        self._awaiting[info.mid] = what
        s = self.stats
        s.awaiting_puback = len(self._awaiting)
        s.awaiting_puback_peak = max(s.awaiting_puback_peak, s.awaiting_puback)
        return True

    def _publish(self, client: mqtt.Client, chunk: Chunk) -> None:
        t = self.window.transfers[chunk.packet_id]
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.UserProperty = [
            ("packet-id", chunk.packet_id),
            ("seq", str(t.seq)),
            ("kiosk", self.kiosk),
            ("offset", str(chunk.offset)),
            ("total", str(chunk.total)),
        ]
        again = chunk.offset < t.high_water
        sent = self.window.published(chunk)
        info = client.publish(self.topic_enrollment, chunk.to_bytes(), qos=1, properties=props)
        if not self._track(info, "enrollment"):  # paho refused it (connection going): try again later
            self.window.refused(sent, no_subscribers=False)
            return
        self._chunks[info.mid] = sent
        s = self.stats
        s.published += 1
        s.republished += int(again)

    def _publish_status(self, client: mqtt.Client, state: str) -> mqtt.MQTTMessageInfo:
        info = client.publish(
            self.topic_status, status_payload(self.kiosk, state, self.stats.connection), qos=1, retain=True
        )
        self._track(info, "status")
        return info

    async def _handle(self, client: mqtt.Client, event: Event) -> None:
        if isinstance(event, Published) and event.client is client:
            what = self._awaiting.pop(event.mid, None)
            self.stats.awaiting_puback = len(self._awaiting)
            self._slot_freed.set()
            sent = self._chunks.pop(event.mid, None)
            if sent is None:
                if (
                    what in ("status", "health")
                    and event.reason.is_failure
                    and what not in self._refused_logged
                ):
                    self._refused_logged.add(what)
                    log.warning(
                        "the broker refused the kiosk's %s message: %s (check its ACL)", what, event.reason
                    )
                return
            no_subscribers = event.reason.value == NO_MATCHING_SUBSCRIBERS
            self._note_puback(event, no_subscribers)
            if event.reason.is_failure or no_subscribers:
                # MQTT 5: the broker will not retransmit; nobody has the chunk. 0x10: no centre
                # consumes yet (one is restarting): try again soon, not after the ack timeout.
                self.stats.refused_pubacks += 1
                self.window.refused(sent, no_subscribers=no_subscribers)
                key = f"refused-{event.reason.value}"
                if key not in self._refused_logged:
                    self._refused_logged.add(key)
                    log.warning(
                        "the broker refused a chunk of packet %s: %s; will retry",
                        sent.packet_id,
                        event.reason,
                    )
                return
            if sent.packet_id not in self._marked_sent:  # a probe too: the packet is on its way again
                self._marked_sent.add(sent.packet_id)
                self._sent_unwritten.append(sent.packet_id)
        elif isinstance(event, Message) and event.topic == self.topic_ack:
            await self._on_ack(event.payload)

    def _note_puback(self, event: Published, no_subscribers: bool) -> None:
        """Count the broker's answers to enrollment publishes in a row, as status judges them."""
        s = self.stats
        if event.reason.is_failure:
            if not s.refused_in_a_row:
                self.health_changed()
            s.refused_in_a_row += 1
            s.last_refused, s.refused_topic = str(event.reason), self.topic_enrollment
            return
        if s.refused_in_a_row:
            log.info("the broker takes the kiosk's enrollments again")
            self.health_changed()
        s.refused_in_a_row = 0
        s.unconsumed_in_a_row = s.unconsumed_in_a_row + 1 if no_subscribers else 0

    async def _on_ack(self, payload: bytes) -> None:
        try:
            ack = verify_ack(payload, key=self.central_keys.signing, kiosk=self.kiosk)
        except AckError as exc:
            self._ignore_ack(exc.reason, f"{exc}")
            return
        # The centre holds delivered packets durably: their room in the window is free at once and
        # the next chunks go out before the outbox writes the outcome down (_write_outcomes,
        # after the refill). A crash before that write costs a probe that the centre answers
        # as a duplicate; nothing is deleted on the kiosk before the write.
        for r in ack.results:
            outcome, t = self.window.apply(r)
            if outcome is Outcome.OTHER_BYTES:
                self._ignore_ack(
                    "other-bytes", f"ack for packet {r.packet_id} names other bytes than the kiosk holds"
                )
            elif t is None and (r.status.delivered or r.status.refused):
                outcome = await self._outcome_outside_window(r)
            if outcome is Outcome.DELIVERED:
                self._marked_sent.discard(r.packet_id)
                self._delivered_unwritten.append(r.packet_id)
            elif outcome is Outcome.REFUSED:
                self._marked_sent.discard(r.packet_id)
                log.error(
                    "the centre refused packet %s (%s): %s (kept on the kiosk)",
                    r.packet_id,
                    r.status,
                    r.reason,
                )
                await self._db(
                    "mark a packet rejected",
                    self.outbox.mark_rejected,
                    r.packet_id,
                    f"{r.status}: {r.reason}",
                )
            elif outcome is Outcome.DAMAGED:
                assert t is not None
                log.warning(
                    "packet %s reached the centre damaged (%d times so far): %s; sending it again",
                    r.packet_id,
                    t.damaged,
                    r.reason,
                )
                self.health_changed()
                self._marked_sent.discard(r.packet_id)
                await self._db("count a new attempt", self.outbox.requeue, [r.packet_id])
            elif outcome is Outcome.GAVE_UP:
                assert t is not None
                reason = (
                    f"damaged in transit {t.damaged} times (last: {r.reason}); check the link and the outbox"
                )
                log.error("packet %s: %s; parked as rejected", r.packet_id, reason)
                await self._db("mark a packet rejected", self.outbox.mark_rejected, r.packet_id, reason)
        self._note_window()

    def _ignore_ack(self, reason: str, message: str, *, hostile: bool = True) -> None:
        """Count an ack (or one result of it) that changes nothing; ``hostile=False``: one that an
        honest centre may send too (a second answer about a packet already finished)."""
        self.stats.ignored_acks[reason] += 1
        n = self.stats.ignored_acks[reason]
        if n == 1 or n % 100 == 0:
            level = logging.WARNING if hostile else logging.INFO
            log.log(level, "ignored a message on %s (%s, %d so far): %s", self.topic_ack, reason, n, message)

    async def _outcome_outside_window(self, r: AckResult) -> Outcome:
        """A final answer about a packet not in the window (e.g. after a restart): it counts only
        if it names the exact bytes the outbox holds under that id and the packet still awaits
        its answer. A second answer about a finished packet (a replay, or the centre answering
        a re-sent chunk) is counted as ``replayed``, whether or not the first is written yet."""
        if r.packet_id in self._delivered_unwritten:
            self._ignore_ack("replayed", f"a second final answer about packet {r.packet_id}", hostile=False)
            return Outcome.NONE
        data = await self._db("read a packet to check an ack", self.outbox.get, r.packet_id)
        info = await self._db("read a packet's state", self.outbox.info, r.packet_id)
        if info is None:
            self._ignore_ack("unknown-packet", f"ack names packet {r.packet_id}, which this kiosk never held")
            return Outcome.NONE
        if data is not None and packet_sha256(data) != r.sha256:
            self._ignore_ack(
                "other-bytes", f"ack for packet {r.packet_id} names other bytes than the kiosk holds"
            )
            return Outcome.NONE
        if data is None or info.state not in ("pending", "sent"):
            self._ignore_ack(
                "replayed", f"a final answer about packet {r.packet_id}, already {info.state}", hostile=False
            )
            return Outcome.NONE
        return Outcome.DELIVERED if r.status.delivered else Outcome.REFUSED

    async def _write_outcomes(self) -> None:
        """Write the PUBACKs and acks gathered since the last call, one transaction each.

        :raises _OutboxFailed: a write failed; its ids are kept for the next call
        """
        if self._sent_unwritten:
            sent, self._sent_unwritten = self._sent_unwritten, []
            try:
                await self._db("mark packets sent", self.outbox.mark_sent, sent)
            except _OutboxFailed:
                self._sent_unwritten[:0] = sent
                raise
        if self._delivered_unwritten:
            delivered, self._delivered_unwritten = self._delivered_unwritten, []
            try:
                await self._db("mark packets delivered", self.outbox.mark_delivered, delivered)
            except _OutboxFailed:
                self._delivered_unwritten[:0] = delivered
                raise

    async def _expire_flights(self) -> None:
        """Transfers with no answer for ack_timeout_s are probed (the centre says what it holds);
        each such resend counts as an attempt in the outbox."""
        stalled = self.window.stalled()
        for t in stalled:
            log.info(
                "no answer about packet %s for %.0f s: asking the centre what it holds",
                t.packet_id,
                self.window.stall_s,
            )
            self._marked_sent.discard(t.packet_id)  # requeue makes it pending; its next PUBACK marks it sent
        if stalled:
            await self._db("count a new attempt", self.outbox.requeue, [t.packet_id for t in stalled])

    # ------------------------------------------------------------------------- health and goodbye

    async def _health_loop(self, client: mqtt.Client) -> None:
        """Health at once (session start, a change) and every interval; nothing here ends the loop."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._health_now.wait(), self.health_interval_s)
            self._health_now.clear()
            try:
                await self._publish_health(client)
            except Exception:
                log.exception("publishing health failed; trying again at the next interval")

    async def _publish_health(self, client: mqtt.Client) -> None:
        payload = await self._health_payload()
        if payload is None:
            return
        limit = self.stats.maximum_packet_size
        if (
            limit is not None and len(payload) + len(self.topic_health) + 16 > limit
        ):  # header, topic, packet id
            if "health-too-big" not in self._refused_logged:
                self._refused_logged.add("health-too-big")
                log.error(
                    "the health snapshot (%d bytes) is over the broker's maximum packet size %s: not published",
                    len(payload),
                    self.stats.maximum_packet_size,
                )
            return
        while len(self._awaiting) >= self._receive_maximum():  # keep under the broker's Receive Maximum
            self._slot_freed.clear()
            await self._slot_freed.wait()
        self._track(client.publish(self.topic_health, payload, qos=1, retain=True), "health")

    async def _health_payload(self) -> bytes | None:
        """The snapshot as JSON, None if it cannot be built (logged; health never takes the link down)."""
        try:
            return json.dumps(await self.health()).encode()
        except Exception:
            log.exception("building the health snapshot failed")
            return None

    async def _goodbye(self, client: mqtt.Client) -> None:
        """A clean stop: the Will is not sent on a clean disconnect, so say offline ourselves.

        This last publish may go one over the broker's Receive Maximum; a broker that
        enforces it closes the connection, and then the Will says offline just the same.
        """
        info = self._publish_status(client, "offline")
        with contextlib.suppress(Exception):
            await asyncio.to_thread(info.wait_for_publish, STOP_PUBLISH_WAIT_S)

    # ------------------------------------------------------------------------- the outbox

    async def _db(self, action: str, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the outbox's thread. :raises _OutboxFailed: it raised (logged, shown in health)"""
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._db_executor, lambda: fn(*args))
        except Exception as exc:
            message = f"outbox: cannot {action}: {type(exc).__name__}: {exc}"
            self.stats.outbox_errors += 1
            if self._outbox_errors.get(action) != message:
                log.error("%s; the drain goes on and tries again", message, exc_info=exc)
                self.health_changed()
            self._outbox_errors[action] = message
            self.stats.last_error = message
            raise _OutboxFailed(message) from exc
        if self._outbox_errors.pop(action, None) is not None:
            log.info("outbox: %s works again", action)
            remaining = list(self._outbox_errors.values())
            self.stats.last_error = remaining[-1] if remaining else ""
            self.health_changed()
        return result
