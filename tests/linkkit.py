"""A kiosk link and a centre, in-process, on a real broker: the parts the link tests combine.

The kiosk side is the real ``Link`` on its own asyncio loop in a thread, over a real
SQLite outbox; the centre is the real ``CentralConsumer`` in a thread over a real SQLite
central store. Packets are real sealed packets of one small record (sealed again for
every seq, so ids, signatures and ciphertexts all differ).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.api import request
from agent.config import parse_config
from agent.link import Link
from agent.outbox import Outbox
from central.config import CentralConfig, CentralMqtt
from central.consumer import CentralConsumer
from central.store import CentralStore, open_store
from tests.agentkit import Kit
from tests.factories import record_from_resident
from wire.keys import (
    CentralPrivateKeys,
    create_central_keys,
    create_kiosk_key,
    load_central_public,
    public_path,
)
from wire.packet import SealedPacket, seal
from wire.record import EnrollmentRecord

_RECORD: EnrollmentRecord | None = None


def small_record() -> EnrollmentRecord:
    global _RECORD
    if _RECORD is None:
        from hw_sim.residents import synthetic_resident

        _RECORD = record_from_resident(synthetic_resident(3))
    return _RECORD


def wait_for(cond: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Keys:
    def __init__(self, root: Path, kiosk_id: str) -> None:
        self.central_path = root / "central" / "central.key"
        self.central: CentralPrivateKeys = create_central_keys(self.central_path)
        self.kiosk_path = root / "kiosk" / "kiosk.key"
        self.kiosk = create_kiosk_key(self.kiosk_path)
        self.kiosk_id = kiosk_id


class Centre:
    """``CentralConsumer`` on a thread, over a SQLite store in ``root``."""

    def __init__(
        self,
        root: Path,
        port: int,
        keys: Keys,
        *,
        client_id: str = "centre-1",
        prefix: str = "ektp/v1",
        wrap_store: Callable[[CentralStore], CentralStore] | None = None,
        mqtt: dict[str, Any] | None = None,
        store_url: str | None = None,
        register: bool = True,
    ) -> None:
        self.db = root / "central.db"
        self.url = store_url or str(self.db)
        self.config = CentralConfig(
            mqtt=CentralMqtt(
                host="127.0.0.1", port=port, topic_prefix=prefix, client_id=client_id, **(mqtt or {})
            ),
            store_url=self.url,
            central_private_key=keys.central_path,
        )
        if register:
            self.register(keys.kiosk_id, public_path(keys.kiosk_path).read_bytes())
        wrap = wrap_store or (lambda store: store)
        self.consumer = CentralConsumer(self.config, keys.central, lambda: wrap(open_store(self.url)))
        self.thread = threading.Thread(target=self.consumer.run, name=f"centre-{client_id}", daemon=True)
        self.thread.start()
        wait_for(self.consumer.connected.is_set, 10, "the centre to connect")

    def store(self) -> CentralStore:
        """A store connection of the test's own (close it)."""
        return open_store(self.url)

    def register(self, kiosk_id: str, public_pem: bytes) -> None:
        with self.store() as store:
            store.add_kiosk(kiosk_id, public_pem, replace=True)

    def packets(self) -> list[dict[str, Any]]:
        with self.store() as store:
            return store.packets()

    def status(self, kiosk: str) -> dict[str, Any] | None:
        with self.store() as store:
            return store.status(kiosk)

    def health(self, kiosk: str) -> dict[str, Any] | None:
        with self.store() as store:
            return store.health(kiosk)

    def stop(self) -> None:
        self.consumer.stop()
        self.thread.join(15)
        assert not self.thread.is_alive(), "centre did not stop"


