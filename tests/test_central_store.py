"""The central store, the same suite on SQLite and on PostgreSQL: packets keyed by kiosk and
packet id with idempotent group commit, the migration from schema 1, quarantine, status
ordering by connection counter, and the fleet table with seq gaps."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from central.fleet import default_hint
from central.store import (
    SCHEMA_VERSION,
    CentralStore,
    KioskAlreadyRegistered,
    StoreError,
    StoreInputError,
    StoreOutcome,
    StoreSchemaError,
    StoreUnavailable,
    open_store,
    redact_url,
)
from tests import centralkit
from tests.centralkit import Kiosk
from wire.keys import raw_public
from wire.packet import PacketHeader, read_header


@pytest.fixture(params=centralkit.BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from centralkit.store_url(request.param, tmp_path)


@pytest.fixture
def store(url: str) -> Iterator[CentralStore]:
    with open_store(url) as s:
        yield s


@pytest.fixture
def kiosk(tmp_path: Path) -> Kiosk:
    return centralkit.kiosk("320715-01", centralkit.central_keys(tmp_path))


def item(k: Kiosk, seq: int, source: str = "mqtt") -> tuple[PacketHeader, bytes, str]:
    data = k.seal(seq).data
    return read_header(data), data, source


# ----------------------------------------------------------------------------- schema, kiosks


def test_schema_is_created_once_and_reopens(url: str, kiosk: Kiosk) -> None:
    with open_store(url) as first:
        assert first.schema_version() == SCHEMA_VERSION
        first.add_kiosk(kiosk.kiosk_id, kiosk.public_pem)
    with open_store(url) as again:  # CREATE ... IF NOT EXISTS: nothing lost, no error
        assert again.schema_version() == SCHEMA_VERSION
        assert [k["kiosk"] for k in again.kiosks()] == [kiosk.kiosk_id]


@pytest.fixture
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    for u in centralkit.store_url(request.param, tmp_path):
        yield request.param, u


@pytest.mark.parametrize("backend_url", centralkit.BACKENDS, indirect=True)
def test_a_schema_1_store_is_migrated_in_place(backend_url: tuple[str, str], kiosk: Kiosk) -> None:
    """A database as schema 1 left it: opened, it is the current schema with every packet and quarantine row kept."""
    from uuid import UUID

    backend, url = backend_url
    old = [kiosk.seal(1), kiosk.seal(2), kiosk.seal(4)]
    centralkit.create_v1_store(url, backend, old)
    with open_store(url) as store:
        assert store.schema_version() == SCHEMA_VERSION
        rows = store.packets()
        assert [(r["kiosk"], r["seq"], r["source"]) for r in rows] == [
            (kiosk.kiosk_id, s, "import") for s in (1, 2, 4)
        ]
        for p in old:
            assert store.packet_data(kiosk.kiosk_id, p.packet_id) == p.data
            assert store.stored_sha256(kiosk.kiosk_id, p.packet_id) == hashlib.sha256(p.data).hexdigest()
        (q,) = store.quarantined()
        assert (q["reason"], q["bytes"]) == ("bad_magic: garbage", 7)
        assert store.fleet()[0]["gaps"] == [[3, 3]]  # the (kiosk, seq) index serves again

        # the new key: a peer's packet under an old packet id is another packet; the same bytes a duplicate
        peer = centralkit.kiosk("320715-02", kiosk.central).seal(1, packet_id=UUID(old[0].packet_id))
        again = old[0]
        other_bytes = kiosk.seal(1, packet_id=UUID(old[0].packet_id))
        assert store.commit_packets(
            [
                (read_header(peer.data), peer.data, "mqtt"),
                (read_header(again.data), again.data, "mqtt"),
                (read_header(other_bytes.data), other_bytes.data, "mqtt"),
            ]
        ) == [StoreOutcome.STORED, StoreOutcome.DUPLICATE, StoreOutcome.CONFLICT]
        assert store.add_chunks([]) == [] and store.partials() == []  # the new table is there
    with open_store(url) as reopened:  # migrated once: opening again changes nothing
        assert reopened.schema_version() == SCHEMA_VERSION and len(reopened.packets()) == 4


@pytest.mark.parametrize("backend_url", centralkit.BACKENDS, indirect=True)
def test_a_failed_migration_leaves_schema_1_untouched(
    backend_url: tuple[str, str], kiosk: Kiosk, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, url = backend_url
    old = [kiosk.seal(1)]
    centralkit.create_v1_store(url, backend, old)

    def broken(self: CentralStore) -> list[str]:
        raise StoreError("disk full, say")

    monkeypatch.setattr(CentralStore, "_schema", broken)  # fails after the packets were rebuilt
    with pytest.raises(StoreError):
        open_store(url)
    monkeypatch.undo()
    assert centralkit.fetch_sql(url, "SELECT value FROM meta") == [("1",)]
    assert len(centralkit.fetch_sql(url, "SELECT packet_id FROM packets")) == 1
    with open_store(url) as store:  # rolled back whole: the migration runs again, from schema 1
        assert store.schema_version() == SCHEMA_VERSION
        assert store.packet_data(kiosk.kiosk_id, old[0].packet_id) == old[0].data


def test_a_newer_schema_is_refused(url: str) -> None:
    open_store(url).close()
    centralkit.run_sql(url, [("UPDATE meta SET value = '99' WHERE key = 'schema_version'", ())])
    with pytest.raises(StoreSchemaError, match="schema version 99, newer"):
        open_store(url)


def test_add_kiosk_and_key_lookup(store: CentralStore, kiosk: Kiosk, tmp_path: Path) -> None:
    assert store.kiosk_public_key(kiosk.kiosk_id) is None
    assert store.add_kiosk(kiosk.kiosk_id, kiosk.public_pem) is True
    key = store.kiosk_public_key(kiosk.kiosk_id)
    assert key is not None and raw_public(key) == raw_public(kiosk.key.public_key())
    assert store.add_kiosk(kiosk.kiosk_id, kiosk.public_pem) is False  # the same key again: no-op

    other = centralkit.kiosk(kiosk.kiosk_id, kiosk.central)
    with pytest.raises(KioskAlreadyRegistered, match="--replace"):
        store.add_kiosk(kiosk.kiosk_id, other.public_pem)
    key = store.kiosk_public_key(kiosk.kiosk_id)
    assert key is not None and raw_public(key) == raw_public(kiosk.key.public_key())
    assert store.add_kiosk(kiosk.kiosk_id, other.public_pem, replace=True) is True
    key = store.kiosk_public_key(kiosk.kiosk_id)
    assert key is not None and raw_public(key) == raw_public(other.key.public_key())


@pytest.mark.parametrize("bad_id", ["", "a b", "x" * 65, "kiosk/1", "ki\nosk"])
def test_add_kiosk_refuses_a_bad_id(store: CentralStore, kiosk: Kiosk, bad_id: str) -> None:
    with pytest.raises(StoreInputError, match="kiosk id"):
        store.add_kiosk(bad_id, kiosk.public_pem)


def test_add_kiosk_refuses_what_is_not_an_ed25519_public_key(store: CentralStore, kiosk: Kiosk) -> None:
    x25519 = X25519PrivateKey.generate().public_key()
    pem = x25519.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(StoreInputError, match="Ed25519"):
        store.add_kiosk(kiosk.kiosk_id, pem)
    with pytest.raises(StoreInputError, match="PEM"):
        store.add_kiosk(kiosk.kiosk_id, b"not a key")
    assert store.kiosks() == []


# ----------------------------------------------------------------------------- packets


def test_same_packet_twice_in_one_batch_and_across_batches_is_stored_once(
    url: str, store: CentralStore, kiosk: Kiosk
) -> None:
    a, b = item(kiosk, 1), item(kiosk, 2)
    assert store.store_packets([a, b, a]) == [True, True, False]
    assert store.store_packets([b, a]) == [False, False]
    with open_store(url) as other:  # another consumer, another connection
        assert other.store_packets([(a[0], a[1], "import")]) == [False]
    rows = store.packets()
    assert [(r["packet_id"], r["seq"]) for r in rows] == [(a[0].packet_id, 1), (b[0].packet_id, 2)]
    assert {r["source"] for r in rows} == {"mqtt"}
    assert store.packet_data(kiosk.kiosk_id, a[0].packet_id) == a[1]
    assert store.packet_data("320715-02", a[0].packet_id) is None  # another kiosk: another key
    assert store.quarantined() == []


def test_a_batch_is_one_transaction_all_or_nothing(url: str, store: CentralStore, kiosk: Kiosk) -> None:
    good = [item(kiosk, seq) for seq in (1, 2, 3)]
    header, data, source = item(kiosk, 4)
    # NOT NULL fails inside the transaction, after the good ones were inserted
    broken = (dataclasses.replace(header, seq=None), data, source)  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        store.store_packets([*good, broken])
    assert store.packets() == []
    assert store.store_packets(good) == [True, True, True]
    with open_store(url) as reopened:  # committed when store_packets returned
        assert [r["seq"] for r in reopened.packets()] == [1, 2, 3]


def test_store_packets_rejects_an_unknown_source(store: CentralStore, kiosk: Kiosk) -> None:
    header, data, _ = item(kiosk, 1)
    with pytest.raises(StoreInputError, match="source"):
        store.store_packets([(header, data, "carrier-pigeon")])
    assert store.store_packets([]) == []


def test_same_packet_id_with_other_bytes_keeps_the_first_and_quarantines_the_second(
    store: CentralStore, kiosk: Kiosk
) -> None:
    first = kiosk.seal(7)
    from uuid import UUID

    second = kiosk.seal(7, packet_id=UUID(first.packet_id))  # another ephemeral key: other bytes
    assert first.data != second.data
    h1, h2 = read_header(first.data), read_header(second.data)
    assert store.commit_packets([(h1, first.data, "mqtt")]) == [StoreOutcome.STORED]
    assert store.commit_packets([(h2, second.data, "mqtt")]) == [StoreOutcome.CONFLICT]
    assert store.store_packets([(h2, second.data, "mqtt")]) == [False]
    assert store.packet_data(kiosk.kiosk_id, first.packet_id) == first.data
    assert store.stored_sha256(kiosk.kiosk_id, first.packet_id) == hashlib.sha256(first.data).hexdigest()
    (q,) = store.quarantined()  # the same second copy twice: one row, seen twice
    assert first.packet_id in q["reason"] and q["kiosk_hint"] == kiosk.kiosk_id and q["times"] == 2
    assert q["reason"].startswith("conflict: ") and q["bytes"] == len(second.data)


def test_a_packet_id_is_per_kiosk_a_peer_cannot_claim_another_kiosks_id(
    url: str, store: CentralStore, kiosk: Kiosk
) -> None:
    """Kiosk B storing a packet under kiosk A's packet id stores B's own row: when A's packet
    comes it is stored too, not taken for a duplicate (which would free A's copy unstored)."""
    from uuid import UUID

    peer = centralkit.kiosk("320715-02", kiosk.central)
    own = kiosk.seal(1)
    squatter = peer.seal(1, packet_id=UUID(own.packet_id))
    assert store.commit_packets([(read_header(squatter.data), squatter.data, "mqtt")]) == [
        StoreOutcome.STORED
    ]
    assert store.stored_sha256(kiosk.kiosk_id, own.packet_id) is None
    assert store.commit_packets([(read_header(own.data), own.data, "mqtt")]) == [StoreOutcome.STORED]
    assert store.commit_packets([(read_header(own.data), own.data, "mqtt")]) == [StoreOutcome.DUPLICATE]
    assert store.packet_data(kiosk.kiosk_id, own.packet_id) == own.data
    assert store.packet_data(peer.kiosk_id, own.packet_id) == squatter.data
    assert store.stored_sha256(peer.kiosk_id, own.packet_id) == hashlib.sha256(squatter.data).hexdigest()
    assert sorted(r["kiosk"] for r in store.packets()) == [kiosk.kiosk_id, peer.kiosk_id]
    assert store.quarantined() == []
    with open_store(url) as other:  # the same from another connection, in one batch with a repeat
        third = centralkit.kiosk("320715-03", kiosk.central).seal(1, packet_id=UUID(own.packet_id))
        h3 = read_header(third.data)
        assert other.commit_packets([(h3, third.data, "import"), (h3, third.data, "import")]) == [
            StoreOutcome.STORED,
            StoreOutcome.DUPLICATE,
        ]
    assert len(store.packets()) == 3


def test_a_conflict_can_be_left_out_of_the_quarantine(store: CentralStore, kiosk: Kiosk) -> None:
    from uuid import UUID

    first = kiosk.seal(3)
    second = kiosk.seal(3, packet_id=UUID(first.packet_id))
    store.store_packets([(read_header(first.data), first.data, "mqtt")])
    outcome = store.commit_packets(
        [(read_header(second.data), second.data, "mqtt")], quarantine_conflicts=False
    )
    assert outcome == [StoreOutcome.CONFLICT]
    assert store.quarantined() == []


def test_packets_filter_by_kiosk(store: CentralStore, kiosk: Kiosk) -> None:
    other = centralkit.kiosk("320715-02", kiosk.central)
    store.store_packets([item(kiosk, 1), item(other, 1), item(kiosk, 2)])
    assert [(r["kiosk"], r["seq"]) for r in store.packets(kiosk.kiosk_id)] == [
        (kiosk.kiosk_id, 1),
        (kiosk.kiosk_id, 2),
    ]
    assert len(store.packets()) == 3
    row = store.packets(other.kiosk_id)[0]
    assert set(row) >= {"packet_id", "kiosk", "seq", "created_at", "received_at", "bytes"}
    assert row["received_at"].endswith("Z") and row["bytes"] > 0


def test_two_connections_racing_on_overlapping_batches_store_each_once(url: str, kiosk: Kiosk) -> None:
    batch = [item(kiosk, seq) for seq in range(1, 21)]
    batches = [batch, batch[::-1]]  # opposite orders: the store must not deadlock on them
    results: dict[int, list[bool]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def consumer(n: int) -> None:
        try:
            with open_store(url) as s:
                start.wait(timeout=10)
                results[n] = s.store_packets(batches[n])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=consumer, args=(n,), name=f"consumer-{n}") for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert all(x ^ y for x, y in zip(results[0], results[1][::-1], strict=True)), "each stored exactly once"
    with open_store(url) as s:
        assert len(s.packets()) == 20


# ----------------------------------------------------------------------------- quarantine


def test_quarantine_keeps_bytes_and_reason_once_per_content(store: CentralStore) -> None:
    qid = store.quarantine(b"\x00garbage", kiosk_hint=None, reason="bad_magic: not a packet")
    store.quarantine(b"EKTP...", kiosk_hint="320715-09", reason="unknown_kiosk", source="import")
    rows = store.quarantined()
    assert rows[0] == {
        "id": qid,
        "received_at": rows[0]["received_at"],
        "last_received_at": rows[0]["received_at"],
        "times": 1,
        "kiosk_hint": None,
        "reason": "bad_magic: not a packet",
        "source": None,
        "bytes": 8,
    }
    assert [r["source"] for r in store.quarantined("320715-09")] == ["import"]
    again = store.quarantine(b"\x00garbage", kiosk_hint=None, reason="bad_magic: again", source="mqtt")
    assert again == qid
    row = store.quarantined()[0]
    assert (row["times"], row["reason"], row["source"]) == (2, "bad_magic: again", "mqtt")
    assert row["last_received_at"] >= row["received_at"]
    assert len(store.quarantined()) == 2


# ----------------------------------------------------------------------------- status, health, fleet


def test_status_counter_ignores_a_stale_last_will(store: CentralStore) -> None:
    k = "320715-01"
    assert store.record_status(k, {"state": "online", "connection": 2}) is True
    assert store.record_status(k, {"state": "offline", "connection": 1}) is False  # the Will of connection 1
    assert store.status(k)["state"] == "online"  # type: ignore[index]
    assert store.record_status(k, {"state": "offline", "connection": 2}) is True
    assert (
        store.record_status(k, {"state": "online", "connection": 2}) is False
    )  # late copy of the same connection
    assert store.status(k)["state"] == "offline"  # type: ignore[index]
    assert store.record_status(k, {"state": "online", "connection": 3}) is True
    assert (
        store.record_status(k, {"state": "online", "connection": 3}) is True
    )  # retained redelivery: harmless
    assert store.status(k) == {"state": "online", "connection": 3, "ts": store.status(k)["ts"]}  # type: ignore[index]
    assert store.record_status(k, {"state": "offline"}) is True  # no counter: applied as it comes
    assert store.fleet()[0]["online"] is False


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"state": "sleeping"},
        {"state": "online", "connection": "7"},
        {"state": "online", "connection": True},
    ],
)
def test_status_that_is_not_a_status_document_is_refused(store: CentralStore, doc: dict[str, object]) -> None:
    with pytest.raises(StoreInputError):
        store.record_status("320715-01", doc)
    assert store.status("320715-01") is None


