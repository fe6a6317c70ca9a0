"""Bounded chaos on the link of the whole kit: broker restarts (R2), link flaps (R3) and
hostile acks (R7), each while enrollments are committed and the backlog drains.

`EKTP_CHAOS=full` (set by bench/chaos.py) scales them to the full runs of issue 6:
20 broker restarts, 10 minutes of flaps.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from tests.agentkit import Kit
from tests.chaos.test_chaos import check_exactly_once, collect, enroll_direct
from tests.netkit import Broker, TcpProxy
from wire.ack import AckResult, AckStatus, sign_ack
from wire.keys import load_central_private

FULL = os.environ.get("EKTP_CHAOS") == "full"
KIOSK = "320715-01"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


def test_r2_broker_killed_and_restarted_mid_drain(tmp_path: Path, broker: Broker) -> None:
    restarts = 20 if FULL else 3
    k = Kit(tmp_path / "kit", broker.port)
    try:
        k.setup_keys()
        k.start_central()
        k.start_agent()
        receipts: list[dict[str, object]] = []
        rnd = random.Random(2)
        for i in range(restarts):
            loader = enroll_direct(k, 30, seed=100 * (i + 1))
            time.sleep(rnd.uniform(0.5, 2.0))
            broker.kill()
            time.sleep(rnd.uniform(0.2, 1.0))
            broker.start()
            receipts += collect(loader)
        assert k.agent_cli("sync", "--wait", "--timeout", "180").returncode == 0
        figure = check_exactly_once(k, receipts)
        print(f"R2 restarts={restarts} {' '.join(f'{a}={b}' for a, b in figure.items())}")
        assert figure["lost"] == 0 and figure["duplicated"] == 0
        assert k.agent is not None and k.agent.poll() is None
    finally:
        k.close()


def test_r3_link_flaps_deliver_everything_without_operator_action(tmp_path: Path, broker: Broker) -> None:
    duration = 600.0 if FULL else 25.0
    proxy = TcpProxy(broker.port)
    k = Kit(tmp_path / "kit", proxy.port)  # the kiosk reaches the broker only through the proxy
    try:
        k.setup_keys()  # and the centre talks to the broker directly:
        k.central_conf.write_text(
            k.central_conf.read_text().replace(f"port = {proxy.port}", f"port = {broker.port}")
        )
        k.start_central()
        k.start_agent()
        rnd = random.Random(3)
        receipts: list[dict[str, object]] = []
        flaps = {"drop": 0, "stall": 0, "throttle": 0}
        started, seed = time.monotonic(), 1
        while time.monotonic() - started < duration:
            loader = enroll_direct(k, 10, seed=seed)
            seed += 10
            kind = rnd.choice(list(flaps))
            flaps[kind] += 1
            if kind == "drop":
                proxy.drop()
            elif kind == "stall":
                proxy.stall(True)
            else:
                proxy.bytes_per_s = 500_000
            time.sleep(rnd.uniform(2, 10) if FULL else rnd.uniform(1, 3))
            proxy.stall(False)
            proxy.bytes_per_s = None
            receipts += collect(loader)
        assert (
            k.agent_cli("sync", "--wait", "--timeout", "180").returncode == 0
        )  # no operator action in between
        figure = check_exactly_once(k, receipts)
        print(
            f"R3 seconds={duration:.0f} flaps={sum(flaps.values())} {flaps} "
            + " ".join(f"{a}={b}" for a, b in figure.items())
        )
        assert figure["lost"] == 0 and figure["duplicated"] == 0
    finally:
        k.close()
        proxy.close()


def test_r7_forged_replayed_and_garbage_acks_delete_nothing(tmp_path: Path, broker: Broker) -> None:
    k = Kit(tmp_path / "kit", broker.port)
    attacker = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="attacker", protocol=mqtt.MQTTv5)
    try:
        k.setup_keys()
        k.start_agent()  # no centre yet: everything stays undelivered while we attack
        receipts = collect(enroll_direct(k, 20, seed=1))
        ids = [str(r["packet_id"]) for r in receipts]
        central_keys = load_central_private(k.root / "central" / "central.key")
        # the receipts do not carry the bytes: these name other bytes, as a replay of another
        # packet's ack would; the forged, foreign and truncated ones fail before the hash matters
        results = [AckResult(i, "00" * 32, AckStatus.STORED) for i in ids]
        payloads = [
            sign_ack(KIOSK, results, Ed25519PrivateKey.generate()),  # forged
            sign_ack("320715-02", results, central_keys.signing),  # another kiosk's
            sign_ack(KIOSK, results, central_keys.signing)[:-3],  # truncated
            b"\x00garbage",
            os.urandom(300),
            json.dumps({"delivered": ids}).encode(),
        ]
        attacker.connect("127.0.0.1", broker.port)
        attacker.loop_start()
        sent = 0
        for _ in range(5 if FULL else 2):
            for payload in payloads:
                attacker.publish(f"ektp/v1/{KIOSK}/ack", payload, qos=1).wait_for_publish(5)
                sent += 1
        time.sleep(1.5)
        doc = k.status()
        assert doc["queue"]["pending"] == 20, "a hostile ack deleted something"
        assert doc["link"]["ignored_acks"] >= sent
        k.start_central()  # now the genuine acks: everything delivered, once
        assert k.agent_cli("sync", "--wait", "--timeout", "60").returncode == 0
        genuine_replay = sign_ack(KIOSK, results[:5], central_keys.signing)
        attacker.publish(f"ektp/v1/{KIOSK}/ack", genuine_replay, qos=1).wait_for_publish(5)
        figure = check_exactly_once(k, receipts)
        print(
            f"R7 hostile_acks={sent} deletions_before_centre=0 "
            + " ".join(f"{a}={b}" for a, b in figure.items())
        )
        assert figure["lost"] == 0 and figure["duplicated"] == 0
        assert k.agent is not None and k.agent.poll() is None
    finally:
        attacker.disconnect()
        attacker.loop_stop()
        k.close()
