"""The receiving sides of bench/drain.py, each in a child process of its own (as on a real
centre: the kiosk and the consumer never share an interpreter).

``central``: the real ``CentralConsumer`` over a SQLite central store (the agent's run).
``durable``: baseline (b), a minimal durable subscriber in raw paho: each message committed
to SQLite in its own transaction (WAL, synchronous=FULL, the central store's pragmas) in
``on_message``, then a plain ack (the packet's seq as ASCII) published QoS 1, then the
PUBACK (paho sends it when ``on_message`` returns).

The parent starts a side with :class:`CentreSide`, waits until it is subscribed, and
stops it; the child reports what it stored. Ctrl-C in the terminal reaches the child
too: it ignores SIGINT and leaves stopping to the parent (or to SIGTERM from it).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import queue
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0
SUBSCRIBE_SETTLE_S = 0.3  # the consumer says "connected" before its SUBACK; let the broker settle

_CTX = mp.get_context("spawn")  # the parent has threads (paho, the link): never fork it


class CentreSide:
    """One receiving side in a child process: ``start()`` returns once it is subscribed."""

    def __init__(self, kind: str, **params: Any) -> None:
        if kind not in ("central", "durable"):
            raise ValueError(f"unknown side {kind!r}")
        self.kind = kind
        self.params = params
        self._ready = _CTX.Event()
        self._stop = _CTX.Event()
        self._results: mp.Queue[dict[str, Any]] = _CTX.Queue()
        self._proc: mp.process.BaseProcess | None = None

    def start(self) -> None:
        target = _central_main if self.kind == "central" else _durable_main
        self._proc = _CTX.Process(
            target=target,
            args=(self.params, self._ready, self._stop, self._results),
            name=f"bench-{self.kind}",
            daemon=True,
        )
        self._proc.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._ready.wait(0.1):
            if not self._proc.is_alive():
                raise RuntimeError(
                    f"the {self.kind} side exited during start-up (code {self._proc.exitcode})"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {self.kind} side did not subscribe within {READY_TIMEOUT_S:.0f} s")

    def stop(self) -> dict[str, Any]:
        """Stop the child and return its report ({} if it had to be killed)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return {}
        self._stop.set()
        report: dict[str, Any] = {}
        with contextlib.suppress(queue.Empty):
            if proc.is_alive() or not self._results.empty():
                report = self._results.get(timeout=STOP_TIMEOUT_S)
        proc.join(STOP_TIMEOUT_S)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        self._results.close()
        self._results.join_thread()
        return report


def _child_setup() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(processName)s %(name)s: %(message)s")


# ----------------------------------------------------------------------------- the real consumer


class _NotOurDisconnect(logging.Filter):
    """The consumer warns "disconnected ... reconnecting" on its own clean stop too: not news here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("disconnected from")


def _central_main(params: dict[str, Any], ready: Any, stop: Any, results: Any) -> None:
    _child_setup()
    from central.config import CentralConfig, CentralMqtt
    from central.consumer import CentralConsumer
    from central.store import open_store
    from wire.keys import load_central_private

    db = str(params["db"])
    store = open_store(db)
    store.add_kiosk(params["kiosk_id"], Path(params["kiosk_public"]).read_bytes(), replace=True)
    store.close()
    config = CentralConfig(
        mqtt=CentralMqtt(host="127.0.0.1", port=params["port"], client_id="bench-centre"),
        store_url=db,
        central_private_key=Path(params["central_key"]),
    )
    consumer = CentralConsumer(
        config, load_central_private(config.central_private_key), lambda: open_store(db)
    )
    worker = threading.Thread(target=consumer.run, name="centre-worker")
    worker.start()
    try:
        if consumer.connected.wait(READY_TIMEOUT_S):
            time.sleep(SUBSCRIBE_SETTLE_S)
            ready.set()
        stop.wait()
        logging.getLogger("ektp.central").addFilter(_NotOurDisconnect())
    finally:
        consumer.stop()
        worker.join(STOP_TIMEOUT_S)
    store = open_store(db)
    try:
        rows = store.packets()
    finally:
        store.close()
    results.put(
        {
            "stored_rows": len(rows),
            "distinct_ids": len({r["packet_id"] for r in rows}),
            "counts": dict(consumer.counts),
        }
    )


# ----------------------------------------------------------------------------- baseline (b)


def _durable_main(params: dict[str, Any], ready: Any, stop: Any, results: Any) -> None:
    _child_setup()
    conn = sqlite3.connect(params["db"], isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS packets (seq INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    subscribed = threading.Event()
    counts = {"stored": 0, "duplicates": 0}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-durable-sub", protocol=mqtt.MQTTv5)
    client.max_queued_messages_set(0)
    client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(params["topic"], qos=1)
    client.on_subscribe = lambda _c, _u, _m, _rc, _p: subscribed.set()

    def commit_and_ack(c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        # The minimal pipeline: commit on paho's thread, ack, and paho PUBACKs when this returns.
        # (A worker thread with manual_ack, as the centre has, measured no faster here.)
        seq = int(dict(msg.properties.UserProperty)["seq"])  # type: ignore[union-attr]
        conn.execute("BEGIN IMMEDIATE")
        changed = conn.execute(
            "INSERT OR IGNORE INTO packets (seq, data) VALUES (?, ?)", (seq, msg.payload)
        ).rowcount
        conn.execute("COMMIT")
        counts["stored"] += changed
        counts["duplicates"] += 1 - changed
        c.publish(params["ack_topic"], str(seq).encode(), qos=1)

    client.on_message = commit_and_ack
    try:
        client.connect("127.0.0.1", params["port"], keepalive=30, clean_start=True)
        client.loop_start()
        if subscribed.wait(READY_TIMEOUT_S):
            ready.set()
        stop.wait()
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
        client.loop_stop()
    (rows,) = conn.execute("SELECT count(*) FROM packets").fetchone()
    conn.close()
    results.put({"stored_rows": rows, **counts})
