"""The link against a broker that limits it, each limit set in Mosquitto's own config:
Maximum Packet Size, Receive Maximum, an ACL that refuses the enrollment topic, and
message_size_limit.

What Mosquitto 2.0.11 does, checked here and by hand with paho 2.2:
- ``max_packet_size N`` is sent in CONNACK as Maximum Packet Size; a bigger packet from
  the client makes the broker close the connection ("disconnected due to oversize packet").
- ``max_inflight_messages N`` is sent in CONNACK as Receive Maximum; the broker does not
  enforce it on incoming QoS 1 (it PUBACKs at once), so the limit is the kiosk's to keep.
- an ACL that denies a v5 client's publish: PUBACK with reason 0x87 (not authorized).
- ``message_size_limit N`` is not in CONNACK; a bigger publish gets PUBACK reason 0x95,
  which MQTT 5 does not allow in a PUBACK: paho 2.2 calls it a protocol error and drops
  the connection; the chunks that got through are kept by the centre, so the packet still
  arrives after some reconnects (the last test below).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import agent.link.transfer
from tests.factories import small_record as tiny_record
from tests.linkkit import Centre, Keys, Kiosk, all_delivered, assert_exactly_once, wait_for
from tests.netkit import Broker
from wire.record import EnrollmentRecord

KIOSK = "320715-01"


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path, KIOSK)


@pytest.fixture
def tiny() -> EnrollmentRecord:
    return tiny_record()  # a packet of about 3 KB; the synthetic resident's is about 230 KB


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    """Whatever a test starts, stopped at its end in reverse order, whether it passed or not."""
    with contextlib.ExitStack() as s:
        yield s


def started(stack: contextlib.ExitStack, tmp_path: Path, extra_config: str) -> Broker:
    broker = Broker(tmp_path / "broker", extra_config=extra_config)
    broker.start()
    stack.callback(broker.stop)
    return broker


def centre_and_kiosk(
    stack: contextlib.ExitStack, tmp_path: Path, broker: Broker, keys: Keys, **kiosk_options: object
) -> tuple[Centre, Kiosk]:
    centre = Centre(tmp_path / "c", broker.port, keys)
    stack.callback(centre.stop)
    kiosk = Kiosk(tmp_path / "k", broker.port, keys, **kiosk_options)  # type: ignore[arg-type]
    stack.callback(kiosk.stop)
    return centre, kiosk


def test_packet_over_maximum_packet_size_crosses_in_chunks_under_the_limit(
    tmp_path: Path, stack: contextlib.ExitStack, keys: Keys, tiny: EnrollmentRecord
) -> None:
    """A ~230 KB packet through a broker that takes at most 64 KiB per MQTT packet: the chunks
    keep under the limit (the broker never has to close the connection) and it arrives once."""
    broker = started(stack, tmp_path, "max_packet_size 65536")
    centre, kiosk = centre_and_kiosk(stack, tmp_path, broker, keys, window=4, health_s=0.5)
    kiosk.commit(2, tiny)
    big = kiosk.commit(1)[0]  # seq 3
    kiosk.commit(2, tiny)
    wait_for(lambda: all_delivered(kiosk), 30, "all five packets delivered, the big one in chunks")
    stats = kiosk.link.stats
    assert stats.maximum_packet_size == 65536
    assert stats.reconnects == 0 and "oversize" not in broker.log_text()
    assert stats.published >= 5 + len(big.data) // 65536, "the big packet went in several chunks"
    assert_exactly_once(centre, kiosk)


def test_health_over_maximum_packet_size_is_not_published(
    tmp_path: Path, stack: contextlib.ExitStack, keys: Keys
) -> None:
    """A health snapshot over the limit would make the broker drop the connection at every
    connect: it is skipped (and logged), and the link stays up."""
    broker = started(stack, tmp_path, "max_packet_size 300")  # the status (~150 bytes) fits, health not
    centre, kiosk = centre_and_kiosk(stack, tmp_path, broker, keys, health_s=0.5)
    wait_for(lambda: (centre.status(KIOSK) or {}).get("state") == "online", 10, "the kiosk online")
    kiosk.loop.call_soon_threadsafe(kiosk.link.health_changed)
    time.sleep(1.2)  # three health publishes due: any of them would have cost the connection
    assert kiosk.link.stats.connected and kiosk.link.stats.reconnects == 0
    assert "oversize" not in broker.log_text()
    assert centre.health(KIOSK) is None


def test_receive_maximum_caps_the_window_and_every_publish(
    tmp_path: Path, stack: contextlib.ExitStack, keys: Keys
) -> None:
    """Receive Maximum 2 (``max_inflight_messages 2``): at most two packets in the window and at
    most two QoS 1 publishes of any kind (health too) awaiting their PUBACK."""
    broker = started(stack, tmp_path, "max_inflight_messages 2")
    centre, kiosk = centre_and_kiosk(stack, tmp_path, broker, keys, window=8, health_s=0.5)
    kiosk.commit(30)
    wait_for(lambda: all_delivered(kiosk), 60, "all 30 packets delivered")
    stats = kiosk.link.stats
    assert stats.receive_maximum == 2
    assert stats.awaiting_puback_peak == 2, "publishes fill the broker's Receive Maximum, not beyond"
    assert_exactly_once(centre, kiosk)


ACL_DENY_ENROLLMENT = """\
topic readwrite ektp/v1/+/status
topic readwrite ektp/v1/+/health
topic readwrite ektp/v1/+/ack
topic read ektp/v1/+/enrollment
"""
ACL_ALLOW_ALL = "topic readwrite ektp/v1/#\n"


def test_puback_not_authorized_keeps_packets_then_delivers_once_allowed(
    tmp_path: Path, stack: contextlib.ExitStack, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mosquitto 2.0.11 answers a v5 publish that its ACL denies with PUBACK 0x87 (verified):
    the packets stay pending (never marked sent, never lost) and are tried again; once the
    ACL allows the topic, each is delivered exactly once."""
    monkeypatch.setattr(agent.link.transfer, "REFUSED_RETRY_S", 0.2)
    acl = tmp_path / "ektp.acl"
    acl.write_text(ACL_DENY_ENROLLMENT)
    broker = started(stack, tmp_path, f"acl_file {acl}")
    centre, kiosk = centre_and_kiosk(stack, tmp_path, broker, keys, window=4, ack_timeout_s=2)
    kiosk.commit(6)
    wait_for(lambda: kiosk.link.stats.refused_pubacks >= 12, 20, "every packet refused, and retried")
    s = kiosk.stats()
    assert (s.pending, s.sent, s.delivered) == (6, 0, 0)
    assert centre.packets() == []
    assert kiosk.link.stats.connected and kiosk.link.stats.reconnects == 0
    assert (centre.status(KIOSK) or {}).get("state") == "online"  # status is allowed: the kiosk is seen

    acl.write_text(ACL_ALLOW_ALL)
    broker.restart()
    wait_for(lambda: all_delivered(kiosk), 30, "delivery once the ACL allows the topic")
    assert_exactly_once(centre, kiosk)


def test_packet_over_message_size_limit_still_arrives(
    tmp_path: Path, stack: contextlib.ExitStack, keys: Keys
) -> None:
    """Mosquitto 2.0.11 refuses a publish over ``message_size_limit`` (not advertised in CONNACK)
    with PUBACK 0x95, a code MQTT 5 allows only in CONNACK/DISCONNECT: paho 2.2 drops the
    connection. Each new connection starts with small chunks that the centre keeps, so the packet
    still arrives, once; it costs reconnects (use max_packet_size, which is advertised, instead)."""
    broker = started(stack, tmp_path, "message_size_limit 65536")
    centre, kiosk = centre_and_kiosk(stack, tmp_path, broker, keys)
    kiosk.commit(1)
    wait_for(lambda: all_delivered(kiosk), 60, "the packet delivered in spite of the dropped connections")
    assert_exactly_once(centre, kiosk)
