"""Ingest at the centre, on both store backends: verified packets stored once in one
transaction per batch; unknown kiosks, bad signatures and garbage quarantined and rejected."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import UUID

import pytest

import central.ingest
from central.ingest import Ingestor, PacketNotStored
from central.store import CentralStore, StoreError, StoreInputError, open_store
from tests import centralkit
from tests.centralkit import Kiosk
from wire.packet import PacketError


@pytest.fixture(params=centralkit.BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CentralStore]:
    for url in centralkit.store_url(request.param, tmp_path):
        with open_store(url) as s:
            yield s


@pytest.fixture
def kiosk(tmp_path: Path, store: CentralStore) -> Kiosk:
    k = centralkit.kiosk("320715-01", centralkit.central_keys(tmp_path))
    store.add_kiosk(k.kiosk_id, k.public_pem)
    return k


@pytest.fixture
def ingestor(store: CentralStore, kiosk: Kiosk) -> Ingestor:
    return Ingestor(store, kiosk.central)


def test_a_packet_is_stored_then_reported_duplicate(
    ingestor: Ingestor, store: CentralStore, kiosk: Kiosk
) -> None:
    packet = kiosk.seal(1)
    first = ingestor.ingest(packet.data, "mqtt")
    assert (first.status, first.packet_id, first.kiosk, first.seq, first.reason) == (
        "stored",
        packet.packet_id,
        kiosk.kiosk_id,
        1,
        "",
    )
    again = ingestor.ingest(packet.data, "import")
    assert again.status == "duplicate" and again.acknowledged and again.packet_id == packet.packet_id
    assert [(r["packet_id"], r["source"]) for r in store.packets()] == [(packet.packet_id, "mqtt")]


def test_ingest_many_is_one_group_commit_in_input_order(
    ingestor: Ingestor, store: CentralStore, kiosk: Kiosk, monkeypatch: pytest.MonkeyPatch
) -> None:
    p1, p2, p3 = kiosk.seal(1), kiosk.seal(2), kiosk.seal(3)
    commits: list[int] = []
    real = store.commit_packets

    def spy(items):  # type: ignore[no-untyped-def]
        commits.append(len(items))
        return real(items)

    monkeypatch.setattr(store, "commit_packets", spy)
    results = ingestor.ingest_many([p1.data, b"garbage", p2.data, p1.data, p3.data], "mqtt")
    assert [r.status for r in results] == ["stored", "rejected", "stored", "duplicate", "stored"]
    assert [r.seq for r in results] == [1, None, 2, 1, 3]
    assert commits == [4], "the verified packets of a batch go to the store in one transaction"
    assert [r["seq"] for r in store.packets()] == [1, 2, 3]
    assert len(store.quarantined()) == 1


def test_unknown_kiosk_is_quarantined_and_rejected(
    ingestor: Ingestor, store: CentralStore, kiosk: Kiosk
) -> None:
    stranger = centralkit.kiosk("320715-99", kiosk.central)
    packet = stranger.seal(5)
    result = ingestor.ingest(packet.data, "mqtt")
    assert result.status == "rejected" and not result.acknowledged
    assert result.fault == "unknown_kiosk"
    assert "kiosk 320715-99 is not registered" in result.reason
    assert "ektp-central kiosk add 320715-99 --public-key FILE" in result.reason
    assert (result.packet_id, result.kiosk, result.seq) == (packet.packet_id, "320715-99", 5)
    assert store.packets() == []
    (row,) = store.quarantined()
    assert row["kiosk_hint"] == "320715-99" and row["reason"] == result.reason and row["source"] == "mqtt"
    assert row["bytes"] == len(packet.data)

    store.add_kiosk(stranger.kiosk_id, stranger.public_pem)  # registered later: the same bytes now store
    assert ingestor.ingest(packet.data, "mqtt").status == "stored"


def test_bad_signature_is_quarantined_and_rejected(
    ingestor: Ingestor, store: CentralStore, kiosk: Kiosk
) -> None:
    impostor = centralkit.kiosk(kiosk.kiosk_id, kiosk.central)  # same id, another key
    forged = impostor.seal(1)
    tampered = bytearray(kiosk.seal(2).data)
    tampered[-100] ^= 0x01  # a ciphertext byte
    results = ingestor.ingest_many([forged.data, bytes(tampered)], "mqtt")
    assert [r.status for r in results] == ["rejected", "rejected"]
    assert [r.fault for r in results] == ["bad_signature", "bad_signature"]
    assert all("signature" in r.reason for r in results)
    assert store.packets() == []
    assert [q["kiosk_hint"] for q in store.quarantined()] == [kiosk.kiosk_id, kiosk.kiosk_id]


@pytest.mark.parametrize(
    ("mangle", "fault"),
    [
        (lambda d: b"", "truncated"),
        (lambda d: b"not a packet at all", "bad_magic"),
        (lambda d: d[:4] + b"\x09" + d[5:], "wrong_version"),
        (lambda d: d[:60], "truncated"),
        (lambda d: d[:-10], "truncated"),
        (lambda d: d + b"\x00", "malformed"),
    ],
)
def test_undecodable_input_is_quarantined_and_rejected(
    ingestor: Ingestor,
    store: CentralStore,
    kiosk: Kiosk,
    mangle: Callable[[bytes], bytes],
    fault: str,
) -> None:
    data = mangle(kiosk.seal(1).data)
    result = ingestor.ingest(data, "import")
    assert result.status == "rejected" and result.fault == fault
    assert result.reason.startswith(f"{fault}: ")
    assert store.packets() == []
    (row,) = store.quarantined()
    assert row["bytes"] == len(data) and row["source"] == "import"


def test_input_over_the_cap_is_rejected_and_only_its_head_kept(
    ingestor: Ingestor, store: CentralStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(central.ingest, "MAX_PACKET_BYTES", 1000)
    monkeypatch.setattr(central.ingest, "QUARANTINE_HEAD_BYTES", 100)
    result = ingestor.ingest(b"E" * 5000, "mqtt")
    assert result.status == "rejected" and result.fault == "too_large"
    assert [q["bytes"] for q in store.quarantined()] == [100]


def test_same_packet_id_with_other_bytes_is_acked_as_duplicate_and_kept_aside(
    ingestor: Ingestor, store: CentralStore, kiosk: Kiosk
) -> None:
    first = kiosk.seal(4)
    second = kiosk.seal(4, packet_id=UUID(first.packet_id))
    assert ingestor.ingest(first.data, "mqtt").status == "stored"
    result = ingestor.ingest(second.data, "mqtt")
    assert (result.status, result.fault) == ("duplicate", "conflict")
    assert "other bytes" in result.reason
    assert store.packet_data(first.packet_id) == first.data
    assert len(store.quarantined()) == 1


def test_decrypt_opens_a_stored_packet(ingestor: Ingestor, kiosk: Kiosk) -> None:
    packet = kiosk.seal(1)
    ingestor.ingest(packet.data, "mqtt")
    header, record = ingestor.decrypt(packet.packet_id)
    assert header.packet_id == packet.packet_id
    assert record.nik == centralkit.record().nik
    with pytest.raises(PacketNotStored):
        ingestor.decrypt("00000000-0000-7000-8000-000000000000")


def test_decrypt_with_another_centre_key_fails(store: CentralStore, kiosk: Kiosk, tmp_path: Path) -> None:
    packet = kiosk.seal(1)
    Ingestor(store).ingest(packet.data, "mqtt")  # storing needs no centre key
    other = centralkit.central_keys(tmp_path / "other")
    with pytest.raises(PacketError) as info:
        Ingestor(store, other).decrypt(packet.packet_id)
    assert info.value.reason.value == "wrong_key"


def test_unknown_source_and_a_failing_store_raise(
    ingestor: Ingestor, store: CentralStore, kiosk: Kiosk
) -> None:
    with pytest.raises(StoreInputError):
        ingestor.ingest(kiosk.seal(1).data, "email")
    store.close()
    with pytest.raises(StoreError):  # the consumer must then ack nothing of the batch
        ingestor.ingest_many([kiosk.seal(2).data], "mqtt")


def test_empty_batch(ingestor: Ingestor) -> None:
    assert ingestor.ingest_many([], "mqtt") == []
