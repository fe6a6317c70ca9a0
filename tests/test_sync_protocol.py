"""Protocol 2 on a real Mosquitto, with the real link and the real consumer over both central
stores: acks bound to the kiosk and the packet's bytes, damaged bytes sent again, rejected
packets resubmitted, and ``sync`` cutting the reconnect backoff short."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import agent.link.transfer
from tests.centralkit import BACKENDS, store_url
from tests.linkkit import Centre, Keys, Kiosk, all_delivered, assert_exactly_once, small_record, wait_for
from tests.netkit import Broker, TcpProxy
from wire.chunk import Chunk, packet_sha256
from wire.keys import create_kiosk_key, public_path
from wire.packet import seal

KIOSK = "320715-01"
PEER = "320715-02"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path, KIOSK)


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from store_url(request.param, tmp_path)


def publish(port: int, topic: str, payload: bytes) -> None:
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"peer-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
    )
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


def test_a_peer_storing_under_another_kiosks_pending_id_frees_nothing_of_it(
    tmp_path: Path, broker: Broker, keys: Keys, url: str
) -> None:
    """Kiosk B (registered, its own key) learns kiosk A's pending packet id and has the centre
    store a packet of its own under that id first, then also pushes its bytes on A's topic.
    A's packet must still be stored, as A's bytes: under protocol 1 the centre acked it as a
    duplicate of B's and A deleted an enrollment the centre never had."""
    proxy = TcpProxy(broker.port)
    proxy.refuse(True)  # kiosk A is offline while B acts
    centre = Centre(tmp_path / "c", broker.port, keys, store_url=url)
    peer_key = create_kiosk_key(tmp_path / "peer" / "kiosk.key")
    centre.register(PEER, public_path(tmp_path / "peer" / "kiosk.key").read_bytes())
    kiosk = Kiosk(tmp_path / "k", proxy.port, keys)
    try:
        mine = kiosk.commit(1)[0]
        theirs = seal(
            small_record(),
            kiosk_id=PEER,
            seq=1,
            kiosk_key=peer_key,
            central_public=keys.central.encryption.public_key(),
            clock_synced=True,
            packet_id=uuid.UUID(mine.packet_id),
        )
        chunk = Chunk(mine.packet_id, packet_sha256(theirs.data), len(theirs.data), 0, theirs.data)
        publish(broker.port, f"ektp/v1/{PEER}/enrollment", chunk.to_bytes())
        publish(broker.port, f"ektp/v1/{KIOSK}/enrollment", chunk.to_bytes())  # no ACL in this test
        wait_for(lambda: any(r["kiosk"] == PEER for r in centre.packets()), 10, "the peer's packet stored")
        assert kiosk.stats().pending == 1, "nothing of kiosk A may go while it is offline"

        proxy.refuse(False)
        wait_for(lambda: all_delivered(kiosk), 30, "kiosk A's packet delivered")
        rows = [r for r in centre.packets() if r["packet_id"] == mine.packet_id]
        assert sorted(r["kiosk"] for r in rows) == [KIOSK, PEER]
        with centre.store() as store:
            assert store.stored_sha256(KIOSK, mine.packet_id) == packet_sha256(mine.data)
            assert store.stored_sha256(PEER, mine.packet_id) == packet_sha256(theirs.data)
            reasons = [q["reason"] for q in store.quarantined()]
        assert any("not_announced" in r for r in reasons), reasons
        assert_exactly_once(centre, kiosk)
    finally:
        kiosk.stop()
        proxy.close()
        centre.stop()


def test_a_bit_flipped_in_transit_is_sent_again_and_stored_intact(
    tmp_path: Path, broker: Broker, keys: Keys, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent.link.transfer, "DAMAGED_RETRY_S", 0.2)
    proxy = TcpProxy(broker.port)
    proxy.flip_at = 100_000  # inside the first packet: one 1 MiB chunk carries it whole
    centre = Centre(tmp_path / "c", broker.port, keys, store_url=url)
    kiosk = Kiosk(tmp_path / "k", proxy.port, keys, extra_mqtt="chunk_bytes = 1048576\n")
    try:
        packets = kiosk.commit(3)
        wait_for(lambda: all_delivered(kiosk), 30, "every packet delivered")
        assert proxy.flip_at is None, "the bit was flipped"
        assert kiosk.link.stats.damaged == 1
        assert kiosk.link.stats.reconnects == 0
        with centre.store() as store:
            for p in packets:
                assert store.stored_sha256(KIOSK, p.packet_id) == packet_sha256(p.data)
            assert store.quarantined() == [], "damaged bytes are not kept"
        assert kiosk.stats().rejected == 0
        assert_exactly_once(centre, kiosk)
    finally:
        kiosk.stop()
        proxy.close()
        centre.stop()


def test_rejected_before_registration_then_resubmitted_arrives_exactly_once(
    tmp_path: Path, broker: Broker, keys: Keys, url: str
) -> None:
    centre = Centre(tmp_path / "c", broker.port, keys, store_url=url, register=False)
    kiosk = Kiosk(tmp_path / "k", broker.port, keys)
    try:
        kiosk.commit(3)
        wait_for(lambda: kiosk.stats().rejected == 3, 20, "the unregistered kiosk's packets rejected")
        info = kiosk.db.submit(kiosk.outbox.undelivered).result()
        assert all(r.state == "rejected" and "kiosk add" in (r.reason or "") for r in info), info
        assert centre.packets() == []

        centre.register(KIOSK, public_path(keys.kiosk_path).read_bytes())
        assert kiosk.db.submit(kiosk.outbox.resubmit, None).result() == 3
        kiosk.loop.call_soon_threadsafe(kiosk.link.sync_now)
        wait_for(lambda: all_delivered(kiosk), 20, "the resubmitted packets delivered")
        assert kiosk.stats().rejected == 0
        assert_exactly_once(centre, kiosk)
    finally:
        kiosk.stop()
        centre.stop()


def test_sync_now_cuts_the_reconnect_backoff_short(tmp_path: Path, broker: Broker, keys: Keys) -> None:
    centre = Centre(tmp_path / "c", broker.port, keys)
    kiosk = Kiosk(tmp_path / "k", broker.port, keys, reconnect_s=(60.0, 120.0))
    try:
        wait_for(lambda: kiosk.link.stats.connected, 10, "the kiosk connected")
        broker.kill()
        wait_for(lambda: not kiosk.link.stats.connected, 10, "the link lost")
        kiosk.commit(5)
        broker.start()
        wait_for(centre.consumer.connected.is_set, 15, "the centre back")
        assert not kiosk.link.stats.connected, "the kiosk waits out its backoff (30 s at least)"
        kiosk.loop.call_soon_threadsafe(kiosk.link.sync_now)
        wait_for(lambda: all_delivered(kiosk), 10, "delivery right after the sync, not after the backoff")
        assert_exactly_once(centre, kiosk)
    finally:
        kiosk.stop()
        centre.stop()
