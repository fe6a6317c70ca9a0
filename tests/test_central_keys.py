"""A kiosk's signing keys over time, on both store backends: a rotation keeps the packets
signed before it verifiable, a revocation refuses what the key signed after the suspected
compromise (and only that), the schema 2 store gains the key history, and the operator's
commands (`kiosk key add|revoke|list`) as a subprocess."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central.ingest import Ingestor
from central.kiosk_keys import BEGINNING
from central.store import SCHEMA_VERSION, CentralStore, StoreInputError, open_store
from tests import centralkit
from tests.centralkit import Kiosk
from tests.test_central_cli import Centre, export_dir, init_keys, make_centre
from wire.keys import create_kiosk_key, public_path

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)  # the kiosk's first key in use
T1 = dt.datetime(2026, 11, 10, tzinfo=dt.UTC)  # it rotates
T2 = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)  # its old key is suspected compromised from here


def text(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.000Z")


@pytest.fixture(params=centralkit.BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CentralStore]:
    for url in centralkit.store_url(request.param, tmp_path):
        with open_store(url) as s:
            yield s


def rotated(kiosk: Kiosk) -> Kiosk:
    return Kiosk(kiosk.kiosk_id, Ed25519PrivateKey.generate(), kiosk.central)


def test_a_rotation_keeps_the_old_packets_verifiable(store: CentralStore, tmp_path: Path) -> None:
    old = centralkit.kiosk("320715-01", centralkit.central_keys(tmp_path))
    new = rotated(old)
    store.add_kiosk(old.kiosk_id, old.public_pem)
    assert store.add_kiosk_key(old.kiosk_id, new.public_pem, valid_from=text(T1)) is True
    assert store.add_kiosk_key(old.kiosk_id, new.public_pem, valid_from=text(T1)) is False  # known: no-op

    keys = store.kiosk_keys(old.kiosk_id)
    assert [(k.valid_from, k.valid_until) for k in keys] == [(BEGINNING, text(T1)), (text(T1), None)]
    assert [k.to_json()["current"] for k in keys] == [False, True]
    assert store.kiosks()[0]["keys"] == 2

    ingestor = Ingestor(store, old.central)
    before = old.seal(1, created_at=T0)  # in the outbox when the kiosk rotated, sent after
    after = new.seal(2, created_at=T1 + dt.timedelta(hours=1))
    results = ingestor.ingest_many([before.data, after.data], "mqtt")
    assert [r.status for r in results] == ["stored", "stored"]
    for sealed in (before, after):  # each opens with the key that signed it
        header, _ = ingestor.decrypt(old.kiosk_id, sealed.packet_id)
        assert header.seq == sealed.seq

    stranger = rotated(old)  # never registered: its signature verifies with no key of the kiosk
    refused = ingestor.ingest(stranger.seal(3, created_at=T1).data, "mqtt")
    assert (refused.status, refused.fault) == ("damaged", "bad_signature")
    assert "tried" in refused.reason


def test_a_new_key_must_start_after_the_current_one(store: CentralStore, tmp_path: Path) -> None:
    old = centralkit.kiosk("320715-01", centralkit.central_keys(tmp_path))
    with pytest.raises(StoreInputError, match="not registered"):
        store.add_kiosk_key(old.kiosk_id, old.public_pem)
    store.add_kiosk(old.kiosk_id, old.public_pem)
    store.add_kiosk_key(old.kiosk_id, rotated(old).public_pem, valid_from=text(T1))
    with pytest.raises(StoreInputError, match="must start after"):
        store.add_kiosk_key(old.kiosk_id, rotated(old).public_pem, valid_from=text(T0))
    with pytest.raises(StoreInputError, match="RFC 3339"):
        store.add_kiosk_key(old.kiosk_id, rotated(old).public_pem, valid_from="yesterday")
    with pytest.raises(StoreInputError, match="RFC 3339"):
        store.add_kiosk_key(
            old.kiosk_id, rotated(old).public_pem, valid_from="2026-12-01T00:00:00"
        )  # no zone
    assert len(store.kiosk_keys(old.kiosk_id)) == 2


def test_a_revoked_key_is_refused_from_the_suspected_compromise_on(
    store: CentralStore, tmp_path: Path
) -> None:
    old = centralkit.kiosk("320715-01", centralkit.central_keys(tmp_path))
    new = rotated(old)
    store.add_kiosk(old.kiosk_id, old.public_pem)
    store.add_kiosk_key(old.kiosk_id, new.public_pem, valid_from=text(T1))
    old_fp = store.kiosk_keys(old.kiosk_id)[0].fingerprint
    revoked = store.revoke_kiosk_key(old.kiosk_id, old_fp, since=text(T2))
    assert revoked.revoked_since == text(T2)
    later = store.revoke_kiosk_key(old.kiosk_id, old_fp, since=text(T2 + dt.timedelta(days=1)))
    assert later.revoked_since == text(T2)  # revoking again never moves the moment later
    with pytest.raises(StoreInputError, match="has no key"):
        store.revoke_kiosk_key(old.kiosk_id, "0000:0000:0000:0000:0000:0000:0000:0000")

    ingestor = Ingestor(store, old.central)
    honest = old.seal(1, created_at=T0)
    forged = old.seal(2, created_at=T2 + dt.timedelta(minutes=5))  # the thief signs with the stolen key
    results = ingestor.ingest_many([honest.data, forged.data], "mqtt")
    assert [r.status for r in results] == ["stored", "rejected"]
    assert results[1].fault == "revoked_key" and old_fp in results[1].reason
    (kept,) = store.quarantined()
    assert kept["reason"].startswith("revoked_key") and kept["kiosk_hint"] == old.kiosk_id
    assert [p["seq"] for p in store.packets()] == [1]


def test_a_schema_2_store_gains_the_key_history(store: CentralStore, tmp_path: Path) -> None:
    """A store as schema 2 left it (one key per kiosk, no counters, no synthetic mark): reopened,
    each kiosk's key is its first key, valid from the beginning, and its packets still verify."""
    kiosk = centralkit.kiosk("320715-01", centralkit.central_keys(tmp_path))
    store.add_kiosk(kiosk.kiosk_id, kiosk.public_pem)
    packet = kiosk.seal(1, created_at=T0)
    assert Ingestor(store, kiosk.central).ingest(packet.data, "import").status == "stored"
    url = store_url_of(store)
    store.close()
    centralkit.run_sql(
        url,
        [
            ("DROP TABLE kiosk_keys", ()),
            ("DROP TABLE kiosk_counters", ()),
            ("ALTER TABLE packets DROP COLUMN synthetic", ()),
            ("UPDATE meta SET value = '2' WHERE key = 'schema_version'", ()),
        ],
    )
    with open_store(url) as reopened:
        assert reopened.schema_version() == SCHEMA_VERSION
        (key,) = reopened.kiosk_keys(kiosk.kiosk_id)
        assert (key.valid_from, key.valid_until, key.revoked_since) == (BEGINNING, None, None)
        assert reopened.packets()[0]["synthetic"] is False
        again = Ingestor(reopened, kiosk.central).ingest(packet.data, "mqtt")
        assert again.status == "duplicate"
        assert reopened.fleet()[0]["duplicate_deliveries"] == 1


