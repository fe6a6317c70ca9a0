"""The kiosk's link and the centre on a real Mosquitto: exactly once through broker
restarts, link cuts and stalls, a stopped centre, and hostile acks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.linkkit import Centre, Keys, Kiosk, Watcher, all_delivered, assert_exactly_once, wait_for
from tests.netkit import Broker, TcpProxy
from wire.ack import AckResult, AckStatus, sign_ack
from wire.chunk import packet_sha256

KIOSK = "320715-01"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path, KIOSK)


def test_drain_end_to_end_status_and_health(tmp_path: Path, broker: Broker, keys: Keys) -> None:
    centre = Centre(tmp_path / "c", broker.port, keys)
    watcher = Watcher(broker.port, "ektp/v1/#")
    kiosk = Kiosk(tmp_path / "k", broker.port, keys)
    try:
        kiosk.commit(25)
        wait_for(lambda: all_delivered(kiosk), 30, "all 25 packets delivered")
        assert_exactly_once(centre, kiosk)
        wait_for(lambda: watcher.last("/health") is not None, 10, "a health message")
        status = watcher.last(f"{KIOSK}/status")
        assert status is not None and json.loads(status[1])["state"] == "online"
        health = json.loads(watcher.last(f"{KIOSK}/health")[1])  # type: ignore[index]
        assert health["kiosk_id"] == KIOSK and health["link"]["connected"] is True
        enrollments = [m for m in watcher.msgs if m[0].endswith("/enrollment")]
        assert len(enrollments) >= 25
    finally:
        kiosk.stop()
        watcher.close()
        centre.stop()
    # a clean stop says offline itself (the Will is not sent on a clean disconnect)
    late = Watcher(broker.port, f"ektp/v1/{KIOSK}/status")
    try:
        wait_for(lambda: late.last("/status") is not None, 5, "the retained status")
        _topic, payload, retained = late.last("/status")  # type: ignore[misc]
        assert retained and json.loads(payload)["state"] == "offline"
    finally:
        late.close()


def test_broker_killed_and_restarted_mid_drain(tmp_path: Path, broker: Broker, keys: Keys) -> None:
    centre = Centre(tmp_path / "c", broker.port, keys)
    kiosk = Kiosk(tmp_path / "k", broker.port, keys, window=4, ack_timeout_s=3)
    try:
        kiosk.commit(150)
        for round_ in range(3):
            seen = kiosk.stats().delivered
            wait_for(lambda r=round_: kiosk.link.stats.connection == r + 1, 30, f"connection {round_ + 1}")
            wait_for(lambda s=seen: kiosk.stats().delivered > s, 30, "progress on this connection")
            broker.kill()
            kiosk.commit(5)  # enrollments go on while the broker is down
            broker.start()
        wait_for(lambda: all_delivered(kiosk), 60, "every packet delivered after the restarts")
        assert_exactly_once(centre, kiosk)
        assert kiosk.link.stats.reconnects >= 3
    finally:
        kiosk.stop()
        centre.stop()


def test_link_cut_stalled_and_throttled(tmp_path: Path, broker: Broker, keys: Keys) -> None:
    centre = Centre(tmp_path / "c", broker.port, keys)
    proxy = TcpProxy(broker.port)
    kiosk = Kiosk(tmp_path / "k", proxy.port, keys, window=4, ack_timeout_s=4)
    try:
        kiosk.commit(40)
        wait_for(lambda: kiosk.stats().delivered >= 3, 30, "first deliveries")
        proxy.drop()  # a cut
        proxy.refuse(True)
        kiosk.commit(5)
        proxy.refuse(False)
        wait_for(lambda: kiosk.stats().delivered >= 15, 30, "deliveries after the cut")
        proxy.stall(True)  # the link hangs without closing: keepalive must notice
        kiosk.commit(5)
        wait_for(lambda: not kiosk.link.stats.connected, 20, "the stalled link to be declared dead")
        proxy.drop()
        proxy.stall(False)
        proxy.bytes_per_s = 2_000_000  # throttled
        wait_for(lambda: all_delivered(kiosk), 60, "every packet delivered")
        assert_exactly_once(centre, kiosk)
    finally:
        kiosk.stop()
        proxy.close()
        centre.stop()


def test_centre_away_packets_stay_sent_and_are_resent(tmp_path: Path, broker: Broker, keys: Keys) -> None:
    # A bystander subscribes, so the broker PUBACKs with success although no centre stores anything
    bystander = Watcher(broker.port, "ektp/v1/+/enrollment")
    kiosk = Kiosk(tmp_path / "k", broker.port, keys, window=4, ack_timeout_s=1)
    centre: Centre | None = None
    try:
        kiosk.commit(10)
        wait_for(lambda: kiosk.stats().sent >= 1, 20, "packets published with nobody storing them")
        assert kiosk.stats().delivered == 0
        wait_for(lambda: kiosk.link.stats.probes >= 2, 20, "unanswered packets asked about again")
        centre = Centre(tmp_path / "c", broker.port, keys)
        wait_for(lambda: all_delivered(kiosk), 30, "delivery once the centre is back")
        assert_exactly_once(centre, kiosk)
    finally:
        kiosk.stop()
        bystander.close()
        if centre is not None:
            centre.stop()


def test_no_centre_at_all_holds_the_packets_and_retries_soon(
    tmp_path: Path, broker: Broker, keys: Keys
) -> None:
    """PUBACK 0x10 (no matching subscribers): kept, sent again within seconds once a centre subscribes."""
    kiosk = Kiosk(tmp_path / "k", broker.port, keys, window=4, ack_timeout_s=600)
    centre: Centre | None = None
    try:
        kiosk.commit(5)
        wait_for(lambda: kiosk.link.stats.refused_pubacks >= 2, 20, "refused publishes (nobody subscribes)")
        assert kiosk.stats().sent == 0 and kiosk.stats().pending == 5
        centre = Centre(tmp_path / "c", broker.port, keys)
        wait_for(
            lambda: all_delivered(kiosk), 15, "delivery within seconds, long before the 600 s ack timeout"
        )
        assert_exactly_once(centre, kiosk)
    finally:
        kiosk.stop()
        if centre is not None:
            centre.stop()


def test_hostile_acks_delete_nothing(tmp_path: Path, broker: Broker, keys: Keys) -> None:
    kiosk = Kiosk(tmp_path / "k", broker.port, keys, window=8, ack_timeout_s=30)
    attacker = Watcher(broker.port, "ektp/v1/+/ack")
    bystander = Watcher(broker.port, "ektp/v1/+/enrollment")  # PUBACKs with success, stores nothing
    topic = f"ektp/v1/{KIOSK}/ack"
    try:
        packets = kiosk.commit(6)
        # nobody confirms bytes, so the kiosk sends one packet and waits (no rate measured)
        wait_for(lambda: kiosk.stats().sent >= 1, 20, "a packet published (no centre, so none acked)")
        ids = [p.packet_id for p in packets]
        results = [AckResult(p.packet_id, packet_sha256(p.data), AckStatus.STORED) for p in packets]
        forged = sign_ack(KIOSK, results, Ed25519PrivateKey.generate())  # not the centre's key
        other_kiosk = sign_ack("320715-02", results, keys.central.signing)  # the centre's, but not for us
        garbage = [b"", b"\x00" * 10, b"EKTA" + b"\xff" * 200, json.dumps({"ids": ids}).encode()]
        truncated = sign_ack(KIOSK, results, keys.central.signing)[:-1]
        huge = b"EKTA\x02" + b"\xff" * (2 << 20)  # over the Maximum Packet Size the kiosk announces
        # the centre's genuine signature, for this kiosk, but about other bytes under the same ids:
        other_bytes = sign_ack(
            KIOSK, [AckResult(i, "ab" * 32, AckStatus.STORED) for i in ids], keys.central.signing
        )
        for payload in [huge, forged, other_kiosk, truncated, *garbage, other_bytes]:
            attacker.publish(topic, payload)
        wait_for(lambda: sum(kiosk.link.stats.ignored_acks.values()) >= 7, 10, "every bad ack looked at")
        wait_for(lambda: kiosk.link.stats.ignored_acks["other-bytes"] >= 1, 10, "the other-bytes ack")
        assert (
            sum(kiosk.link.stats.ignored_acks.values()) - kiosk.link.stats.ignored_acks["other-bytes"] == 7
        ), "the broker handed the kiosk 2 MiB of garbage"
        s = kiosk.stats()
        assert s.delivered == 0 and s.sent + s.pending == 6, "a hostile ack deleted something"
        assert kiosk.thread.is_alive()
        # a genuine ack for the first two (one in the window, one not yet read: both checked
        # against the bytes held), replayed at once, so that the replay is read before the
        # outbox has the first one's outcome; then replayed again after it is written. Each
        # replayed result is counted as ignored ("replayed"), and only those two packets go.
        genuine = sign_ack(KIOSK, results[:2], keys.central.signing)
        both = [attacker.client.publish(topic, genuine, qos=1) for _ in range(2)]  # back to back
        for info in both:
            info.wait_for_publish(5)
        wait_for(lambda: kiosk.link.stats.ignored_acks["replayed"] >= 2, 10, "the first replay read")
        wait_for(lambda: kiosk.stats().delivered == 2, 10, "the genuine ack applied")
        attacker.publish(topic, genuine)
        wait_for(lambda: kiosk.link.stats.ignored_acks["replayed"] == 4, 10, "the late replay read")
        s = kiosk.stats()
        assert s.delivered == 2 and s.sent + s.pending == 4, "the rest still held"
        assert s.total_committed == 6
        assert set(kiosk.link.stats.ignored_acks) >= {
            "bad-signature",
            "wrong-kiosk",
            "truncated",
            "bad-magic",
        }
    finally:
        attacker.close()
        bystander.close()
        kiosk.stop()