class Kiosk:
    """The real ``Link`` over a real outbox, on its own event loop thread."""

    def __init__(
        self,
        root: Path,
        port: int,
        keys: Keys,
        *,
        window: int = 8,
        ack_timeout_s: float = 5.0,
        health_s: float = 1.0,
        health: Callable[[], Awaitable[dict[str, Any]]] | None = None,
        extra_mqtt: str = "",
        reconnect_s: tuple[float, float] = (0.1, 0.5),
        keepalive_s: int = 5,
    ) -> None:
        self.keys = keys
        self.root = root
        self.config = parse_config(
            f'[kiosk]\nid = "{keys.kiosk_id}"\ndata_dir = "{root}"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nkeepalive_s = {keepalive_s}\nwindow = {window}\n'
            f"ack_timeout_s = {ack_timeout_s}\nreconnect_min_s = {reconnect_s[0]}\n"
            f"reconnect_max_s = {reconnect_s[1]}\n{extra_mqtt}"
            f"[health]\ninterval_s = {health_s}\n"
        )
        self.db = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="outbox")
        self.outbox = self.db.submit(
            Outbox, root / "outbox.db", max_bytes=self.config.store.max_bytes
        ).result()
        self.receipts: list[SealedPacket] = []
        self.loop = asyncio.new_event_loop()
        self.link = Link(
            self.config,
            self.outbox,
            load_central_public(public_path(keys.central_path)),
            db=self.db,
            health=health or self._health,
        )
        self.thread = threading.Thread(target=self._run, name="kiosk-link", daemon=True)
        self.thread.start()

    async def _health(self) -> dict[str, Any]:
        stats = await asyncio.get_running_loop().run_in_executor(self.db, self.outbox.stats)
        return {
            "kiosk_id": self.keys.kiosk_id,
            "queue": {"pending": stats.pending + stats.sent, "pending_bytes": stats.pending_bytes},
            "link": self.link.stats.to_json(),
        }

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.link.run())

    def commit(self, n: int, record: EnrollmentRecord | None = None) -> list[SealedPacket]:
        """Commit ``n`` packets of ``record`` (default: a synthetic resident, ~230 KB a packet)."""
        out = [self.db.submit(self.commit_on_outbox_thread, record).result() for _ in range(n)]
        self.loop.call_soon_threadsafe(self.link.wake)
        return out

    def commit_on_outbox_thread(self, record: EnrollmentRecord | None = None) -> SealedPacket:
        """Commit one packet; call it on the outbox's own thread (or from a wrapper running there)."""
        record = record or small_record()
        made: list[SealedPacket] = []

        def build(seq: int) -> SealedPacket:
            p = seal(
                record,
                kiosk_id=self.keys.kiosk_id,
                seq=seq,
                kiosk_key=self.keys.kiosk,
                central_public=self.keys.central.encryption.public_key(),
                clock_synced=True,
            )
            made.append(p)
            return p

        self.outbox.commit(build)
        self.receipts.append(made[-1])
        return made[-1]

    def stats(self) -> Any:
        return self.db.submit(self.outbox.stats).result()

    def stop(self) -> None:
        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.link.stop(), self.loop).result(10)
            self.thread.join(15)
        assert not self.thread.is_alive(), "link did not stop"
        self.loop.close()
        self.db.submit(self.outbox.close).result()
        self.db.shutdown()


_watcher_ids = itertools.count(1)


