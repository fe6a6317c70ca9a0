"""Bounded chaos on the link of the whole kit: broker restarts (R2), link flaps (R3) and
hostile and replayed acks (R7), each while enrollments are committed and the backlog drains.

Each test checks that its chaos reached the kiosk (a broker killed with packets in the
window, a flap that cut the kiosk's connection, replays the kiosk read), so that a fault
injector that stopped working fails the test instead of passing it; and each ends with the
exactly-once figure of tests/linkkit.py (the centre's rows of the kiosk are exactly the
receipts, seqs 1..N without a gap) and the centre's count of duplicate deliveries.

`EKTP_CHAOS=full` (set by bench/chaos.py) scales them to the full runs of issue 6:
20 broker restarts, 10 minutes of flaps.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from tests.agentkit import Kit
from tests.chaos.test_chaos import collect, enroll_direct
from tests.linkkit import api_status, check_exactly_once, figure_text, synced, wait_for
from tests.netkit import Broker, TcpProxy
from wire.ack import AckError, AckResult, AckStatus, sign_ack, verify_ack
from wire.chunk import packet_sha256
from wire.keys import load_central_private, load_central_public

FULL = os.environ.get("EKTP_CHAOS") == "full"
KIOSK = "320715-01"
KEEPALIVE_S = 5  # the kit's mqtt.keepalive_s (tests/agentkit.py), the least the config allows
# paho declares a silent connection dead after one to two keepalives: a stall must outlast that
STALL_S = (2.2 * KEEPALIVE_S, 3.0 * KEEPALIVE_S)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


def link(k: Kit) -> dict[str, Any]:
    doc: dict[str, Any] = api_status(k)["link"]
    return doc


def wait_link(k: Kit, cond: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
    """Poll the service's link counters (through its socket, every 20 ms) until ``cond`` holds."""
    seen: list[dict[str, Any]] = []

    def check() -> bool:
        seen[:] = [link(k)]
        return cond(seen[0])

    wait_for(check, timeout, what, step=0.02)
    return seen[0]


def reconnected_since(before: dict[str, Any]) -> Callable[[dict[str, Any]], bool]:
    return lambda doc: int(doc["reconnects"]) > int(before["reconnects"])


def test_r2_broker_killed_and_restarted_mid_drain(tmp_path: Path, broker: Broker) -> None:
    """Each restart is counted only if its kill lands while the drain has packets in its window
    (published, not yet confirmed by the centre: the window outlives the connection, so the
    kiosk's counter read after the kill says so); a kill that found the window empty is done
    again. Each kill is seen by the kiosk and followed by a reconnect."""
    restarts = 20 if FULL else 3
    k = Kit(tmp_path / "kit", broker.port)
    try:
        k.setup_keys()
        k.start_central()
        k.start_agent()
        receipts: list[dict[str, object]] = []
        in_window: list[int] = []  # packets in the window at each kill
        rnd = random.Random(2)
        seed = 100
        loader = enroll_direct(k, 30, seed=seed)
        while sum(1 for n in in_window if n) < restarts and len(in_window) < 4 * restarts:
            before = wait_link(k, lambda doc: doc["connected"], 30, "the link up before the kill")
            if loader.poll() is not None:
                receipts += collect(loader)
                seed += 100
                loader = enroll_direct(k, 30, seed=seed)
            wait_link(k, lambda doc: doc["in_flight"] > 0, 30, "the drain sending")
            broker.kill()
            held = wait_link(k, lambda doc: not doc["connected"], 30, "the kiosk to see the broker die")
            in_window.append(int(held["in_flight"]))
            time.sleep(rnd.uniform(0.2, 1.0))
            broker.start()
            wait_link(k, reconnected_since(before), 30, "the kiosk to reconnect")
        receipts += collect(loader)
        synced(k, 180 if FULL else 60)
        figure = check_exactly_once(k, receipts)
        mid_drain = sum(1 for n in in_window if n)
        print(
            f"R2 restarts={mid_drain} kills={len(in_window)} reconnects={link(k)['reconnects']} "
            + figure_text(figure)
        )
        assert mid_drain == restarts, f"too few kills found the drain at work: {in_window}"
        assert k.agent is not None and k.agent.poll() is None
    finally:
        k.close()


