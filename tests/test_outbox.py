"""The outbox on real SQLite files: states, seq allocation, capacity, recovery, streaming."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import sqlite3
import stat
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.outbox import (
    _BATCH_SQL,
    _BATCH_SQL_WITH_SENT,
    InvalidPacket,
    Outbox,
    OutboxError,
    Receipt,
    StoreClosed,
    StoreCorrupt,
    StoreFull,
    StoreNotFound,
    StoreReadOnly,
)
from agent.outbox_schema import PragmaNotApplied, set_writer_pragmas
from tests.outbox_child import FakePacket, key_from_hex, seal, verify

KEY = key_from_hex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
PUBLIC = KEY.public_key()


def _builder(size: int, rng: random.Random | None = None) -> Callable[[int], FakePacket]:
    body = (rng or random.Random(size)).randbytes(size)
    packet_id = str(uuid.uuid4())
    return lambda seq: seal(KEY, seq, packet_id, body)


def _commit(outbox: Outbox, n: int, size: int = 1000) -> list[Receipt]:
    return [outbox.commit(_builder(size)) for _ in range(n)]


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "outbox.db"


@pytest.fixture
def outbox(db: Path) -> Iterator[Outbox]:
    with Outbox(db, max_bytes=1_000_000) as ob:
        yield ob


# ---------------------------------------------------------------- commit and states


def test_commit_returns_durable_receipt_and_keeps_bytes(outbox: Outbox, db: Path) -> None:
    receipt = outbox.commit(_builder(5000))
    assert receipt.seq == 1 and receipt.bytes == len(outbox.get(receipt.packet_id) or b"")
    data = outbox.get(receipt.packet_id)
    assert data is not None
    assert verify(PUBLIC, data)[:2] == (1, receipt.packet_id)
    info = outbox.info(receipt.packet_id)
    assert info is not None and (info.state, info.attempts, info.bytes) == ("pending", 0, receipt.bytes)
    for name in ("outbox.db", "outbox.db-wal", "outbox.db-shm"):
        assert stat.S_IMODE((db.parent / name).stat().st_mode) == 0o600, name
    assert _rows(db, "PRAGMA journal_mode") == [("wal",)]
    assert _rows(db, "PRAGMA auto_vacuum") == [(2,)]  # incremental


def test_legal_transitions(outbox: Outbox) -> None:
    a, b, c, d, e = (r.packet_id for r in _commit(outbox, 5))
    assert outbox.mark_sent([a, b, c]) == 3
    assert outbox.requeue([b]) == 1  # sent -> pending, attempt counted
    assert outbox.requeue([e]) == 1  # a refused publish of a pending packet counts too
    assert outbox.mark_delivered([a]) == 1  # sent -> delivered
    assert outbox.mark_delivered([d]) == 1  # pending -> delivered: the ack overtook the PUBACK
    assert outbox.mark_rejected(c, "unknown kiosk") is True  # sent -> rejected
    assert outbox.mark_rejected(e, "bad signature") is True  # pending -> rejected
    states = {p: (outbox.info(p) or pytest.fail("missing")) for p in (a, b, c, d, e)}
    assert {p: i.state for p, i in states.items()} == {
        a: "delivered",
        b: "pending",
        c: "rejected",
        d: "delivered",
        e: "rejected",
    }
    assert states[b].attempts == 1 and states[e].attempts == 1
    assert states[c].reason == "unknown kiosk"
    assert outbox.get(a) is None and outbox.get(d) is None
    assert outbox.get(c) is not None and outbox.get(b) is not None  # rejected keeps its body
    s = outbox.stats()
    assert (s.pending, s.sent, s.delivered, s.rejected) == (1, 0, 2, 2)
    assert s.pending_bytes == 3 * states[b].bytes  # pending + rejected bodies held
    assert [q.packet_id for q in outbox.undelivered()] == [b, c, e]


@pytest.mark.parametrize(
    "action",
    [
        "deliver_unknown",
        "deliver_rejected",
        "deliver_twice",
        "reject_delivered",
        "reject_unknown",
        "reject_twice",
        "send_delivered",
        "send_rejected",
        "send_twice",
        "requeue_delivered",
        "requeue_rejected",
        "requeue_unknown",
        "resubmit_sent",
        "resubmit_delivered",
        "resubmit_unknown",
        "resubmit_nothing_named",
    ],
)
def test_illegal_transitions_change_nothing(
    outbox: Outbox, action: str, caplog: pytest.LogCaptureFixture
) -> None:
    delivered, rejected, sent = (r.packet_id for r in _commit(outbox, 3))
    outbox.mark_delivered([delivered])
    outbox.mark_rejected(rejected, "refused")
    outbox.mark_sent([sent])
    unknown = str(uuid.uuid4())
    before = dataclasses.replace(outbox.stats(), oldest_pending_age_s=None)
    infos = [outbox.info(p) for p in (delivered, rejected, sent)]
    calls: dict[str, Callable[[], int | bool]] = {
        "deliver_unknown": lambda: outbox.mark_delivered([unknown]),
        "deliver_rejected": lambda: outbox.mark_delivered([rejected]),
        "deliver_twice": lambda: outbox.mark_delivered([delivered]),
        "reject_delivered": lambda: outbox.mark_rejected(delivered, "late"),
        "reject_unknown": lambda: outbox.mark_rejected(unknown, "x"),
        "reject_twice": lambda: outbox.mark_rejected(rejected, "other reason"),
        "send_delivered": lambda: outbox.mark_sent([delivered]),
        "send_rejected": lambda: outbox.mark_sent([rejected]),
        "send_twice": lambda: outbox.mark_sent([sent]),
        "requeue_delivered": lambda: outbox.requeue([delivered]),
        "requeue_rejected": lambda: outbox.requeue([rejected]),
        "requeue_unknown": lambda: outbox.requeue([unknown]),
        "resubmit_sent": lambda: outbox.resubmit([sent]),
        "resubmit_delivered": lambda: outbox.resubmit([delivered]),
        "resubmit_unknown": lambda: outbox.resubmit([unknown]),
        "resubmit_nothing_named": lambda: outbox.resubmit([]),
    }
    with caplog.at_level(logging.DEBUG, logger="ektp.outbox"):
        result = calls[action]()
    assert result in (0, False)
    assert dataclasses.replace(outbox.stats(), oldest_pending_age_s=None) == before
    assert [outbox.info(p) for p in (delivered, rejected, sent)] == infos
    if "unknown" in action:
        assert any(r.levelno == logging.WARNING and unknown in r.getMessage() for r in caplog.records)


def test_delivery_frees_body_keeps_audit_row_and_reclaims_pages(outbox: Outbox, db: Path) -> None:
    receipts = _commit(outbox, 40, size=20_000)
    pages_before = int(str(_rows(db, "PRAGMA page_count")[0][0]))
    assert outbox.mark_delivered([r.packet_id for r in receipts[:30]]) == 30
    assert _rows(db, "SELECT count(*) FROM bodies") == [(10,)]
    audit = _rows(
        db, "SELECT seq, packet_id, bytes, state, delivered_at IS NOT NULL FROM packets WHERE seq = 1"
    )
    assert audit == [(1, receipts[0].packet_id, receipts[0].bytes, "delivered", 1)]
    # mid-drain the freed pages stay free (new commits reuse them; no copying of live bodies)
    assert int(str(_rows(db, "PRAGMA freelist_count")[0][0])) > 0
    s = outbox.stats()
    assert (s.delivered, s.pending, s.pending_bytes) == (30, 10, sum(r.bytes for r in receipts[30:]))
    assert outbox.mark_delivered([r.packet_id for r in receipts[30:]]) == 10  # drained:
    assert _rows(db, "PRAGMA freelist_count") == [(0,)]  # handed back by incremental_vacuum
    assert int(str(_rows(db, "PRAGMA page_count")[0][0])) < pages_before // 2


def test_resubmit_puts_rejected_packets_back_in_the_queue(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Outbox(db, max_bytes=1_000_000) as ob:
        a, b, c, d, e = (r.packet_id for r in _commit(ob, 5))
        ob.mark_sent([b])
        ob.requeue([b])  # one failed attempt before the rejection
        assert ob.mark_rejected(b, "unknown_kiosk: not registered") is True
        assert ob.mark_rejected(c, "bad_signature: key mismatch") is True
        assert ob.mark_rejected(d, "unknown_kiosk: not registered") is True
        ob.mark_delivered([e])
        before = ob.stats()
        assert (before.pending, before.rejected, before.delivered) == (1, 3, 1)
        assert [q.packet_id for q in ob.rejected()] == [b, c, d]
        assert [q.reason for q in ob.rejected(limit=1)] == ["unknown_kiosk: not registered"]

        with caplog.at_level(logging.INFO, logger="ektp.outbox"):
            assert ob.resubmit([b]) == 1
        info = ob.info(b)
        assert info is not None and (info.state, info.attempts, info.reason) == ("pending", 1, None)
        assert any(  # the old reason is kept in the log
            b in r.getMessage() and "unknown_kiosk: not registered" in r.getMessage() for r in caplog.records
        )
        after = ob.stats()
        assert (after.pending, after.sent, after.rejected, after.delivered) == (2, 0, 2, 1)
        assert after.pending_bytes == before.pending_bytes  # held before and after: nothing freed
        assert ob.get(b) is not None
        assert [p.packet_id for p in ob.next_batch(0, 10)] == [a, b]  # the drain sees it again, in seq order

        assert ob.resubmit(None) == 2  # every rejected packet
        assert ob.rejected() == [] and ob.resubmit(None) == 0
        s = ob.stats()
        assert (s.pending, s.rejected, s.pending_bytes) == (4, 0, before.pending_bytes)
        assert s.oldest_pending_age_s is not None
    rows = _rows(
        db, "SELECT packet_id, state, attempts, reason, rejected_at IS NOT NULL FROM packets ORDER BY seq"
    )
    assert rows == [
        (a, "pending", 0, None, 0),
        (b, "pending", 1, None, 1),  # rejected_at stays: when it was last rejected
        (c, "pending", 0, None, 1),
        (d, "pending", 0, None, 1),
        (e, "delivered", 0, None, 0),
    ]
    with caplog.at_level(logging.WARNING, logger="ektp.outbox"):
        caplog.clear()
        with Outbox(db, max_bytes=1_000_000) as ob:  # durable, and the totals need no recount
            s = ob.stats()
            assert (s.pending, s.sent, s.rejected, s.delivered, s.pending_bytes) == (
                4,
                0,
                0,
                1,
                before.pending_bytes,
            )
            assert ob.mark_rejected(c, "unknown_kiosk: again") is True  # rejected again: a new reason
            assert (ob.info(c) or pytest.fail("missing")).reason == "unknown_kiosk: again"
    assert not [r for r in caplog.records if "recounted" in r.getMessage()]


def test_resubmit_of_a_mixed_batch_changes_only_the_rejected(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    pending, sent, delivered, rejected = (r.packet_id for r in _commit(outbox, 4))
    outbox.mark_sent([sent])
    outbox.mark_delivered([delivered])
    outbox.mark_rejected(rejected, "unknown_kiosk")
    unknown = str(uuid.uuid4())
    infos = [outbox.info(p) for p in (pending, sent, delivered)]
    with caplog.at_level(logging.DEBUG, logger="ektp.outbox"):
        assert outbox.resubmit([pending, unknown, rejected, delivered, sent, rejected]) == 1
    assert [outbox.info(p) for p in (pending, sent, delivered)] == infos
    assert (outbox.info(rejected) or pytest.fail("missing")).state == "pending"
    s = outbox.stats()
    assert (s.pending, s.sent, s.delivered, s.rejected) == (2, 1, 1, 0)
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert unknown in warned and delivered in warned and sent in warned


def test_resubmit_of_many_rejected_packets_is_one_transaction(outbox: Outbox, db: Path) -> None:
    ids = [r.packet_id for r in _commit(outbox, 1200, size=100)]  # over ID_CHUNK
    for packet_id in ids:
        outbox.mark_rejected(packet_id, "unknown_kiosk")
    before = outbox.stats()
    assert outbox.resubmit(ids) == 1200
    s = outbox.stats()
    assert (s.pending, s.rejected, s.pending_bytes) == (1200, 0, before.pending_bytes)
    assert _rows(db, "SELECT count(*) FROM packets WHERE state = 'pending' AND reason IS NULL") == [(1200,)]


def test_rejection_needs_a_reason(outbox: Outbox) -> None:
    (r,) = _commit(outbox, 1)
    with pytest.raises(ValueError):
        outbox.mark_rejected(r.packet_id, "")


# ---------------------------------------------------------------- seq allocation


def test_seq_continues_across_reopen_and_frees(db: Path) -> None:
    with Outbox(db) as ob:
        first = _commit(ob, 5)
        ob.mark_delivered([r.packet_id for r in first])  # every row freed
    with Outbox(db) as ob:
        assert ob.stats().last_seq == 5
        second = _commit(ob, 3)
    with Outbox(db) as ob:
        third = _commit(ob, 2)
    assert [r.seq for r in first + second + third] == list(range(1, 11))
    assert [row[0] for row in _rows(db, "SELECT seq FROM packets ORDER BY seq")] == list(range(1, 11))


def test_build_gets_the_seq_inside_the_transaction(outbox: Outbox) -> None:
    seen: list[int] = []

    def build(seq: int) -> FakePacket:
        seen.append(seq)
        return _builder(100)(seq)

    receipts = [outbox.commit(build) for _ in range(3)]
    assert seen == [r.seq for r in receipts] == [1, 2, 3]


def test_build_that_raises_consumes_no_seq(outbox: Outbox, db: Path) -> None:
    _commit(outbox, 2)

    def broken(seq: int) -> FakePacket:
        raise RuntimeError(f"sealing failed at {seq}")

    with pytest.raises(RuntimeError, match="sealing failed at 3"):
        outbox.commit(broken)
    with pytest.raises(InvalidPacket):
        outbox.commit(lambda seq: FakePacket("not-a-uuid", "2026-01-01T00:00:00Z", b"x"))
    with pytest.raises(InvalidPacket):
        outbox.commit(lambda seq: FakePacket(str(uuid.uuid4()).upper(), "2026-01-01T00:00:00Z", b"x"))
    with pytest.raises(InvalidPacket):
        outbox.commit(lambda seq: FakePacket(str(uuid.uuid4()), "2026-01-01T00:00:00Z", b""))
    assert outbox.commit(_builder(10)).seq == 3
    assert outbox.stats().last_seq == 3
    assert _rows(db, "SELECT count(*) FROM packets") == [(3,)]


def test_duplicate_packet_id_is_refused_without_consuming_a_seq(outbox: Outbox) -> None:
    (r,) = _commit(outbox, 1)
    with pytest.raises(InvalidPacket):
        outbox.commit(lambda seq: seal(KEY, seq, r.packet_id, b"again"))
    assert outbox.commit(_builder(10)).seq == 2


def test_concurrent_commits_from_threads_get_distinct_contiguous_seqs(outbox: Outbox) -> None:
    seqs: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            seq = outbox.commit(_builder(500)).seq
            with lock:
                seqs.append(seq)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seqs) == list(range(1, 101))


# ---------------------------------------------------------------- capacity


def test_store_full_at_the_bound_loses_nothing_and_recovers_after_delivery(db: Path) -> None:
    with Outbox(db, max_bytes=20_000) as ob:
        receipts: list[Receipt] = []
        with pytest.raises(StoreFull) as err:
            while True:
                receipts.append(ob.commit(_builder(1_500, random.Random(len(receipts)))))
        message = str(err.value)
        assert "store.max_bytes = 20000" in message and "ektp-agent sync" in message
        assert "ektp-agent export --to DIR" in message and "raise store.max_bytes" in message
        assert err.value.max_bytes == 20_000 and err.value.used_bytes == sum(r.bytes for r in receipts)
        assert isinstance(err.value, OutboxError)
        assert sum(r.bytes for r in receipts) <= 20_000
        for r in receipts:  # every earlier packet intact
            assert verify(PUBLIC, ob.get(r.packet_id) or b"")[:2] == (r.seq, r.packet_id)
        assert ob.stats().last_seq == len(receipts)  # the refused commit consumed no seq
        ob.mark_delivered([receipts[0].packet_id])
        assert ob.commit(_builder(1_500)).seq == len(receipts) + 1


def test_store_full_before_build_when_already_at_the_bound(db: Path) -> None:
    built: list[int] = []
    with Outbox(db, max_bytes=2_000) as ob:
        ob.commit(lambda seq: FakePacket(str(uuid.uuid4()), "2026-01-01T00:00:00Z", b"x" * 2_000))

        def build(seq: int) -> FakePacket:
            built.append(seq)
            return FakePacket(str(uuid.uuid4()), "2026-01-01T00:00:00Z", b"y")

        with pytest.raises(StoreFull):
            ob.commit(build)
    assert built == []


def test_near_full_above_80_percent(db: Path) -> None:
    with Outbox(db, max_bytes=10_000) as ob:
        data = b"z" * 1000

        def build(seq: int) -> FakePacket:
            return FakePacket(str(uuid.uuid4()), "2026-01-01T00:00:00Z", data)

        for _ in range(8):
            ob.commit(build)
        assert ob.stats().pending_bytes == 8000 and not ob.stats().near_full  # exactly 80 %
        ob.commit(lambda seq: FakePacket(str(uuid.uuid4()), "2026-01-01T00:00:00Z", b"1"))
        assert ob.stats().near_full and ob.stats().max_bytes == 10_000


def test_capacity_counts_only_undelivered_bytes(db: Path) -> None:
    with Outbox(db, max_bytes=10_000) as ob:
        for _ in range(50):  # 5x the bound goes through, as long as it is delivered
            r = ob.commit(_builder(1000))
            ob.mark_delivered([r.packet_id])
        assert ob.stats().pending_bytes == 0 and ob.stats().delivered == 50


# ---------------------------------------------------------------- open, resume, stats


def test_sent_packets_resume_as_pending_on_open(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Outbox(db) as ob:
        a, b = (r.packet_id for r in _commit(ob, 2))
        ob.mark_sent([a, b])
        ob.requeue([b])
        ob.mark_sent([b])
    with caplog.at_level(logging.INFO, logger="ektp.outbox"), Outbox(db) as ob:
        s = ob.stats()
        assert (s.pending, s.sent) == (2, 0)
        assert [(q.state, q.attempts) for q in ob.undelivered()] == [("pending", 0), ("pending", 1)]
    assert any("resumed as pending" in r.getMessage() for r in caplog.records)


def test_drifted_totals_are_recounted_on_open(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Outbox(db) as ob:
        _commit(ob, 3)
        expected = ob.stats()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE counters SET pending = 99, held_bytes = 1")
    conn.commit()
    conn.close()
    with caplog.at_level(logging.WARNING, logger="ektp.outbox"), Outbox(db) as ob:
        s = ob.stats()
    assert (s.pending, s.pending_bytes) == (expected.pending, expected.pending_bytes)
    assert any("recounted" in r.getMessage() for r in caplog.records)


def test_newer_schema_is_refused_not_quarantined(db: Path) -> None:
    Outbox(db).close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE counters SET schema_version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(OutboxError, match="newer"):
        Outbox(db)
    assert not list(db.parent.glob("*.corrupt-*"))


def test_stats_count_7000_rows(db: Path) -> None:
    """What stats() counts with a full day's rows; how long it takes is measured in bench/timings.py."""
    with Outbox(db) as ob:
        for _ in range(7000):
            ob.commit(lambda seq: FakePacket(str(uuid.uuid4()), "2026-01-01T00:00:00Z", b"p" * 16))
        ob.mark_delivered([q.packet_id for q in ob.undelivered()[:3000]])
        s = ob.stats()
    assert (s.pending, s.delivered, s.last_seq) == (4000, 3000, 7000)
    assert s.oldest_pending_age_s is not None and s.oldest_pending_age_s >= 0


