"""What the link and the centre do when their own parts fail or race: an outbox that raises,
a health snapshot that cannot be built, a stop while the broker does not answer, a slow
outbox thread when the connection drops, a central store that fails, a PUBACK after a
reconnect (each of these was a bug: the link or the consumer died silently, or did the
wrong thing), and a commit that lands while the drain reads the outbox."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import agent.link.drain
import central.consumer
from agent.outbox import StoreCorrupt
from central.config import CentralConfig
from central.consumer import CentralConsumer, _Incoming
from central.store import CentralStore, StoreUnavailable
from tests.linkkit import Centre, Keys, Kiosk, Watcher, all_delivered, assert_exactly_once, wait_for
from tests.netkit import Broker, TcpProxy

KIOSK = "320715-01"


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as s:
        yield s


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path, KIOSK)


@pytest.fixture
def broker(tmp_path: Path, stack: contextlib.ExitStack) -> Broker:
    b = Broker(tmp_path / "broker")
    b.start()
    stack.callback(b.stop)
    return b


def failing_first(
    fn: Callable[..., Any], times: int, exc: Callable[[], Exception], calls: Counter[str]
) -> Any:
    """``fn``, except that its first ``times`` calls raise ``exc()``."""
    name = getattr(fn, "__name__", "call")

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[name] += 1
        if calls[name] <= times:
            raise exc()
        return fn(*args, **kwargs)

    return wrapper


def test_outbox_failures_are_logged_and_the_drain_goes_on(
    tmp_path: Path,
    stack: contextlib.ExitStack,
    broker: Broker,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every outbox call the drain makes fails at first (a damaged page, a disk error): the link
    logs it, shows it in health, tries again, and delivers everything exactly once."""
    monkeypatch.setattr(agent.link.drain, "OUTBOX_RETRY_S", 0.2)
    monkeypatch.setattr(agent.link.drain, "TICK_S", 0.1)
    bystander = Watcher(broker.port, "ektp/v1/+/enrollment")  # PUBACKs with success, stores nothing
    stack.callback(bystander.close)
    kiosk = Kiosk(tmp_path / "k", broker.port, keys, window=4, ack_timeout_s=0.5)
    stack.callback(kiosk.stop)
    calls: Counter[str] = Counter()
    outbox = kiosk.outbox
    corrupt = lambda: StoreCorrupt("database disk image is malformed", path=outbox.path)  # noqa: E731
    for name in ("next_batch", "mark_sent", "requeue", "mark_delivered"):
        setattr(outbox, name, failing_first(getattr(outbox, name), 1, corrupt, calls))

    kiosk.commit(6)
    # no centre yet: published, PUBACKed, not answered; the ack timeout probes them again (requeue)
    wait_for(lambda: calls["requeue"] >= 2, 20, "a packet sent again after its ack timeout")
    assert kiosk.thread.is_alive()
    centre = Centre(tmp_path / "c", broker.port, keys)
    stack.callback(centre.stop)
    wait_for(lambda: all_delivered(kiosk), 30, "every packet delivered despite the failures")
    assert_exactly_once(centre, kiosk)
    assert all(calls[n] >= 2 for n in ("next_batch", "mark_sent", "requeue", "mark_delivered")), calls
    stats = kiosk.link.stats
    assert stats.outbox_errors == 4 and stats.reconnects == 0 and stats.connected
    wait_for(lambda: kiosk.link.stats.last_error == "", 5, "the error cleared once the outbox works again")
    logged = [r.getMessage() for r in caplog.records if r.name == "ektp.link" and r.levelname == "ERROR"]
    assert sum("outbox: cannot" in m for m in logged) == 4


def test_a_failing_health_snapshot_does_not_stop_health_or_the_link(
    tmp_path: Path, stack: contextlib.ExitStack, broker: Broker, keys: Keys
) -> None:
    calls = Counter[str]()

    async def health() -> dict[str, Any]:
        calls["health"] += 1
        if calls["health"] == 1:
            return {"not json": object()}  # json.dumps raises TypeError
        if calls["health"] == 2:
            raise RuntimeError("a device table changed size during iteration")
        return {"kiosk_id": KIOSK, "n": calls["health"]}

    watcher = Watcher(broker.port, f"ektp/v1/{KIOSK}/health")
    stack.callback(watcher.close)
    kiosk = Kiosk(tmp_path / "k", broker.port, keys, health_s=0.5, health=health)
    stack.callback(kiosk.stop)
    wait_for(lambda: calls["health"] >= 4, 10, "health tried at every interval")
    wait_for(lambda: watcher.last("/health") is not None, 5, "a health message after the failures")
    assert kiosk.link.stats.connected and kiosk.link.stats.reconnects == 0
    assert kiosk.thread.is_alive()