def test_r3_link_flaps_deliver_everything_without_operator_action(tmp_path: Path, broker: Broker) -> None:
    """Drops and stalls must cut the kiosk's connection (its reconnect counter rises after each:
    a stall outlasts two keepalives, when paho gives the connection up); throttles slow it."""
    duration = 600.0 if FULL else 20.0  # bounded: a drop, a stall, a throttle, and more if time is left
    proxy = TcpProxy(broker.port)
    k = Kit(tmp_path / "kit", proxy.port)  # the kiosk reaches the broker only through the proxy
    try:
        assert f"keepalive_s = {KEEPALIVE_S}\n" in k.agent_conf.read_text()
        k.setup_keys()  # and the centre talks to the broker directly:
        k.central_conf.write_text(
            k.central_conf.read_text().replace(f"port = {proxy.port}", f"port = {broker.port}")
        )
        k.start_central()
        k.start_agent()
        rnd = random.Random(3)
        receipts: list[dict[str, object]] = []
        kinds = ["drop", "stall", "throttle"]
        flaps = dict.fromkeys(kinds, 0)
        cuts = dict.fromkeys(kinds, 0)  # flaps after which the kiosk reconnected
        order = rnd.sample(kinds, 3)  # each kind at least once, then at random
        started, seed = time.monotonic(), 1
        while time.monotonic() - started < duration or order:
            before = wait_link(k, lambda doc: doc["connected"], 60, "the link up before a flap")
            loader = enroll_direct(k, 10, seed=seed)
            seed += 10
            # the bounded run has one stall (it outlasts two keepalives); the full run any number
            kind = order.pop(0) if order else rnd.choice(kinds if FULL else ["drop", "throttle"])
            flaps[kind] += 1
            if kind == "drop":
                proxy.drop()
                hold = rnd.uniform(2, 10) if FULL else rnd.uniform(1, 3)
            elif kind == "stall":
                proxy.stall(True)
                hold = rnd.uniform(*STALL_S)
            else:
                proxy.bytes_per_s = 500_000
                hold = rnd.uniform(2, 10) if FULL else rnd.uniform(1, 3)
            time.sleep(hold)
            proxy.stall(False)
            proxy.bytes_per_s = None
            if kind != "throttle":
                wait_link(k, reconnected_since(before), 30, f"the kiosk to reconnect after a {kind}")
                cuts[kind] += 1
            receipts += collect(loader)
        synced(k, 180 if FULL else 60)  # no operator action in between
        figure = check_exactly_once(k, receipts)
        print(
            f"R3 seconds={duration:.0f} flaps={sum(flaps.values())} {flaps} cut={cuts['drop'] + cuts['stall']} "
            f"reconnects={link(k)['reconnects']} " + figure_text(figure)
        )
        assert cuts["drop"] == flaps["drop"] >= 1 and cuts["stall"] == flaps["stall"] >= 1
    finally:
        k.close()
        proxy.close()


