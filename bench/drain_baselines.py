"""The two publishers of bench/drain.py's baselines, in raw paho (MQTT 5, QoS 1).

(a) ``raw_publish``: a window of un-PUBACKed messages (paho max_inflight = window; the
    next publish as each PUBACK comes back); nobody subscribed, nobody storing. Timed
    from the first publish to the last PUBACK: the kiosk-to-broker path's limit.
(b) ``durable_publish``: a window of un-acked messages, where the ack is the plain one
    that the durable subscriber (bench/drain_centre.py) publishes after its commit.
    Timed from the first publish to the last ack.

Both publish the same sealed packets as the agent, with the agent's user properties
(``packet-id``, ``seq``, ``kiosk``), so every PUBLISH is the same size as the agent's.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

CONNECT_TIMEOUT_S = 10.0


class BaselineStalled(RuntimeError):
    """A baseline run did not finish within its time limit."""


def raw_publish(
    port: int, topic: str, payloads: Sequence[bytes], n: int, window: int, kiosk: str, timeout_s: float
) -> float:
    """Baseline (a): seconds from the first publish to the N-th PUBACK."""
    free = threading.BoundedSemaphore(window)
    done = threading.Event()
    state = {"pubacks": 0, "refused": 0, "finished": 0.0}

    def on_publish(_c: mqtt.Client, _u: object, _mid: int, rc: ReasonCode, _p: object) -> None:
        # 0x10 "no matching subscribers" is a success code: nobody is subscribed here
        state["refused"] += int(rc.is_failure)
        state["pubacks"] += 1
        free.release()
        if state["pubacks"] == n:
            state["finished"] = time.perf_counter()
            done.set()

    client = _connected_client(port, "bench-raw-pub", window, on_publish=on_publish)
    try:
        started = time.perf_counter()
        _publish_windowed(client, topic, payloads, n, free, done, kiosk, timeout_s, started)
        if not done.wait(max(0.0, timeout_s - (time.perf_counter() - started))):
            raise BaselineStalled(f"raw publish: {state['pubacks']} of {n} PUBACKs after {timeout_s:.0f} s")
        if state["refused"]:
            raise BaselineStalled(f"raw publish: the broker refused {state['refused']} messages")
        return state["finished"] - started
    finally:
        _close(client)


def durable_publish(
    port: int,
    topic: str,
    ack_topic: str,
    payloads: Sequence[bytes],
    n: int,
    window: int,
    kiosk: str,
    timeout_s: float,
) -> float:
    """Baseline (b): seconds from the first publish to the N-th ack from the durable subscriber."""
    free = threading.BoundedSemaphore(window)
    done = threading.Event()
    subscribed = threading.Event()
    waiting: set[int] = set()
    lock = threading.Lock()
    state = {"acked": 0, "finished": 0.0}

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            seq = int(msg.payload)
        except ValueError:
            return
        with lock:
            if seq not in waiting:
                return  # a repeated ack
            waiting.discard(seq)
            state["acked"] += 1
        free.release()
        if state["acked"] == n:
            state["finished"] = time.perf_counter()
            done.set()

    client = _connected_client(
        port,
        "bench-durable-pub",
        window,
        on_message=on_message,
        on_subscribe=lambda *_: subscribed.set(),
    )
    try:
        client.subscribe(ack_topic, qos=1)
        if not subscribed.wait(CONNECT_TIMEOUT_S):
            raise BaselineStalled(f"durable publish: no SUBACK for {ack_topic}")

        def track(seq: int) -> None:
            with lock:
                waiting.add(seq)

        started = time.perf_counter()
        _publish_windowed(client, topic, payloads, n, free, done, kiosk, timeout_s, started, track)
        if not done.wait(max(0.0, timeout_s - (time.perf_counter() - started))):
            raise BaselineStalled(f"durable publish: {state['acked']} of {n} acks after {timeout_s:.0f} s")
        return state["finished"] - started
    finally:
        _close(client)


def _publish_windowed(
    client: mqtt.Client,
    topic: str,
    payloads: Sequence[bytes],
    n: int,
    free: threading.BoundedSemaphore,
    done: threading.Event,
    kiosk: str,
    timeout_s: float,
    started: float,
    track: object = None,
) -> None:
    for seq in range(1, n + 1):
        left = timeout_s - (time.perf_counter() - started)
        if left <= 0 or not free.acquire(timeout=left):
            raise BaselineStalled(f"the window never opened again after {seq - 1} of {n} publishes")
        if callable(track):
            track(seq)
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.UserProperty = [("packet-id", str(uuid.uuid4())), ("seq", str(seq)), ("kiosk", kiosk)]
        info = client.publish(topic, payloads[(seq - 1) % len(payloads)], qos=1, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BaselineStalled(f"paho refused publish {seq}: {mqtt.error_string(info.rc)}")


def _connected_client(port: int, client_id: str, window: int, **callbacks: object) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(window)
    client.max_queued_messages_set(0)
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    for name, fn in callbacks.items():
        setattr(client, name, fn)
    client.connect("127.0.0.1", port, keepalive=30, clean_start=True)
    client.loop_start()
    if not connected.wait(CONNECT_TIMEOUT_S):
        _close(client)
        raise BaselineStalled(f"{client_id}: no CONNACK from 127.0.0.1:{port}")
    return client


def _close(client: mqtt.Client) -> None:
    with contextlib.suppress(Exception):
        client.disconnect()
    client.loop_stop()