def test_closed_outbox_raises(db: Path) -> None:
    ob = Outbox(db)
    ob.close()
    ob.close()  # idempotent
    with pytest.raises(StoreClosed):
        ob.stats()
    with pytest.raises(StoreClosed):
        ob.commit(_builder(10))


# ---------------------------------------------------------------- streaming


def test_iter_pending_streams_in_seq_order_a_window_at_a_time(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    receipts = _commit(outbox, 23)
    outbox.mark_sent([receipts[4].packet_id, receipts[9].packet_id])
    outbox.mark_delivered([receipts[0].packet_id])
    limits: list[int] = []
    real = outbox.next_batch

    def spy(after_seq: int, limit: int, *, include_sent: bool = False) -> list:  # type: ignore[type-arg]
        limits.append(limit)
        return real(after_seq, limit, include_sent=include_sent)

    monkeypatch.setattr(outbox, "next_batch", spy)
    pending = [p.seq for p in outbox.iter_pending(window=4)]
    assert pending == [s for s in range(2, 24) if s not in (5, 10)]
    assert set(limits) == {4}
    everything = list(outbox.iter_pending(window=5, include_sent=True))
    assert [p.seq for p in everything] == list(range(2, 24))
    assert {p.seq: p.state for p in everything}[5] == "sent"
    for p in everything:
        assert verify(PUBLIC, p.data)[:2] == (p.seq, p.packet_id)
    assert [p.seq for p in real(10, 3)] == [11, 12, 13]
    assert [p.seq for p in real(9, 2, include_sent=True)] == [10, 11]
    assert real(23, 10) == []


def test_drain_queries_use_indexes(outbox: Outbox, db: Path) -> None:
    _commit(outbox, 5)
    conn = sqlite3.connect(db)
    try:
        for sql in (_BATCH_SQL, _BATCH_SQL_WITH_SENT):
            plan = conn.execute(f"EXPLAIN QUERY PLAN {sql}", (0, 16)).fetchall()
            details = " ".join(str(row[-1]) for row in plan)
            assert "SCAN" not in details and "TEMP B-TREE" not in details, details
    finally:
        conn.close()


# ---------------------------------------------------------------- read-only


def test_readonly_open_while_the_writer_holds_the_store(db: Path) -> None:
    with Outbox(db) as writer:
        first = _commit(writer, 3)
        writer.mark_sent([first[0].packet_id])
        reader = Outbox.open_readonly(db)
        try:
            assert reader.stats().last_seq == 3
            assert [(q.seq, q.state) for q in reader.undelivered()] == [
                (1, "sent"),
                (2, "pending"),
                (3, "pending"),
            ]
            second = _commit(writer, 2)
            assert reader.stats().pending == 4
            assert reader.get(second[1].packet_id) == writer.get(second[1].packet_id)
            with pytest.raises(StoreReadOnly):
                reader.commit(_builder(10))
            with pytest.raises(StoreReadOnly):
                reader.mark_delivered([first[1].packet_id])
        finally:
            reader.close()
        assert writer.stats().sent == 1  # the reader resumed nothing
    assert not Path(f"{db}-wal").exists()  # the writer's close checkpointed
    with Outbox.open_readonly(db) as reader:  # the service is down
        assert reader.stats().last_seq == 5


def test_a_writer_without_repair_neither_creates_nor_salvages(tmp_path: Path) -> None:
    missing = tmp_path / "none" / "outbox.db"
    with pytest.raises(StoreNotFound):
        Outbox(missing, repair=False)
    assert not missing.parent.exists()
    garbage = tmp_path / "outbox.db"
    garbage.write_bytes(b"not a database " * 500)
    with pytest.raises(StoreCorrupt, match="start the service"):
        Outbox(garbage, repair=False)
    assert garbage.read_bytes() == b"not a database " * 500
    assert [p.name for p in tmp_path.iterdir()] == ["outbox.db"]  # nothing moved aside or staged
    sound = tmp_path / "sound" / "outbox.db"
    with Outbox(sound) as ob:
        (r,) = _commit(ob, 1)
        ob.mark_rejected(r.packet_id, "unknown_kiosk")
    with Outbox(sound, repair=False) as ob:
        assert ob.resubmit(None) == 1


def test_readonly_open_of_missing_or_garbage_file(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFound):
        Outbox.open_readonly(tmp_path / "nothing.db")
    garbage = tmp_path / "garbage.db"
    content = random.Random(1).randbytes(8192)
    garbage.write_bytes(content)
    with pytest.raises(StoreCorrupt, match="quarantine"):
        Outbox.open_readonly(garbage)
    assert garbage.read_bytes() == content
    assert not list(tmp_path.glob("*.corrupt-*"))


# ---------------------------------------------------------------- quarantine and salvage


def _corrupt_pages(db: Path, fractions: tuple[float, ...], seed: int) -> int:
    page_size = 4096
    pages = db.stat().st_size // page_size
    rng = random.Random(seed)
    with open(db, "r+b") as f:
        for fraction in fractions:
            f.seek(int(pages * fraction) * page_size)
            f.write(rng.randbytes(page_size))
    return pages


def test_corrupt_pages_are_quarantined_and_the_rest_salvaged(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(7)
    with Outbox(db) as ob:
        receipts = [ob.commit(_builder(3000, rng)) for _ in range(300)]
        ob.mark_delivered([r.packet_id for r in receipts[:40]])
        ob.mark_rejected(receipts[50].packet_id, "unknown kiosk")
        ob.mark_sent([receipts[60].packet_id])
    originals = {r.packet_id: r for r in receipts}
    _corrupt_pages(db, (0.45, 0.5, 0.55, 0.7), seed=3)
    damaged = db.read_bytes()

    with caplog.at_level(logging.ERROR, logger="ektp.outbox"), Outbox(db) as ob:
        (moved,) = db.parent.glob("outbox.db.corrupt-*Z")
        assert moved.name.startswith("outbox.db.corrupt-") and moved.name.endswith("Z")
        assert moved.read_bytes() == damaged  # kept as it was, never "repaired" in place
        held = ob.undelivered()
        s = ob.stats()
        salvaged_audit = s.delivered
        assert 0 < len(held) < 260, "some rows should be lost, most salvaged"
        assert salvaged_audit <= 40
        for q in held:
            r = originals[q.packet_id]
            assert q.seq == r.seq
            assert verify(PUBLIC, ob.get(q.packet_id) or b"")[:2] == (r.seq, r.packet_id)
        states = {q.packet_id: q.state for q in held}
        assert states.get(receipts[50].packet_id, "rejected") == "rejected"
        assert states.get(receipts[60].packet_id, "pending") == "pending"
        assert s.last_seq == 300
        assert ob.commit(_builder(100)).seq == 301  # the counter continues, no reuse
    (record,) = [r for r in caplog.records if "salvaged" in r.getMessage()]
    assert record.levelno >= logging.ERROR
    assert str(moved) in record.getMessage()
    assert f"salvaged {len(held) + salvaged_audit} packets" in record.getMessage()
    with Outbox(db) as ob:  # the fresh store opens clean next time
        assert ob.stats().last_seq == 301
    assert len(list(db.parent.glob("outbox.db.corrupt-*Z"))) == 1


def test_random_bytes_file_is_quarantined_and_a_fresh_store_starts(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db.parent.mkdir(parents=True)
    content = random.Random(2).randbytes(64 * 1024)
    db.write_bytes(content)
    Path(f"{db}-wal").write_bytes(b"not a wal")
    with caplog.at_level(logging.ERROR, logger="ektp.outbox"), Outbox(db) as ob:
        assert ob.stats().last_seq == 0
        assert ob.commit(_builder(100)).seq == 1
    (moved,) = db.parent.glob("outbox.db.corrupt-*[0-9]Z")
    assert moved.read_bytes() == content
    assert Path(f"{moved}-wal").read_bytes() == b"not a wal"
    assert any("salvaged 0 packets" in r.getMessage() and r.levelno >= logging.ERROR for r in caplog.records)
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_foreign_sqlite_database_is_moved_aside_not_used(db: Path) -> None:
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE something_else (x)")
    conn.commit()
    conn.close()
    with Outbox(db) as ob:
        assert ob.commit(_builder(10)).seq == 1
    (moved,) = db.parent.glob("outbox.db.corrupt-*")
    assert _rows(moved, "SELECT name FROM sqlite_master") == [("something_else",)]


def test_loose_file_mode_is_tightened(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.touch()
    os.chmod(db, 0o644)
    Outbox(db).close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_salvage_killed_before_the_move_is_redone(db: Path) -> None:
    with Outbox(db) as ob:
        receipts = _commit(ob, 20)
    db.write_bytes(db.read_bytes()[:4096] + random.Random(5).randbytes(4096) + db.read_bytes()[8192:])
    stale = Path(f"{db}.salvage")
    stale.write_bytes(b"a partial copy from a salvage that was killed")
    with Outbox(db) as ob:
        held = ob.undelivered()
        assert held and {q.packet_id for q in held} <= {r.packet_id for r in receipts}
        assert ob.stats().last_seq == 20
    assert not stale.exists()
    assert len(list(db.parent.glob("outbox.db.corrupt-*Z"))) == 1


def test_salvage_killed_after_the_move_is_adopted(db: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere" / "outbox.db"
    with Outbox(other) as ob:
        receipts = _commit(ob, 4)
    db.parent.mkdir(parents=True)
    os.rename(other, Path(f"{db}.salvage"))  # complete copy; the damaged file already moved aside
    with Outbox(db) as ob:
        assert [q.packet_id for q in ob.undelivered()] == [r.packet_id for r in receipts]
        assert ob.commit(_builder(10)).seq == 5
    assert not Path(f"{db}.salvage").exists()


def test_a_missing_body_is_parked_as_rejected_and_the_drain_goes_on(outbox: Outbox, db: Path) -> None:
    receipts = _commit(outbox, 5)
    with sqlite3.connect(db) as raw:  # storage damage: one body row gone
        raw.execute("DELETE FROM bodies WHERE seq = ?", (receipts[1].seq,))
    batch = outbox.next_batch(0, 10)
    assert [p.seq for p in batch] == [r.seq for r in receipts if r is not receipts[1]]
    info = outbox.info(receipts[1].packet_id)
    assert info is not None and info.state == "rejected" and "missing" in (info.reason or "")
    assert [p.seq for p in outbox.next_batch(0, 10)] == [p.seq for p in batch]


# ---------------------------------------------------------------- the writer's durability settings


def test_writer_pragmas_are_read_back_and_refused_when_they_do_not_take() -> None:
    memory = sqlite3.connect(":memory:", isolation_level=None)  # SQLite keeps "memory": no WAL there
    try:
        with pytest.raises(PragmaNotApplied, match=r"journal_mode=memory, expected wal"):
            set_writer_pragmas(memory, None)
    finally:
        memory.close()


def test_a_store_switched_out_of_wal_is_put_back_in_wal_with_full_sync(db: Path) -> None:
    with Outbox(db) as ob:
        (r,) = _commit(ob, 1)
    with sqlite3.connect(db) as raw:  # e.g. a technician's sqlite3 session
        assert raw.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
    with Outbox(db) as ob:
        conn = ob._conn
        assert conn is not None
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert ob.get(r.packet_id) is not None
