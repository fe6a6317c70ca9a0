"""The centre's MQTT side: consume enrollments, store them, acknowledge them; track the fleet.

Enrollments arrive as chunks (wire.chunk) on a shared subscription
(``$share/{group}/{prefix}/+/enrollment``) so that several consumers split the load.
paho's network thread only queues messages; one worker thread owns the store and handles
them in batches: the chunks of a batch are kept durably in one transaction, a packet
whose chunks are all there (or that came whole) is authenticated and stored (group
commit), one signed ack per kiosk answers every chunk (``partial`` with the bytes held,
or the packet's final status, each naming the packet's SHA-256), and only then is each
message PUBACKed (``manual_ack``), so a crash before the commit makes the broker or the
kiosk send it again. A probe chunk is answered from the store alone. Status and health
use plain subscriptions (MQTT 5 sends no retained messages to shared subscriptions, and
every consumer should see the fleet); they wait in a queue of their own and are written
many to a transaction (10,000 kiosks every 30 s are 333 documents a second), at least
every FLEET_FLUSH_S, between the enrollment batches.

Results of remote commands (``{prefix}/+/result``, a plain subscription: every consumer
stores them, once each by their bytes) are verified with the kiosk's registered keys and
stored, so a result that comes after `kiosk cmd` stopped waiting is kept all the same; one
that does not verify is counted and logged, never stored as the kiosk's.

A PUBACK goes only on the connection that delivered the message: packet ids belong to
one connection, and after a reconnect the same id names another message. A store that
fails is tried again with backoff (nothing is PUBACKed or acked until it works); the
consumer never dies of it, and the kiosks send again whatever is not acked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from central.commands import verified_result
from central.config import CentralConfig, CentralMqtt
from central.ingest import Claim, Ingestor
from central.keyring import CentralKeyring, as_keyring
from central.metrics_hook import MetricsHook, no_metrics
from central.store import CentralStore, StoreError, StoreInputError
from wire.ack import AckResult, AckStatus, sign_ack
from wire.chunk import Chunk, ChunkError, parse_chunk
from wire.command import CommandError
from wire.keys import CentralPrivateKeys

log = logging.getLogger("ektp.central")

# Messages per store transaction: a kiosk's window of 16 is two batches, so the next batch
# travels while the centre commits the one before (a batch of the whole window is lock step).
BATCH_MAX = 8
BATCH_LINGER_S = 0.01  # a batch waits at most this long for more messages to join it
BATCH_QUIET_S = 0.002  # ... and stops waiting when none has come for this long
MAX_JSON = 256 * 1024
STORE_RETRY_MIN_S = 0.5  # a failed batch is stored again after this, doubling up to the max
STORE_RETRY_MAX_S = 30.0
SESSION_TAKEN_OVER = 0x8E  # DISCONNECT reason: another client connected with our client id
EXPIRE_EVERY_S = 600.0  # how often partial transfers past [store] partial_expiry_s are deleted
CRYPTO_THREADS = min(4, os.cpu_count() or 1)  # SHA-256, Ed25519 and ChaCha20 release the GIL
FLEET_BATCH_MAX = 1000  # status and health documents per store transaction
FLEET_FLUSH_S = 0.2  # ... written at least this often while they arrive
FLEET_ERROR_LOG_S = 60.0  # a failing fleet write is logged at most this often


@dataclass(frozen=True, slots=True)
class _Incoming:
    topic: str
    payload: bytes
    mid: int
    qos: int
    client: mqtt.Client
    connection: int  # which connection of the client delivered it (packet ids are per connection)


class LinkSetupError(ValueError):
    """A file the broker connection needs cannot be used; the message names the config key."""


class CentralConsumer:
    """Runs until ``stop()``; the store is opened and used only on the worker (calling) thread."""

    def __init__(
        self,
        config: CentralConfig,
        keys: CentralPrivateKeys | CentralKeyring,
        open_store: Callable[[], CentralStore],
        metrics: MetricsHook | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or no_metrics()
        self.keys = as_keyring(keys)
        self._on_current_key: set[str] = set()  # kiosks whose packets open with the current key
        self.open_store = open_store
        self.prefix = config.mqtt.topic_prefix
        self._incoming: queue.Queue[_Incoming] = queue.Queue()  # enrollment chunks
        self._fleet_docs: queue.Queue[_Incoming] = queue.Queue()  # status and health
        self._results: queue.Queue[_Incoming] = queue.Queue()  # remote commands' results
        self._results_held: list[_Incoming] = []  # not stored yet: the store failed
        self._fleet_error_logged = 0.0
        self._stop = threading.Event()
        self.counts: dict[str, int] = defaultdict(int)
        self.connected = threading.Event()
        self._connection = 0  # counts CONNACKs; written and read on paho's thread, read by the worker
        self._crypto: ThreadPoolExecutor | None = None  # the batch's signature and body checks, in parallel

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """:raises LinkSetupError: a TLS or password file cannot be used (before anything is opened)"""
        client = self._client()
        store = self.open_store()
        self._crypto = ThreadPoolExecutor(CRYPTO_THREADS, thread_name_prefix="centre-crypto")
        try:
            m = self.config.mqtt
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = m.session_expiry_s
            # The client id is stable (config: host name and instance), so a restart resumes this
            # consumer's session: what the broker queued for it meanwhile is delivered, and no
            # dead session of an earlier process keeps a share of the group's messages.
            log.info("connecting to %s:%d", m.host, m.port)
            client.connect_async(m.host, m.port, keepalive=30, clean_start=False, properties=props)
            client.loop_start()
            next_expiry = time.monotonic()
            next_flush = time.monotonic() + FLEET_FLUSH_S
            while not self._stop.is_set():
                batch = self._take_batch(timeout=FLEET_FLUSH_S)
                if batch:
                    self._handle(store, client, batch)
                if time.monotonic() >= next_flush or self._fleet_docs.qsize() >= FLEET_BATCH_MAX:
                    next_flush = time.monotonic() + FLEET_FLUSH_S
                    self._record_fleet(store)
                    self._record_results(store)
                if time.monotonic() >= next_expiry:
                    next_expiry = time.monotonic() + EXPIRE_EVERY_S
                    self._expire_partials(store)
                    self._compact_history(store)
        finally:
            with contextlib.suppress(Exception):
                client.disconnect()
            client.loop_stop()
            self._crypto.shutdown()
            store.close()
            for waiting in (self._incoming, self._fleet_docs, self._results):
                with contextlib.suppress(
                    queue.Empty
                ):  # not PUBACKed: the broker or the kiosk sends them again
                    while True:
                        waiting.get_nowait()

    # ------------------------------------------------------------------------- MQTT

    def _client(self) -> mqtt.Client:
        m = self.config.mqtt
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=m.client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        client.suppress_exceptions = True
        client.reconnect_delay_set(m.reconnect_min_s, m.reconnect_max_s)
        client.max_queued_messages_set(0)
        configure_client(client, m)
        shared = f"$share/{m.share_group}/{self.prefix}/+/enrollment"

        def on_connect(c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
            if rc.is_failure:
                log.warning("broker %s:%d refused the connection: %s", m.host, m.port, rc)
                return
            self._connection += 1
            c.subscribe(
                [
                    (shared, 1),
                    (f"{self.prefix}/+/status", 1),
                    (f"{self.prefix}/+/health", 1),
                    (f"{self.prefix}/+/result", 1),
                ]
            )
            log.info("connected to %s:%d; consuming %s", m.host, m.port, shared)
            self.connected.set()

        def on_disconnect(_c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
            self.connected.clear()
            if rc.value == SESSION_TAKEN_OVER:
                log.error(
                    "another consumer connected with this client id %r and took the session over; "
                    "give each consumer its own [mqtt] instance (or client_id) in its config",
                    m.client_id,
                )
            elif self._stop.is_set():
                log.info("disconnected from %s:%d", m.host, m.port)
            else:
                log.warning("disconnected from %s:%d (%s); reconnecting", m.host, m.port, rc)

        def on_connect_fail(_c: mqtt.Client, _u: Any) -> None:
            # paho calls this from inside its ``except OSError`` around the connect and passes no
            # reason; the exception being handled is the reason (as the kiosk's link logs it).
            exc = sys.exc_info()[1]
            why = f"{exc}" if exc is not None else "reason unknown"
            log.warning(
                "cannot connect to %s:%d: %s; retrying with backoff (at most %s s between attempts)",
                m.host,
                m.port,
                why,
                m.reconnect_max_s,
            )

        def on_socket_open(_c: mqtt.Client, _u: Any, sock: Any) -> None:
            # Acks are small: they must not wait for Nagle + delayed ACK (~40 ms each).
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def on_message(c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            incoming = _Incoming(msg.topic, bytes(msg.payload), msg.mid, msg.qos, c, self._connection)
            if msg.topic.endswith("/enrollment"):
                self._incoming.put(incoming)
            elif msg.topic.endswith("/result"):
                self._results.put(incoming)
            else:
                self._fleet_docs.put(incoming)

        client.on_connect, client.on_disconnect, client.on_message = on_connect, on_disconnect, on_message
        client.on_connect_fail = on_connect_fail
        client.on_socket_open = on_socket_open
        return client

    def _take_batch(self, timeout: float) -> list[_Incoming]:
        try:
            first = self._incoming.get(timeout=timeout)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + BATCH_LINGER_S
        while len(batch) < BATCH_MAX:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:  # stop lingering as soon as the burst is over: the kiosk waits for our ack
                batch.append(self._incoming.get(timeout=min(BATCH_QUIET_S, left)))
            except queue.Empty:
                break
        return batch

    # ------------------------------------------------------------------------- handling

    def _kiosk_of(self, topic: str) -> tuple[str, str] | None:
        parts = topic.split("/")
        base = self.prefix.split("/")
        if len(parts) != len(base) + 2 or parts[: len(base)] != base:
            return None
        return parts[-2], parts[-1]

    def _handle(self, store: CentralStore, client: mqtt.Client, batch: list[_Incoming]) -> None:
        enrollments: list[tuple[_Incoming, str]] = []
        for msg in batch:
            route = self._kiosk_of(msg.topic)
            if route is None or route[1] != "enrollment":
                self._puback(msg)
                continue
            enrollments.append((msg, route[0]))
        if enrollments:
            self._ingest(store, client, enrollments)

    def _record_fleet(self, store: CentralStore) -> None:
        """Write the waiting status and health documents in one transaction, then PUBACK them.

        A document that is not a JSON object of finite numbers is counted and dropped; a store
        that fails loses this round of snapshots (each is retained and sent again every health
        interval), never an enrollment.
        """
        taken: list[_Incoming] = []
        with contextlib.suppress(queue.Empty):
            while len(taken) < FLEET_BATCH_MAX:
                taken.append(self._fleet_docs.get_nowait())
        if not taken:
            return
        docs: list[tuple[str, str, dict[str, Any]]] = []
        for msg in taken:
            route = self._kiosk_of(msg.topic)
            if route is not None and route[1] in ("status", "health"):
                doc = self._parsed(*route, msg.payload)
                if doc is not None:
                    docs.append((route[0], route[1], doc))
        if docs:
            started = time.monotonic()
            try:
                store.record_fleet_docs(docs)
            except StoreInputError:  # one bad id or document: write the others one by one
                self._record_one_by_one(store, docs)
            except Exception as exc:
                self.counts["store_errors"] += 1
                self.metrics.count("store_error")
                if time.monotonic() - self._fleet_error_logged >= FLEET_ERROR_LOG_S:
                    self._fleet_error_logged = time.monotonic()
                    log.error(
                        "recording %d status and health documents failed: %s; the kiosks send them again"
                        " with their next health",
                        len(docs),
                        f"{type(exc).__name__}: {exc}",
                    )
            else:
                for _, kind, _ in docs:
                    self.metrics.count(kind)
            self.metrics.observe_store("fleet", time.monotonic() - started)
        for msg in taken:
            self._puback(msg)

    def _record_results(self, store: CentralStore) -> None:
        """Verify and store the results that came, then PUBACK them; those the store failed on are
        tried again at the next round (not PUBACKed meanwhile)."""
        taken, self._results_held = self._results_held, []
        with contextlib.suppress(queue.Empty):
            while True:
                taken.append(self._results.get_nowait())
        for msg in taken:
            route = self._kiosk_of(msg.topic)
            if route is None or route[1] != "result":
                self._puback(msg)
                continue
            kiosk = route[0]
            try:
                result = verified_result(store, kiosk, msg.payload)
                new = store.record_result(result, msg.payload)
            except CommandError as exc:
                self.counts["bad_results"] += 1
                self.metrics.count("bad_message")
                log.warning(
                    "ignored a result on kiosk %s's topic that does not verify as its own (%s): %s",
                    kiosk,
                    exc.reason,
                    exc,
                )
            except StoreInputError as exc:
                self.counts["bad_results"] += 1
                self.metrics.count("bad_message")
                log.warning("ignored a result of kiosk %s: %s", kiosk, exc)
            except Exception as exc:
                self.counts["store_errors"] += 1
                self.metrics.count("store_error")
                self._results_held.append(msg)
                if time.monotonic() - self._fleet_error_logged >= FLEET_ERROR_LOG_S:
                    self._fleet_error_logged = time.monotonic()
                    log.error(
                        "storing a command result of kiosk %s failed: %s; trying again",
                        kiosk,
                        f"{type(exc).__name__}: {exc}",
                    )
                continue
            else:
                if new:
                    self.counts["results"] += 1
                    log.info(
                        "kiosk %s: result of command %s (%s): %s%s",
                        kiosk,
                        result.command_id,
                        result.verb,
                        result.status,
                        f" ({result.reason})" if result.reason else "",
                    )
            self._puback(msg)

    def _record_one_by_one(self, store: CentralStore, docs: list[tuple[str, str, dict[str, Any]]]) -> None:
        for kiosk, kind, doc in docs:
            try:
                store.record_fleet_docs([(kiosk, kind, doc)])
            except StoreInputError as exc:
                self.counts["bad_" + kind] += 1
                self.metrics.count("bad_message")
                log.warning("ignored a %s message from kiosk %s: %s", kind, kiosk, exc)
            else:
                self.metrics.count(kind)

    def _parsed(self, kiosk: str, kind: str, payload: bytes) -> dict[str, Any] | None:
        """The document of a status or health message, or None (counted and logged) if it is not one."""
        if not payload:
            return None  # a cleared retained message
        try:
            doc = json.loads(payload, parse_constant=_refuse_constant) if len(payload) <= MAX_JSON else None
        except ValueError:  # also NaN and Infinity: not JSON, and they would reach `fleet --json`
            doc = None
        if not isinstance(doc, dict):
            self.counts["bad_" + kind] += 1
            self.metrics.count("bad_message")
            log.warning(
                "ignored a %s message from kiosk %s that is not a JSON object of finite numbers", kind, kiosk
            )
            return None
        return doc

    def _ingest(self, store: CentralStore, client: mqtt.Client, items: list[tuple[_Incoming, str]]) -> None:
        """Store the batch (again and again while the store fails), then ack it, then PUBACK it."""
        acks = self._store_until_done(store, [(msg.payload, kiosk) for msg, kiosk in items])
        if acks is None:
            return  # stopping with the batch unstored: no ack, no PUBACK; the kiosks send it again
        for kiosk, ack_results in acks.items():
            for signing in self._ack_signers(kiosk):
                client.publish(f"{self.prefix}/{kiosk}/ack", sign_ack(kiosk, ack_results, signing), qos=1)
                self.metrics.count("acks")
        for msg, _ in items:  # PUBACK only now: the batch is durable and acknowledged
            self._puback(msg)

    def _ack_signers(self, kiosk: str) -> list[Ed25519PrivateKey]:
        """The current signing key, or, after a rotation and until ``kiosk`` is seen using the new
        ``.pub``, every key pair's (central.keyring: the kiosk acts on the ack it can verify)."""
        generations = self.keys.generations
        if len(generations) == 1 or kiosk in self._on_current_key:
            return [generations[0].signing]
        return [g.signing for g in generations]

    def _store_until_done(
        self, store: CentralStore, items: list[tuple[bytes, str]]
    ) -> dict[str, list[AckResult]] | None:
        """The ack results of a stored batch; None if the consumer stopped while the store failed."""
        delay = STORE_RETRY_MIN_S
        while True:
            started = time.monotonic()
            try:
                acks = self._store(store, items)
            except Exception as exc:
                self.counts["store_errors"] += 1
                self.metrics.count("store_error")
                log.error(
                    "storing a batch of %d packets failed: %s; nothing of it acked, trying again in %.1f s",
                    len(items),
                    f"{type(exc).__name__}: {exc}",  # a string: the record must not keep the frames alive
                    delay,
                    exc_info=not isinstance(exc, StoreError),  # a StoreError's message says it all
                )
            else:
                self.metrics.observe_store("packets", time.monotonic() - started)
                return acks
            if self._stop.wait(delay):
                log.warning("stopping with %d packets not stored: the kiosks send them again", len(items))
                return None
            delay = min(delay * 2, STORE_RETRY_MAX_S)

    def _store(self, store: CentralStore, items: list[tuple[bytes, str]]) -> dict[str, list[AckResult]]:
        """Keep the chunks, store the packets they complete; the ack results per kiosk, in order."""
        acks: dict[str, list[AckResult]] = defaultdict(list)
        resent: dict[str, set[str]] = defaultdict(set)  # packets already stored, sent again (wasted work)
        finals: list[tuple[str, Chunk, bytes]] = []  # (kiosk, the chunk that completed it, the packet)
        parts: list[tuple[str, Chunk]] = []
        for payload, kiosk in items:
            try:
                chunk = parse_chunk(payload)
            except ChunkError as exc:
                self.counts["bad_chunks"] += 1
                log.warning("ignored a message on kiosk %s's enrollment topic: %s", kiosk, exc)
                continue
            if chunk.whole:  # the usual case on a fast link: the ingest tells a duplicate itself
                finals.append((kiosk, chunk, chunk.data))
                continue
            held = store.stored_sha256(kiosk, chunk.packet_id)
            if held is not None:  # stored before (its ack was lost): answer at once, keep nothing
                status = AckStatus.DUPLICATE if held == chunk.sha256 else AckStatus.CONFLICT
                reason = "" if held == chunk.sha256 else "other bytes are stored under this packet id"
                acks[kiosk].append(AckResult(chunk.packet_id, chunk.sha256, status, reason))
                self.counts[status.value] += 1
                self.metrics.count(status.value)
                if status is AckStatus.DUPLICATE:
                    resent[kiosk].add(chunk.packet_id)
            elif chunk.probe:
                have = store.partial_have(kiosk, chunk.packet_id, chunk.sha256)
                acks[kiosk].append(AckResult(chunk.packet_id, chunk.sha256, AckStatus.PARTIAL, have=have))
            else:
                parts.append((kiosk, chunk))
        if parts:
            for (kiosk, chunk), have in zip(parts, store.add_chunks(parts), strict=True):
                if have < chunk.total:
                    acks[kiosk].append(AckResult(chunk.packet_id, chunk.sha256, AckStatus.PARTIAL, have=have))
                    continue
                if any(
                    k == kiosk and c.packet_id == chunk.packet_id and c.sha256 == chunk.sha256
                    for k, c, _ in finals
                ):
                    continue  # two chunks of this batch completed it
                data = store.assemble_partial(kiosk, chunk.packet_id, chunk.sha256)
                if data is not None:
                    finals.append((kiosk, chunk, data))
        for (kiosk, _, _), result in zip(finals, self._ingest_packets(store, finals), strict=True):
            acks[kiosk].append(result)
        for kiosk, packet_ids in resent.items():
            store.count_duplicate_deliveries(kiosk, len(packet_ids))
        return acks

    def _ingest_packets(self, store: CentralStore, finals: list[tuple[str, Chunk, bytes]]) -> list[AckResult]:
        """Authenticate and store whole packets (one transaction); one ack result each, in order.

        Each is checked against what its chunks announced: the kiosk of the topic that
        carried it, the packet id, and the SHA-256 (bytes that do not hash to it were damaged
        on the way; a packet naming another kiosk or id is refused: with per-kiosk ACLs a
        kiosk can only publish as itself)."""
        claims = [Claim(kiosk, chunk.packet_id, chunk.sha256) for kiosk, chunk, _ in finals]
        ingestor = Ingestor(store, self.keys, crypto=self._crypto)
        ingested = ingestor.ingest_many([data for _, _, data in finals], "mqtt", claims=claims)
        results = []
        for (kiosk, chunk, _), result in zip(finals, ingested, strict=True):
            self.counts[result.status] += 1  # the ingest and the store log what is not stored
            self.metrics.count(result.status)
            if result.generation == 0:
                self._on_current_key.add(kiosk)
            results.append(AckResult(chunk.packet_id, chunk.sha256, AckStatus(result.status), result.reason))
            if not chunk.whole:
                store.drop_partial(kiosk, chunk.packet_id, chunk.sha256)
        return results

    def _expire_partials(self, store: CentralStore) -> None:
        expiry = self.config.partial_expiry_s
        try:
            n = store.expire_partials(expiry)
        except StoreError as exc:
            log.warning("expiring old partial transfers failed: %s; trying again later", exc)
            return
        if n:
            self.counts["partials_expired"] += n
            log.info("deleted %d partial transfers older than %d s", n, expiry)

    def _compact_history(self, store: CentralStore) -> None:
        c = self.config
        try:
            done = store.compact_health_history(c.health_detail_hours, c.health_retention_days)
        except StoreError as exc:
            log.warning("compacting the health history failed: %s; trying again later", exc)
            return
        if done["folded"] or done["deleted"]:
            log.info(
                "health history: %d 5-minute steps folded into %d hours, %d rows past %d days deleted",
                done["folded"],
                done["hours_written"],
                done["deleted"],
                c.health_retention_days,
            )

    def _puback(self, msg: _Incoming) -> None:
        if msg.qos > 0 and msg.connection == self._connection:  # else the broker resends it (or the kiosk)
            with contextlib.suppress(Exception):  # the connection may be gone; the kiosk re-sends
                msg.client.ack(msg.mid, msg.qos)


def configure_client(client: mqtt.Client, m: CentralMqtt) -> None:
    """TLS and the broker login of ``[mqtt]`` on a client (the consumer's, and each `kiosk cmd`'s).

    :raises LinkSetupError: a TLS or password file cannot be used
    """
    if m.tls:
        try:
            client.tls_set(
                ca_certs=str(m.ca_file) if m.ca_file else None,
                certfile=str(m.cert_file) if m.cert_file else None,
                keyfile=str(m.key_file) if m.key_file else None,
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise LinkSetupError(
                f"[mqtt] ca_file / cert_file / key_file: cannot use {m.ca_file}, {m.cert_file}, "
                f"{m.key_file}: {exc}; check the paths and that they are PEM files this user may read"
            ) from None
    if m.username:
        password = None
        if m.password_file:
            try:
                password = m.password_file.read_text().strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise LinkSetupError(
                    f"[mqtt] password_file {m.password_file}: cannot read it ({exc}); "
                    "create it (one line, the password) readable by this user"
                ) from None
        client.username_pw_set(m.username, password)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