def store_url_of(store: CentralStore) -> str:
    url: str = getattr(store, "_url", None) or str(store.path)  # type: ignore[attr-defined]
    return url


# ----------------------------------------------------------------------------- the commands


@pytest.fixture
def centre(tmp_path: Path) -> Centre:
    return make_centre(tmp_path, "data/central.db")


def test_rotation_and_revocation_as_an_operator_does_them(centre: Centre, tmp_path: Path) -> None:
    kiosk = init_keys(centre)
    old_pub = public_path(tmp_path / "kiosk" / "kiosk.key")
    assert centre.run("kiosk", "add", kiosk.kiosk_id, "--public-key", str(old_pub)).returncode == 0
    before = export_dir(kiosk, tmp_path / "before", [1, 2])  # signed with the first key

    new_path = tmp_path / "kiosk" / "kiosk-2.key"
    new = Kiosk(kiosk.kiosk_id, create_kiosk_key(new_path), kiosk.central)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    added = centre.json(
        "kiosk",
        "key",
        "add",
        kiosk.kiosk_id,
        "--public-key",
        str(public_path(new_path)),
        "--from",
        text(since),
    )
    assert added["changed"] is True and [k["current"] for k in added["keys"]] == [False, True]
    after = export_dir(new, tmp_path / "after", [3])

    report = centre.json("import", str(tmp_path / "before"))
    assert report["stored"] == 2, report
    assert centre.json("import", str(tmp_path / "after"))["stored"] == 1
    assert [p["packet_id"] for p in centre.json("packets")] == before + after

    listed = centre.json("kiosk", "key", "list", kiosk.kiosk_id)
    old_fp = listed[0]["fingerprint"]
    table = centre.run("kiosk", "key", "list", kiosk.kiosk_id)
    assert table.returncode == 0 and old_fp in table.stdout and "yes" in table.stdout

    revoked = centre.json("kiosk", "key", "revoke", kiosk.kiosk_id, old_fp)
    assert revoked["revoked_since"] is not None and revoked["current"] is False
    export_dir(kiosk, tmp_path / "stolen", [4])  # made now with the revoked key
    stolen = centre.json("import", str(tmp_path / "stolen"), code=1)
    assert stolen["rejected"] == 1 and stolen["files"][0]["reason"].startswith("revoked_key")

    bad = centre.run("kiosk", "key", "add", kiosk.kiosk_id, "--public-key", str(old_pub), "--from", "soon")
    assert bad.returncode == 2 and "RFC 3339" in bad.stderr
    unknown = centre.run("kiosk", "key", "revoke", kiosk.kiosk_id, "nope")
    assert unknown.returncode == 2 and "has no key nope" in unknown.stderr
    assert centre.run("kiosk", "key", "list", "320715-77").returncode == 1
    assert json.loads(centre.run("kiosks", "--json").stdout)[0]["keys"] == 2
