"""Ingest at the centre, on both store backends: authenticated packets stored once in one
transaction per batch; what does not authenticate is damaged (kept only from an import),
unknown kiosks and bodies for another centre key rejected, other bytes under a stored id a
conflict (both quarantined); the quarantine retried once the cause is fixed."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import UUID

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import central.ingest
from central.ingest import Ingestor, PacketNotStored
from central.store import CentralStore, StoreError, StoreInputError, open_store
from tests import centralkit
from tests.centralkit import Kiosk
from wire import packet as wire_packet
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


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_packet_is_stored_then_reported_duplicate(
    ingestor: Ingestor, store: CentralStore, kiosk: Kiosk
) -> None:
    packet = kiosk.seal(1)
    first = ingestor.ingest(packet.data, "mqtt")
    assert (first.status, first.packet_id, first.kiosk, first.seq, first.reason, first.sha256) == (
        "stored",
        packet.packet_id,
        kiosk.kiosk_id,
        1,
        "",
        sha(packet.data),
    )
    assert first.acknowledged
    again = ingestor.ingest(packet.data, "import")
    assert again.status == "duplicate" and again.acknowledged and again.packet_id == packet.packet_id
    assert [(r["packet_id"], r["source"]) for r in store.packets()] == [(packet.packet_id, "mqtt")]


def test_ingest_many_is_one_group_commit_in_input_order(
    ingestor: Ingestor, store: CentralStore, kiosk: Kiosk, monkeypatch: pytest.MonkeyPatch
) -> None:
    p1, p2, p3 = kiosk.seal(1), kiosk.seal(2), kiosk.seal(3)
    commits: list[int] = []
    real = store.commit_packets

    def spy(items, **kwargs):  # type: ignore[no-untyped-def]
        commits.append(len(items))
        return real(items, **kwargs)

    monkeypatch.setattr(store, "commit_packets", spy)
    inputs = [p1.data, b"garbage", p2.data, p1.data, p3.data]
    results = ingestor.ingest_many(inputs, "mqtt")
    assert [r.status for r in results] == ["stored", "damaged", "stored", "duplicate", "stored"]
    assert [r.seq for r in results] == [1, None, 2, 1, 3]
    assert [r.acknowledged for r in results] == [True, False, True, True, True]
    assert [r.sha256 for r in results] == [sha(d) for d in inputs]
    assert commits == [4], "the verified packets of a batch go to the store in one transaction"
    assert [r["seq"] for r in store.packets()] == [1, 2, 3]
    assert store.quarantined() == [], "damaged bytes from MQTT are not kept: the kiosk sends them again"


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
    assert "ektp-central quarantine retry" in result.reason
    assert (result.packet_id, result.kiosk, result.seq) == (packet.packet_id, "320715-99", 5)
    assert store.packets() == []
    (row,) = store.quarantined()
    assert row["kiosk_hint"] == "320715-99" and row["reason"] == result.reason and row["source"] == "mqtt"
    assert row["bytes"] == len(packet.data)

    store.add_kiosk(stranger.kiosk_id, stranger.public_pem)  # registered later: the same bytes now store
    assert ingestor.ingest(packet.data, "mqtt").status == "stored"


def test_a_bit_flipped_or_forged_packet_from_mqtt_is_damaged_and_not_kept(
    ingestor: Ingestor, store: CentralStore, kiosk: Kiosk
) -> None:
    impostor = centralkit.kiosk(kiosk.kiosk_id, kiosk.central)  # same id, another key
    forged = impostor.seal(1)
    sent = kiosk.seal(2)
    tampered = bytearray(sent.data)
    tampered[-100] ^= 0x01  # one bit of a ciphertext byte, as a flaky link might
    results = ingestor.ingest_many([forged.data, bytes(tampered)], "mqtt")
    assert [r.status for r in results] == ["damaged", "damaged"]
    assert [r.fault for r in results] == ["bad_signature", "bad_signature"]
    assert not any(r.acknowledged for r in results)
    assert all(r.reason.startswith("damaged: bad_signature: ") for r in results)
    assert results[1].sha256 == sha(bytes(tampered)) != sha(sent.data)
    assert store.packets() == [] and store.quarantined() == []
    assert ingestor.ingest(sent.data, "mqtt").status == "stored"  # the kiosk's resend of the good bytes


def test_a_bit_flipped_packet_from_an_import_is_damaged_and_quarantined(
    ingestor: Ingestor, store: CentralStore, kiosk: Kiosk
) -> None:
    tampered = bytearray(kiosk.seal(2).data)
    tampered[200] ^= 0x80
    result = ingestor.ingest(bytes(tampered), "import")
    assert (result.status, result.fault, result.seq) == ("damaged", "bad_signature", 2)
    (row,) = store.quarantined()
    assert row["reason"] == result.reason and row["reason"].startswith("damaged: ")
    assert (row["source"], row["kiosk_hint"]) == ("import", kiosk.kiosk_id)
    assert store.packets() == []


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
@pytest.mark.parametrize("source", ["mqtt", "import"])
def test_undecodable_input_is_damaged_and_kept_only_from_an_import(
    ingestor: Ingestor,
    store: CentralStore,
    kiosk: Kiosk,
    mangle: Callable[[bytes], bytes],
    fault: str,
    source: str,
) -> None:
    data = mangle(kiosk.seal(1).data)
    result = ingestor.ingest(data, source)
    assert result.status == "damaged" and result.fault == fault and not result.acknowledged
    assert result.reason.startswith(f"damaged: {fault}: ")
    assert store.packets() == []
    if source == "mqtt":
        assert store.quarantined() == []
    else:
        (row,) = store.quarantined()
        assert row["bytes"] == len(data) and row["source"] == "import" and row["reason"] == result.reason


def test_input_over_the_cap_is_rejected_and_only_its_head_kept(
    ingestor: Ingestor, store: CentralStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(central.ingest, "MAX_PACKET_BYTES", 1000)
    monkeypatch.setattr(central.ingest, "QUARANTINE_HEAD_BYTES", 100)
    result = ingestor.ingest(b"E" * 5000, "mqtt")
    assert result.status == "rejected" and result.fault == "too_large"
    assert [q["bytes"] for q in store.quarantined()] == [100]


def test_other_bytes_under_a_stored_id_are_a_conflict_quarantined_never_a_duplicate(
    ingestor: Ingestor, store: CentralStore, kiosk: Kiosk
) -> None:
    first = kiosk.seal(4)
    second = kiosk.seal(4, packet_id=UUID(first.packet_id))
    assert ingestor.ingest(first.data, "mqtt").status == "stored"
    result = ingestor.ingest(second.data, "mqtt")
    assert (result.status, result.fault, result.acknowledged) == ("conflict", "conflict", False)
    assert result.sha256 == sha(second.data)
    assert "other bytes" in result.reason and first.packet_id in result.reason
    assert store.packet_data(kiosk.kiosk_id, first.packet_id) == first.data
    (row,) = store.quarantined()
    assert row["reason"] == result.reason and row["bytes"] == len(second.data)
    assert ingestor.ingest(first.data, "mqtt").status == "duplicate"  # the first copy still acks


def test_a_peer_using_another_kiosks_packet_id_does_not_shadow_that_kiosks_packet(
    ingestor: Ingestor, store: CentralStore, kiosk: Kiosk
) -> None:
    peer = centralkit.kiosk("320715-02", kiosk.central)
    store.add_kiosk(peer.kiosk_id, peer.public_pem)
    own = kiosk.seal(1)
    squatter = peer.seal(9, packet_id=UUID(own.packet_id))
    assert ingestor.ingest(squatter.data, "mqtt").status == "stored"
    result = ingestor.ingest(own.data, "mqtt")
    assert (result.status, result.kiosk, result.packet_id) == ("stored", kiosk.kiosk_id, own.packet_id)
    assert sorted((r["kiosk"], r["seq"]) for r in store.packets()) == [
        (kiosk.kiosk_id, 1),
        (peer.kiosk_id, 9),
    ]
    assert store.quarantined() == []


def test_a_body_for_another_centre_key_is_rejected_and_quarantined(
    ingestor: Ingestor, store: CentralStore, kiosk: Kiosk, tmp_path: Path
) -> None:
    other_centre = centralkit.central_keys(tmp_path / "other")
    misdirected = Kiosk(kiosk.kiosk_id, kiosk.key, other_centre).seal(1)  # signed right, sealed wrong
    result = ingestor.ingest(misdirected.data, "mqtt")
    assert (result.status, result.fault, result.acknowledged) == ("rejected", "wrong_key", False)
    assert result.reason.startswith("wrong_key: ")
    assert store.packets() == []
    (row,) = store.quarantined()
    assert row["reason"] == result.reason and row["source"] == "mqtt"
    # without the centre's keys the check is skipped: what a keyless command stores
    assert Ingestor(store).ingest(misdirected.data, "import").status == "stored"


def seal_inconsistent(kiosk: Kiosk) -> bytes:
    """A packet the kiosk signed whose header's body hash is not the body's (a buggy sealer)."""
    good = kiosk.seal(3).data
    header = wire_packet.read_header(good)
    body = centralkit.record().to_bytes()
    head = bytearray(good[: header.header_len])
    head[46:78] = hashlib.sha256(b"another body").digest()  # the header's body SHA-256
    ephemeral = X25519PrivateKey.generate()
    ephemeral_pub = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    central_public = kiosk.central.encryption.public_key()
    central_pub = central_public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    key, nonce = wire_packet._body_key(
        ephemeral.exchange(central_public), UUID(header.packet_id).bytes, ephemeral_pub, central_pub
    )
    aad = bytes(head) + ephemeral_pub
    signed = aad + ChaCha20Poly1305(key).encrypt(nonce, body, aad)
    return signed + kiosk.key.sign(signed)


def test_a_body_that_does_not_match_its_header_is_rejected(
    ingestor: Ingestor, store: CentralStore, kiosk: Kiosk
) -> None:
    data = seal_inconsistent(kiosk)
    result = ingestor.ingest(data, "mqtt")
    assert (result.status, result.fault) == ("rejected", "body_mismatch")
    assert len(store.quarantined()) == 1 and store.packets() == []


def test_quarantine_retry_after_kiosk_add_stores_exactly_once_and_empties_the_quarantine(
    ingestor: Ingestor, store: CentralStore, kiosk: Kiosk
) -> None:
    stranger = centralkit.kiosk("320715-99", kiosk.central)
    packets = [stranger.seal(seq) for seq in (1, 2)]
    assert [r.status for r in ingestor.ingest_many([p.data for p in packets], "import")] == ["rejected"] * 2
    ids = [q["id"] for q in store.quarantined()]
    assert len(ids) == 2

    still = ingestor.retry_quarantined(ids)  # not registered yet: they stay, with this attempt's reason
    assert [r.status for _, r in still] == ["rejected", "rejected"]
    assert [q["id"] for q in store.quarantined()] == ids and store.packets() == []
    assert all(q["times"] == 1 for q in store.quarantined()), "a retry is not another arrival"

    store.add_kiosk(stranger.kiosk_id, stranger.public_pem)
    retried = ingestor.retry_quarantined([*ids, 12345])  # an id not in the quarantine is skipped
    assert [(qid, r.status, r.seq) for qid, r in retried] == [(ids[0], "stored", 1), (ids[1], "stored", 2)]
    assert store.quarantined() == []
    rows = store.packets(stranger.kiosk_id)
    assert [(r["seq"], r["source"]) for r in rows] == [(1, "import"), (2, "import")]
    assert ingestor.retry_quarantined(ids) == []  # nothing left to retry
    assert [ingestor.ingest(p.data, "mqtt").status for p in packets] == ["duplicate", "duplicate"]
    assert len(store.packets()) == 2


def test_quarantine_retry_keeps_what_still_fails_with_the_new_reason(
    ingestor: Ingestor, store: CentralStore, kiosk: Kiosk
) -> None:
    first = kiosk.seal(4)
    second = kiosk.seal(4, packet_id=UUID(first.packet_id))
    ingestor.ingest_many([first.data, second.data], "mqtt")  # the second: a conflict, quarantined
    garbage = store.quarantine(b"\x00garbage", kiosk_hint=None, reason="bad_magic: old reason", source=None)
    conflict_id = next(q["id"] for q in store.quarantined() if q["id"] != garbage)
    retried = dict(ingestor.retry_quarantined([conflict_id, garbage]))
    assert (retried[conflict_id].status, retried[garbage].status) == ("conflict", "damaged")
    rows = {q["id"]: q for q in store.quarantined()}
    assert sorted(rows) == sorted([conflict_id, garbage])
    assert rows[garbage]["reason"].startswith("damaged: bad_magic: ")  # the new reason
    assert rows[conflict_id]["reason"].startswith("conflict: ") and rows[conflict_id]["times"] == 1
    assert store.packet_data(kiosk.kiosk_id, first.packet_id) == first.data


def test_decrypt_opens_a_stored_packet(ingestor: Ingestor, kiosk: Kiosk) -> None:
    packet = kiosk.seal(1)
    ingestor.ingest(packet.data, "mqtt")
    header, record = ingestor.decrypt(kiosk.kiosk_id, packet.packet_id)
    assert header.packet_id == packet.packet_id
    assert record.nik == centralkit.record().nik
    with pytest.raises(PacketNotStored):
        ingestor.decrypt(kiosk.kiosk_id, "00000000-0000-7000-8000-000000000000")
    with pytest.raises(PacketNotStored):
        ingestor.decrypt("320715-02", packet.packet_id)  # the id is another kiosk's


def test_decrypt_with_another_centre_key_fails(store: CentralStore, kiosk: Kiosk, tmp_path: Path) -> None:
    packet = kiosk.seal(1)
    Ingestor(store).ingest(packet.data, "mqtt")  # storing without the centre's keys skips the body check
    other = centralkit.central_keys(tmp_path / "other")
    with pytest.raises(PacketError) as info:
        Ingestor(store, other).decrypt(kiosk.kiosk_id, packet.packet_id)
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


def test_a_synthetic_packet_is_stored_apart_from_residents(
    ingestor: Ingestor, store: CentralStore, kiosk: Kiosk
) -> None:
    """A simulated kit's test resident carries the signed mark: stored, listed as synthetic,
    and never counted among the kiosk's residents in the fleet."""
    real, test = kiosk.seal(1), kiosk.seal(2, synthetic=True)
    assert [r.status for r in ingestor.ingest_many([real.data, test.data], "mqtt")] == ["stored", "stored"]
    assert [(p["seq"], p["synthetic"]) for p in store.packets()] == [(1, False), (2, True)]
    (row,) = store.fleet()
    assert (row["stored"], row["synthetic"], row["last_seq"], row["gaps"]) == (1, 1, 2, [])