class AckReplayer:
    """An attacker on the broker that republishes every ack the centre sends to the kiosk at
    once, ``copies`` times: each replay reaches the kiosk right behind the original, before the
    kiosk has written the original's outcome down. It reads the acks with the centre's public
    key to count the final results (stored, duplicate, rejected, conflict) it replayed."""

    def __init__(self, port: int, kiosk: str, central_pub: Path, copies: int = 2) -> None:
        self.topic = f"ektp/v1/{kiosk}/ack"
        self.kiosk = kiosk
        self.key = load_central_public(central_pub).signing
        self.copies = copies
        self.recorded: list[bytes] = []
        self.finals_replayed = 0
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="replayer", protocol=mqtt.MQTTv5)
        options = SubscribeOptions(qos=1, noLocal=True)  # not its own replays
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(self.topic, options=options)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_message = self._on
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the replayer's subscription"

    def finals(self, payload: bytes) -> int:
        try:
            ack = verify_ack(payload, key=self.key, kiosk=self.kiosk)
        except AckError:
            return 0  # the hostile ones of this test
        return sum(1 for r in ack.results if r.status.delivered or r.status.refused)

    def _on(self, client: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        payload = bytes(m.payload)
        finals = self.finals(payload)
        if not finals:
            return
        for _ in range(self.copies):
            client.publish(self.topic, payload, qos=1)  # never wait inside a paho callback
        with self.lock:
            self.recorded.append(payload)
            self.finals_replayed += finals * self.copies

    def replay_all(self) -> int:
        """Publish every recorded ack once more; returns the final results in them."""
        with self.lock:
            recorded = list(self.recorded)
        for payload in recorded:
            self.client.publish(self.topic, payload, qos=1).wait_for_publish(5)
        return sum(self.finals(p) for p in recorded)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client.on_message = self.client.on_connect = self.client.on_subscribe = None


def replayed(doc: dict[str, Any]) -> int:
    return int(doc["ignored_acks_by_reason"].get("replayed", 0))


def test_r7_forged_replayed_and_garbage_acks_delete_nothing(tmp_path: Path, broker: Broker) -> None:
    """Hostile acks while 20 packets wait (no centre): forged, another kiosk's, truncated, garbage,
    and genuine signatures over other bytes (a replay of another packet's ack). Then the centre,
    with an attacker replaying each of its acks twice at once; then every ack replayed again
    after all is delivered. The kiosk must count every replay it read as ignored."""
    k = Kit(tmp_path / "kit", broker.port)
    attacker = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="attacker", protocol=mqtt.MQTTv5)
    replayer: AckReplayer | None = None
    try:
        k.setup_keys()
        k.start_agent()  # no centre yet: everything stays undelivered while we attack
        receipts = collect(enroll_direct(k, 20, seed=1))
        ids = [str(r["packet_id"]) for r in receipts]
        central_keys = load_central_private(k.root / "central" / "central.key")
        # the attacker knows the packets' bytes (`ektp-agent export`, as from a stolen USB stick),
        # so the forged and the foreign acks name the right SHA-256: only the signature and the
        # kiosk id stop them
        assert k.agent_cli("export", "--to", str(tmp_path / "stick")).returncode == 0
        sha = {
            f.stem.split("-", 1)[1]: packet_sha256(f.read_bytes())
            for f in (tmp_path / "stick").glob("*.ektp")
        }
        assert sorted(sha) == sorted(ids)
        results = [AckResult(i, sha[i], AckStatus.STORED) for i in ids]
        other_bytes = [AckResult(i, "00" * 32, AckStatus.STORED) for i in ids]  # another packet's ack
        payloads = [
            sign_ack(KIOSK, results, Ed25519PrivateKey.generate()),  # forged
            sign_ack("320715-02", results, central_keys.signing),  # another kiosk's
            sign_ack(KIOSK, results, central_keys.signing)[:-3],  # truncated
            b"\x00garbage",
            os.urandom(300),
            json.dumps({"delivered": ids}).encode(),
            sign_ack(KIOSK, other_bytes, central_keys.signing),  # the centre's key, other bytes
        ]
        attacker.connect("127.0.0.1", broker.port)
        attacker.loop_start()
        sent = 0
        for _ in range(5 if FULL else 2):
            for payload in payloads:
                attacker.publish(f"ektp/v1/{KIOSK}/ack", payload, qos=1).wait_for_publish(5)
                sent += 1
        # 6 of each round are refused whole; the last names other bytes for each of the 20 ids
        want = sent // len(payloads) * (len(payloads) - 1 + len(ids))
        wait_for(
            lambda: (doc := api_status(k))["link"]["ignored_acks"] >= want or doc["queue"]["pending"] < 20,
            30,
            "every hostile ack read",
        )
        doc = k.status()
        assert doc["queue"]["pending"] == 20, "a hostile ack deleted something"
        assert doc["link"]["ignored_acks_by_reason"]["other-bytes"] == sent // len(payloads) * len(ids)

        replayer = AckReplayer(broker.port, KIOSK, k.root / "central" / "central.key.pub")
        k.start_central()  # now the genuine acks, each replayed twice right behind itself
        synced(k, 60)
        assert replayer.finals_replayed >= 2 * len(ids)
        wait_link(k, lambda doc: replayed(doc) >= replayer.finals_replayed, 30, "every replay read")
        base = replayed(link(k))
        again = replayer.replay_all()  # and once more, long after
        wait_link(k, lambda doc: replayed(doc) >= base + again, 30, "the late replays read")
        doc = k.status()
        assert doc["queue"]["pending"] == 0 and doc["queue"]["delivered"] == 20
        figure = check_exactly_once(k, receipts)
        print(
            f"R7 hostile_acks={sent} replayed_results={replayed(doc['link'])} deletions_before_centre=0 "
            + figure_text(figure)
        )
        assert k.agent is not None and k.agent.poll() is None
    finally:
        if replayer is not None:
            replayer.close()
        attacker.disconnect()
        attacker.loop_stop()
        k.close()