class Watcher:
    """An independent MQTT v5 subscriber that records what the broker hands out."""

    def __init__(self, port: int, topic: str) -> None:
        self.msgs: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"watcher-{next(_watcher_ids)}", protocol=mqtt.MQTTv5
        )
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_message = self._on
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_for(self.subscribed.is_set, 10, f"the watcher's subscription to {topic}")

    def _on(self, _c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.msgs.append((m.topic, bytes(m.payload), bool(m.retain)))

    def last(self, suffix: str) -> tuple[str, bytes, bool] | None:
        with self.lock:
            found = [m for m in self.msgs if m[0].endswith(suffix)]
        return found[-1] if found else None

    def statuses(self, kiosk: str) -> list[dict[str, Any]]:
        """Every status document of ``kiosk`` seen so far, in order."""
        with self.lock:
            return [json.loads(p) for t, p, _r in self.msgs if t.endswith(f"/{kiosk}/status") and p]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client.on_message = self.client.on_connect = self.client.on_subscribe = None


def delivery_figure(
    rows: Iterable[Mapping[str, Any]],
    receipts: Iterable[Mapping[str, Any]],
    *,
    committed: int,
    duplicate_deliveries: int,
    unreceipted_ok: Collection[int] = (),
) -> dict[str, int]:
    """Exactly once, counted: the centre's rows of one kiosk against the receipts it printed.

    ``committed`` is the kiosk's own last seq: the centre must hold seqs 1..committed, each
    once, and nothing else. A row without a receipt is ``extra`` unless its seq is in
    ``unreceipted_ok`` (a commit a SIGKILL cut off before its receipt went out: at most one per
    kill, named by the test). ``duplicate_deliveries`` is the centre's own count of deliveries
    of packets it already held: wasted work, reported, harmless.
    """
    rows = list(rows)
    stored = {str(r["packet_id"]): int(r["seq"]) for r in rows}
    printed = {str(r["packet_id"]): int(r["seq"]) for r in receipts}
    unreceipted = {i: seq for i, seq in stored.items() if i not in printed}
    seqs = sorted(stored.values())
    return {
        "receipts": len(printed),
        "stored": len(rows),
        "lost": sum(1 for i in printed if i not in stored),
        "extra": sum(1 for seq in unreceipted.values() if seq not in set(unreceipted_ok)),
        "unreceipted": sum(1 for seq in unreceipted.values() if seq in set(unreceipted_ok)),
        "wrong_seq": sum(1 for i, seq in printed.items() if i in stored and stored[i] != seq),
        "gaps": len(set(range(1, committed + 1)) - set(seqs)),
        "repeated_rows": len(rows) - len(stored),
        "beyond": sum(1 for seq in seqs if not 1 <= seq <= committed),
        "duplicate_deliveries": duplicate_deliveries,
    }


EXACTLY_ONCE_ZEROS = ("lost", "extra", "wrong_seq", "gaps", "repeated_rows", "beyond")


def assert_figure_exactly_once(figure: Mapping[str, int]) -> None:
    """Every receipt stored, nothing stored without a receipt (but the kills' named ones),
    seqs 1..committed without a gap."""
    bad = {k: figure[k] for k in EXACTLY_ONCE_ZEROS if figure[k]}
    assert figure["receipts"] > 0 and not bad, f"not exactly once: {bad} in {dict(figure)}"


def figure_text(figure: Mapping[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in figure.items())


def assert_exactly_once(centre: Centre, kiosk: Kiosk) -> dict[str, int]:
    """The centre's rows of this kiosk are exactly its receipts, seqs 1..N without a gap (N the
    outbox's own last seq); returns the figure, with the centre's count of duplicate deliveries."""
    kiosk_id = kiosk.keys.kiosk_id
    with centre.store() as store:
        rows = store.packets(kiosk_id)
        duplicates = sum(r["duplicate_deliveries"] for r in store.fleet() if r["kiosk"] == kiosk_id)
    figure = delivery_figure(
        rows,
        [{"packet_id": p.packet_id, "seq": p.seq} for p in kiosk.receipts],
        committed=kiosk.stats().last_seq,
        duplicate_deliveries=duplicates,
    )
    assert_figure_exactly_once(figure)
    return figure


def all_delivered(kiosk: Kiosk) -> bool:
    s = kiosk.stats()
    return bool(s.delivered == len(kiosk.receipts) and s.pending == 0 and s.sent == 0)


# ----------------------------------------------------------------------------- the whole kit (tests/agentkit.py)


def api_status(k: Kit) -> dict[str, Any]:
    """The service's status document straight from its socket (no CLI start-up on the way)."""
    return next(request(k.data_dir / "api.sock", "status", timeout=30))


def kit_figure(
    k: Kit, receipts: list[dict[str, Any]], *, unreceipted_ok: Collection[int] = ()
) -> dict[str, int]:
    """The exactly-once figure of the kit: `ektp-central packets --kiosk` against the receipts,
    seqs 1..N where N is what the kiosk's `status` says it committed, and the centre's count of
    duplicate deliveries from `ektp-central fleet --json`."""
    p = k.central_cli("packets", "--kiosk", k.kiosk_id, "--json")
    assert p.returncode == 0, p.stderr
    fleet = json.loads(
        k.central_cli("fleet", "--json").stdout
    )  # exit 1 names a problem; the rows are all we read
    row = next(r for r in fleet if r["kiosk"] == k.kiosk_id)
    return delivery_figure(
        json.loads(p.stdout),
        receipts,
        committed=int(k.status()["enrollments"]["total"]),
        duplicate_deliveries=int(row["duplicate_deliveries"]),
        unreceipted_ok=unreceipted_ok,
    )


def check_exactly_once(
    k: Kit, receipts: list[dict[str, Any]], *, unreceipted_ok: Collection[int] = ()
) -> dict[str, int]:
    figure = kit_figure(k, receipts, unreceipted_ok=unreceipted_ok)
    assert_figure_exactly_once(figure)
    return figure


def synced(k: Kit, timeout: float) -> None:
    """`ektp-agent sync --wait`; when it fails, the assertion carries the kiosk's link counters
    and the tail of its log, so that a drain that stalls explains itself."""
    p = k.agent_cli("sync", "--wait", "--timeout", str(timeout), timeout=timeout + 30)
    if p.returncode != 0:
        status = k.agent_cli("status", "--json", timeout=60)
        raise AssertionError(
            f"sync --wait exited {p.returncode}: {(p.stdout + p.stderr)[-800:]}\n"
            f"status: {status.stdout[-3000:]}\nagent log: {k.log('agent')[-3000:]}"
        )