def test_fleet_rows_from_keys_status_health_and_packets(store: CentralStore, kiosk: Kiosk) -> None:
    store.add_kiosk(kiosk.kiosk_id, kiosk.public_pem)
    store.store_packets([item(kiosk, seq) for seq in (1, 2, 5, 6, 9)])
    store.record_status(kiosk.kiosk_id, {"state": "online", "connection": 1})
    health = {
        "kiosk_id": kiosk.kiosk_id,
        "ts": "2026-11-27T10:00:00Z",
        "devices": {
            "fingerprint": {"state": "ok", "detail": ""},
            "signature": {"state": "absent", "detail": "no answer"},
            "iris": {"state": "fault", "detail": "no answer on USB 1234:5678"},
            "camera": {"state": "degraded", "detail": "low light"},
        },
        "queue": {"pending": 12, "pending_bytes": 3600000, "oldest_pending_age_s": 3600.0},
    }
    store.record_health(kiosk.kiosk_id, health)
    store.record_status("320715-77", {"state": "offline", "connection": 4})  # status only, not registered
    store.record_health("320715-88", {"devices": "nonsense", "queue": {"pending": "many"}})  # odd doc, no ts
    assert store.health(kiosk.kiosk_id) == health

    rows = {r["kiosk"]: r for r in store.fleet()}
    assert sorted(rows) == [kiosk.kiosk_id, "320715-77", "320715-88"]
    row = rows[kiosk.kiosk_id]
    assert row == {
        "kiosk": kiosk.kiosk_id,
        "region": kiosk.kiosk_id[:6],
        "registered": True,
        "online": True,
        "status_ts": row["status_ts"],
        "last_seen": max(row["status_ts"], row["health_received_at"]),  # type: ignore[type-var]
        "last_health_ts": "2026-11-27T10:00:00Z",
        "health_received_at": row["health_received_at"],
        "health_age_s": row["health_age_s"],
        "devices": {
            "fingerprint": {"state": "ok", "detail": "", "hint": ""},
            "signature": {"state": "absent", "detail": "no answer", "hint": default_hint("signature")},
            "iris": {"state": "fault", "detail": "no answer on USB 1234:5678", "hint": default_hint("iris")},
            "camera": {"state": "degraded", "detail": "low light", "hint": default_hint("camera")},
        },
        "faulty": ["iris", "signature"],
        "degraded": ["camera"],
        "backlog": 12,
        "backlog_bytes": 3600000,
        "oldest_pending_age_s": 3600.0,
        "rejected": None,
        "damaged": None,
        "clock_synchronised": None,
        "clock_unsynchronised_s": None,
        "disk_free_bytes": None,
        "cpu_temp_c": None,
        "reconnects": None,
        "refused_pubacks": None,
        "kiosk_problems": [],
        "stored": 5,
        "synthetic": 0,
        "last_seq": 9,
        "last_delivery": max(p["received_at"] for p in store.packets(kiosk.kiosk_id)),
        "gaps": [[3, 4], [7, 8]],
        "duplicate_deliveries": 0,
        "quarantined": 0,
        "quarantine_bytes": 0,
        "quarantine_dropped": 0,
        "problems": [
            "iris fault: no answer on USB 1234:5678",
            "signature absent: no answer",
        ],
    }
    assert 0 <= row["health_age_s"] < 60  # type: ignore[operator]
    assert row["status_ts"] is not None
    assert rows["320715-77"]["online"] is False and rows["320715-77"]["registered"] is False
    assert rows["320715-77"]["stored"] == 0 and rows["320715-77"]["gaps"] == []
    odd = rows["320715-88"]
    assert odd["online"] is None and odd["faulty"] == [] and odd["backlog"] is None
    assert odd["last_health_ts"] is not None  # the centre's receipt time when the doc has no ts


