"""The link's session: one paho client per connection attempt, its Last Will and status,
the connection counter, the reconnect backoff, and the events paho's thread hands the core.

paho callbacks run on its network thread: they only ``post`` an event (the core puts it on
its queue with ``loop.call_soon_threadsafe``) and never block or raise.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import AgentConfig, MqttConfig
from wire.ack import MAX_BODY as ACK_MAX_BODY

log = logging.getLogger("ektp.link")

CONNECT_TIMEOUT_S = 10.0
MAX_INCOMING_PACKET = ACK_MAX_BODY + 64 * 1024  # told to the broker: it drops anything larger for us


@dataclass(frozen=True, slots=True)
class Connected:
    client: mqtt.Client
    reason: ReasonCode
    properties: Properties | None


@dataclass(frozen=True, slots=True)
class Disconnected:
    client: mqtt.Client
    reason: str


@dataclass(frozen=True, slots=True)
class Published:
    client: mqtt.Client
    mid: int
    reason: ReasonCode


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes


Event = Connected | Disconnected | Published | Message


def backoff(m: MqttConfig, attempt: int) -> float:
    """Exponential backoff with full jitter, so that a fleet does not reconnect in lockstep."""
    cap = min(m.reconnect_max_s, m.reconnect_min_s * 2 ** min(attempt, 20))
    return random.uniform(m.reconnect_min_s / 2, cap)


def next_connection_number(path: Path) -> int:
    """The counter of this connection attempt, kept in ``path`` (the Will and the statuses carry it)."""
    try:
        n = int(path.read_text().strip() or 0) + 1
    except (OSError, ValueError):
        n = 1
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(n))
        tmp.replace(path)
    except OSError as exc:  # a read-only or full disk must not stop the link
        log.warning("cannot record the connection counter in %s: %s", path, exc)
    return n


def status_payload(kiosk: str, state: str, connection: int) -> bytes:
    return json.dumps(
        {"state": state, "kiosk_id": kiosk, "connection": connection, "ts": now_rfc3339()}
    ).encode()


def secure(client: mqtt.Client, m: MqttConfig) -> None:
    """TLS and the login of [mqtt] on ``client`` (the link's and the remote commands' alike).

    :raises OSError: the password file cannot be read
    :raises ssl.SSLError: the TLS files are unusable
    """
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


def new_client(
    config: AgentConfig, topic_status: str, connection: int, post: Callable[[Event], None]
) -> mqtt.Client:
    """A client for one connection: its Will carries this connection's counter.

    :raises OSError: the password file cannot be read
    :raises ssl.SSLError: the TLS files are unusable
    """
    m = config.mqtt
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"ektp-agent-{config.kiosk.id}",
        protocol=mqtt.MQTTv5,
        # paho must not bring this client back by itself: it would come back with this
        # connection's Will and re-send its memory queue behind the drain's back
        reconnect_on_failure=False,
    )
    client.suppress_exceptions = True
    client.max_inflight_messages_set(65535)  # the link keeps within the broker's Receive Maximum itself
    client.max_queued_messages_set(0)
    client.will_set(topic_status, status_payload(config.kiosk.id, "offline", connection), qos=1, retain=True)
    secure(client, m)

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, props: Properties | None) -> None:
        post(Connected(c, rc, props))

    def on_socket_open(_c: mqtt.Client, _u: Any, sock: Any) -> None:
        # Small messages (acks, PUBACKs, status) must not wait for Nagle + delayed ACK (~40 ms).
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_disconnect(c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        post(Disconnected(c, str(rc)))

    def on_publish(c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        post(Published(c, mid, rc))

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        post(Message(msg.topic, bytes(msg.payload)))

    client.on_connect, client.on_disconnect = on_connect, on_disconnect
    client.on_socket_open = on_socket_open
    client.on_publish, client.on_message = on_publish, on_message
    return client


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