def test_stop_while_waiting_for_connack_is_prompt(
    tmp_path: Path, stack: contextlib.ExitStack, broker: Broker, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker accepts TCP but never answers CONNECT: stop() must not wait out the CONNACK
    timeout, or the service's shutdown would cancel the link mid-connect. The timeout and the
    keepalive (paho gives a silent connection up after it) are an hour here, so a stop that
    waited for either could not finish (Kiosk.stop gives it 10 s); how prompt the stop is, is
    measured in bench/timings.py."""
    monkeypatch.setattr(agent.link.drain, "CONNECT_TIMEOUT_S", 3600.0)
    proxy = TcpProxy(broker.port)
    stack.callback(proxy.close)
    proxy.stall(True)
    kiosk = Kiosk(tmp_path / "k", proxy.port, keys, keepalive_s=3600)
    wait_for(lambda: proxy.accepted >= 1, 10, "the kiosk's TCP connection")
    kiosk.stop()
    assert not kiosk.link.stats.connected
    assert "CONNACK" not in kiosk.link.stats.last_error  # stopped while waiting, not timed out


def test_a_dropped_connection_is_never_revived_by_paho(
    tmp_path: Path, stack: contextlib.ExitStack, broker: Broker, keys: Keys
) -> None:
    """paho reconnects a client by itself (after 1 s) unless told not to. If the link is slow to
    see the drop (its outbox thread busy), the old client came back with the old Will and its
    memory queue: two clients of one kiosk. Only the link's fresh client may reconnect."""
    proxy = TcpProxy(broker.port)
    stack.callback(proxy.close)
    kiosk = Kiosk(tmp_path / "k", proxy.port, keys)
    stack.callback(kiosk.stop)
    wait_for(lambda: kiosk.link.stats.connected, 10, "connection 1")
    busy = threading.Event()
    kiosk.db.submit(busy.wait, 10)  # the outbox thread is slow (a big vacuum, a slow SD card) ...
    kiosk.loop.call_soon_threadsafe(kiosk.link.wake)  # ... and the drain is waiting on it
    proxy.drop()
    time.sleep(2.0)  # paho's own reconnect would come after 1 s
    busy.set()
    wait_for(lambda: kiosk.link.stats.connection == 2 and kiosk.link.stats.connected, 10, "connection 2")
    assert proxy.accepted == 2, "a client other than the link's fresh one connected"


class _FakeClient:
    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acked.append(mid)


def test_centre_pubacks_only_on_the_connection_that_delivered_the_message(tmp_path: Path) -> None:
    """MQTT packet ids belong to one connection: after a reconnect, mid 7 names another message,
    and PUBACKing it would tell the broker a message nobody stored was taken care of."""
    consumer = CentralConsumer(CentralConfig(), None, lambda: None)  # type: ignore[arg-type,return-value]
    fake = _FakeClient()
    old = _Incoming("ektp/v1/k/enrollment", b"", 7, 1, fake, connection=1)  # type: ignore[arg-type]
    consumer._connection = 2
    consumer._puback(old)
    assert fake.acked == []
    now = _Incoming("ektp/v1/k/enrollment", b"", 8, 1, fake, connection=2)  # type: ignore[arg-type]
    consumer._puback(now)
    assert fake.acked == [8]


def test_centre_store_failures_are_retried_and_the_consumer_lives(
    tmp_path: Path,
    stack: contextlib.ExitStack,
    broker: Broker,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(central.consumer, "STORE_RETRY_MIN_S", 0.05)
    calls: Counter[str] = Counter()

    def flaky(store: CentralStore) -> CentralStore:
        unavailable = lambda: StoreUnavailable("central store: connection refused")  # noqa: E731
        store.commit_packets = failing_first(store.commit_packets, 3, unavailable, calls)  # type: ignore[method-assign]
        return store

    centre = Centre(tmp_path / "c", broker.port, keys, wrap_store=flaky)
    stack.callback(centre.stop)
    kiosk = Kiosk(tmp_path / "k", broker.port, keys, window=4)
    stack.callback(kiosk.stop)
    kiosk.commit(8)
    wait_for(lambda: all_delivered(kiosk), 30, "every packet delivered after the store came back")
    assert_exactly_once(centre, kiosk)
    assert centre.consumer.counts["store_errors"] == 3
    assert centre.thread.is_alive()


def test_a_commit_during_the_drains_read_is_sent_at_once(
    tmp_path: Path, stack: contextlib.ExitStack, broker: Broker, keys: Keys
) -> None:
    """The service calls wake() after every commit. A commit (and its wake) that lands while the
    drain is inside its outbox read is not in that read, and the read says "nothing more":
    the wake must still send it now, not at the next reconnect or ack timeout."""
    centre = Centre(tmp_path / "c", broker.port, keys)
    stack.callback(centre.stop)
    kiosk = Kiosk(tmp_path / "k", broker.port, keys, window=8, ack_timeout_s=60)
    stack.callback(kiosk.stop)
    kiosk.commit(2)
    wait_for(lambda: all_delivered(kiosk), 20, "the first two delivered")
    read = kiosk.outbox.next_batch
    raced: list[str] = []

    def read_then_commit(after_seq: int, limit: int, **kw: Any) -> Any:
        batch = read(after_seq, limit, **kw)
        if not raced:  # the service commits and wakes the link after the read, before the drain waits
            raced.append(kiosk.commit_on_outbox_thread().packet_id)
            kiosk.loop.call_soon_threadsafe(kiosk.link.wake)
        return batch

    kiosk.outbox.next_batch = read_then_commit  # type: ignore[method-assign]
    kiosk.loop.call_soon_threadsafe(kiosk.link.wake)  # the drain reads (and finds nothing) ...
    wait_for(lambda: bool(raced), 5, "the racing commit")
    wait_for(lambda: all_delivered(kiosk), 5, "the racing packet delivered without waiting for a timeout")
    assert kiosk.link.stats.republished == 0 and kiosk.link.stats.reconnects == 0
    assert_exactly_once(centre, kiosk)