def test_fleet_gaps_include_missing_first_seqs_and_span_many_kiosks(
    store: CentralStore, kiosk: Kiosk
) -> None:
    other = centralkit.kiosk("320715-02", kiosk.central)
    store.store_packets([item(kiosk, s) for s in (3, 4, 6)] + [item(other, s) for s in (1, 2, 3)])
    rows = {r["kiosk"]: r for r in store.fleet()}
    assert rows[kiosk.kiosk_id]["gaps"] == [[1, 2], [5, 5]]
    assert rows[other.kiosk_id]["gaps"] == []
    assert rows[other.kiosk_id]["online"] is None


def test_health_must_be_an_object(store: CentralStore) -> None:
    with pytest.raises(StoreInputError):
        store.record_health("320715-01", ["not", "a", "dict"])  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- opening


def test_sqlite_store_is_wal_with_full_sync(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "sub" / "central.db"
    open_store(str(path)).close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    with open_store(str(path)) as s:
        assert s._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # type: ignore[attr-defined]  # FULL


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "central.db"
    path.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(StoreError, match=str(path)):
        open_store(str(path))


def test_unreachable_postgres_is_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable, match="cannot connect") as info:
        open_store("postgresql://ektp:s3cret@127.0.0.1:1/ektp?connect_timeout=2")
    assert "s3cret" not in str(info.value)


def test_closed_store_refuses_work(url: str) -> None:
    s = open_store(url)
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        s.packets()


def test_redact_url() -> None:
    assert redact_url("postgresql://u:pw@h:5432/db?x=1") == "postgresql://u:***@h:5432/db?x=1"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert redact_url("/var/lib/ektp-central/central.db") == "/var/lib/ektp-central/central.db"


def test_devices_not_yet_tested_are_not_faulty_in_the_fleet(store: CentralStore) -> None:
    """A kiosk's first health after a start reports its devices absent with detail "not yet tested":
    nothing is known of them yet, so the fleet does not call them faulty."""
    store.record_health(
        "320715-01",
        {
            "devices": {
                "fingerprint": {"state": "absent", "detail": "not yet tested"},
                "iris": {"state": "fault", "detail": "iris on USB did not answer"},
                "camera": {"state": "absent", "detail": "no camera on the CSI port"},
            }
        },
    )
    (row,) = store.fleet()
    assert row["faulty"] == ["camera", "iris"]