def test_quarantine_is_bounded_per_kiosk_and_counts_what_it_drops(
    ingestor: Ingestor, store: CentralStore, kiosk: Kiosk
) -> None:
    """Sixty 2-MB garbage files keep 4 KiB each; a kiosk's rejected packets stop at its byte cap,
    counted in the fleet, while another kiosk's quarantine is untouched."""
    for i in range(60):
        assert ingestor.ingest(bytes([i]) * 2_000_000, "import").status == "damaged"
    assert {q["bytes"] for q in store.quarantined()} == {central.ingest.QUARANTINE_HEAD_BYTES}

    stranger = centralkit.kiosk("320715-99", kiosk.central)  # not registered: each packet is rejected
    size = len(stranger.seal(1).data)
    store.quarantine_cap_bytes = 3 * size + size // 2
    results = ingestor.ingest_many([stranger.seal(seq).data for seq in range(1, 7)], "mqtt")
    assert {r.status for r in results} == {"rejected"}
    kept = store.quarantined("320715-99")
    assert len(kept) == 3
    again = ingestor.ingest(store.quarantined_data([kept[0]["id"]])[0][2], "mqtt")  # bytes it holds: counted
    assert again.status == "rejected" and store.quarantined("320715-99")[0]["times"] == 2
    rows = {r["kiosk"]: r for r in store.fleet()}
    assert (rows["320715-99"]["quarantined"], rows["320715-99"]["quarantine_dropped"]) == (3, 3)
    assert rows["320715-99"]["quarantine_bytes"] == sum(q["bytes"] for q in kept)
    assert rows[kiosk.kiosk_id]["quarantine_dropped"] == 0
    other = centralkit.kiosk("320715-98", kiosk.central)
    assert ingestor.ingest(other.seal(1).data, "mqtt").status == "rejected"
    assert len(store.quarantined("320715-98")) == 1  # its own cap, not the full one's
