"""The per-connect counter in the status and the Last Will, on a real Mosquitto.

Each connection gets a fresh paho client whose Will carries that connection's counter,
the same as its online status; the centre applies an offline only if its counter is not
older than the newest online, so a Will that comes late never hides a newer online kiosk.

Mosquitto 2.0.11 publishes an old connection's Will at session takeover, before the
CONNACK of the new connection with the same client id (checked below): on one broker the
old Will always comes before the new online. A late Will can still happen (a broker
cluster, a bridge); the test delivers the very bytes of the old Will again after the new
online, and the centre must keep the kiosk online.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.linkkit import Centre, Keys, Kiosk, Watcher, wait_for
from tests.netkit import Broker, TcpProxy

KIOSK = "320715-01"
SENTINEL = "320715-99"  # a second kiosk's status, published after the late Will: once seen, it was handled
STATUS = f"ektp/v1/{KIOSK}/status"


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as s:
        yield s


def states(watcher: Watcher) -> list[tuple[str, int]]:
    return [(d["state"], d["connection"]) for d in watcher.statuses(KIOSK)]


def centre_sees(centre: Centre, state: str, connection: int) -> bool:
    status = centre.status(KIOSK) or {}
    return status.get("state") == state and status.get("connection") == connection


def test_each_will_carries_its_connection_and_a_late_will_is_ignored(
    tmp_path: Path, stack: contextlib.ExitStack
) -> None:
    keys = Keys(tmp_path, KIOSK)
    broker = Broker(tmp_path / "broker")
    broker.start()
    stack.callback(broker.stop)
    centre = Centre(tmp_path / "c", broker.port, keys)
    stack.callback(centre.stop)
    proxy = TcpProxy(broker.port)
    stack.callback(proxy.close)
    watcher = Watcher(broker.port, "ektp/v1/+/status")
    stack.callback(watcher.close)
    kiosk = Kiosk(tmp_path / "k", proxy.port, keys)
    stack.callback(kiosk.stop)

    wait_for(lambda: states(watcher) == [("online", 1)], 10, "the online of connection 1")
    assert kiosk.link.stats.connection == 1
    wait_for(lambda: centre_sees(centre, "online", 1), 10, "the centre: online, connection 1")

    # The kiosk's side of the TCP connection dies and the broker's stays open and silent (a
    # mobile link that changed address). The kiosk reconnects with the same client id: the
    # broker takes the session over and publishes the old Will then, before the new online.
    proxy.cut_client_side()
    wait_for(lambda: len(states(watcher)) >= 3, 10, "the Will of connection 1 and the online of 2")
    assert states(watcher) == [("online", 1), ("offline", 1), ("online", 2)]
    assert kiosk.link.stats.connection == 2
    wait_for(lambda: centre_sees(centre, "online", 2), 10, "the centre: online, connection 2")

    # The Will of connection 1 once more, late, as a broker cluster could deliver it.
    with watcher.lock:
        will = next(p for t, p, _r in watcher.msgs if t == STATUS and json.loads(p)["state"] == "offline")
    assert json.loads(will)["connection"] == 1
    watcher.publish(STATUS, will)
    watcher.publish(f"ektp/v1/{SENTINEL}/status", json.dumps({"state": "online", "connection": 1}).encode())
    wait_for(lambda: centre.status(SENTINEL) is not None, 10, "the centre to handle the late Will")
    assert centre_sees(centre, "online", 2), "a late Will of connection 1 hid the online of connection 2"

    # Now the whole connection dies (both sides): the broker sends the Will of connection 2.
    proxy.drop()
    wait_for(lambda: len(states(watcher)) >= 6, 10, "the Will of connection 2 and the online of 3")
    assert states(watcher)[4:] == [("offline", 2), ("online", 3)]
    wait_for(lambda: centre_sees(centre, "online", 3), 10, "the centre: online, connection 3")

    # A newcomer gets the latest online as the retained status.
    fresh = Watcher(broker.port, STATUS)
    stack.callback(fresh.close)
    wait_for(lambda: fresh.last("/status") is not None, 5, "the retained status")
    _topic, payload, retained = fresh.last("/status")  # type: ignore[misc]
    assert retained and json.loads(payload)["state"] == "online" and json.loads(payload)["connection"] == 3
