"""A salvage checks the kiosk's own signature on every packet it saves: a body damaged on the
kiosk is kept as ``damaged`` (for export, never sent), so the centre never reports the kiosk's
own damage as tampering in transit. On real SQLite files with real sealed packets, then
through the console scripts against a real broker and centre."""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.api import request
from agent.outbox import Outbox
from tests.agentkit import Kit
from tests.factories import small_record
from tests.netkit import Broker
from wire.packet import SealedPacket, seal

KIOSK = "320715-01"
PAGE = 4096


def _builder(key: Ed25519PrivateKey) -> Callable[[int], SealedPacket]:
    central = X25519PrivateKey.generate().public_key()
    record = small_record()
    return lambda seq: seal(
        record, kiosk_id=KIOSK, seq=seq, kiosk_key=key, central_public=central, clock_synced=True
    )


def flip_byte_in_body(db: Path, body: bytes) -> None:
    """Storage damage SQLite cannot see: one byte inside the stored packet bytes."""
    data = db.read_bytes()
    at = data.find(body[100:164])
    assert at > 0 and data.find(body[100:164], at + 1) < 0, "the body should be stored once, in one piece"
    with open(db, "r+b") as f:
        f.seek(at + 20)
        f.write(bytes([data[at + 20] ^ 0x40]))


def break_the_state_index(db: Path) -> None:
    """Garbage over one index page: quick_check fails, the rows (read by seq) stay readable."""
    with sqlite3.connect(db) as raw:
        (root,) = raw.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'packets_state_seq'"
        ).fetchone()
    with open(db, "r+b") as f:
        f.seek((root - 1) * PAGE)
        f.write(b"\xa5" * PAGE)


def test_damaged_bodies_are_kept_as_damaged_and_never_sent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "outbox.db"
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()  # a rotation in between
    with Outbox(db) as ob:
        receipts = [ob.commit(_builder(old)) for _ in range(3)] + [ob.commit(_builder(new)) for _ in range(3)]
        bodies = {r.seq: ob.get(r.packet_id) or b"" for r in receipts}
    assert len(bodies[2]) < PAGE - 200 and len(bodies[3]) == len(bodies[5])
    flip_byte_in_body(db, bodies[2])
    with sqlite3.connect(db) as raw:  # another packet's sound bytes under seq 3's row
        raw.execute("UPDATE bodies SET data = ? WHERE seq = 3", (bodies[5],))
    break_the_state_index(db)

    keys = [new.public_key(), old.public_key()]
    with caplog.at_level(logging.ERROR, logger="ektp.outbox"), Outbox(db, kiosk_keys=keys) as ob:
        states = {q.seq: q for q in ob.undelivered()}
        assert {seq: q.state for seq, q in states.items()} == {
            1: "pending",
            2: "damaged",
            3: "damaged",
            4: "pending",
            5: "pending",
            6: "pending",
        }  # the old key's packets verify: a rotation is not damage
        assert "signature does not verify" in (states[2].reason or "")
        assert (states[2].reason or "").startswith("damaged on the kiosk: ")
        assert f"not this row's {receipts[2].packet_id} seq 3" in (states[3].reason or "")
        assert ob.stats().damaged == 2 and ob.stats().pending == 4
        assert [p.seq for p in ob.iter_pending()] == [1, 4, 5, 6]  # never sent
        assert ob.resubmit(None) == 0  # not a rejected packet: no way back into the queue
        assert ob.mark_delivered([receipts[1].packet_id]) == 0
        assert ob.get(receipts[1].packet_id) is not None  # kept, for export
    (record,) = [r for r in caplog.records if "salvaged" in r.getMessage()]
    assert "2 failed the kiosk's own signature check (seqs [2, 3])" in record.getMessage()
    with Outbox(db, kiosk_keys=keys) as ob:  # a clean reopen keeps the state
        assert ob.stats().damaged == 2


def test_without_the_kiosk_keys_a_salvage_copies_bodies_unchecked(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    key = Ed25519PrivateKey.generate()
    with Outbox(db) as ob:
        receipts = [ob.commit(_builder(key)) for _ in range(2)]
        body = ob.get(receipts[0].packet_id) or b""
    flip_byte_in_body(db, body)
    break_the_state_index(db)
    with Outbox(db, repair=True) as ob:  # e.g. a tool without the keys: the old behaviour, still usable
        assert {q.state for q in ob.undelivered()} == {"pending"}


# ----------------------------------------------------------------------------- through the service


def test_the_centre_never_gets_a_packet_damaged_on_the_kiosk(kit: tuple[Kit, Broker], tmp_path: Path) -> None:
    k, _broker = kit
    k.start_agent()  # no centre yet: the packets wait
    receipts = [
        item["receipt"]
        for item in request(k.data_dir / "api.sock", "enroll", synthetic=True, direct=True, count=3)
    ]
    assert k.agent is not None
    k.agent.send_signal(signal.SIGTERM)
    assert k.agent.wait(30) == 0
    db = k.data_dir / "outbox.db"
    damaged = receipts[1]["packet_id"]
    with Outbox.open_readonly(db) as ob:
        body = ob.get(damaged) or b""
    flip_byte_in_body(db, body)
    break_the_state_index(db)

    k.start_central()
    k.start_agent()  # salvages, checking each packet with the kiosk's key
    p = k.agent_cli("sync", "--wait", "--timeout", "60", "--json")
    assert p.returncode == 1, p.stderr  # delivered what it could; the damaged one is a problem
    doc = json.loads(p.stdout)
    assert doc["undelivered"] == 0 and doc["damaged"] == 1
    assert "found damaged on this kiosk" in p.stderr and "--include-damaged" in p.stderr
    stored = {r["packet_id"] for r in k.central_packets()}
    assert stored == {receipts[0]["packet_id"], receipts[2]["packet_id"]}
    assert "tampered" not in k.log("central") and "bad_signature" not in k.log("central")
    assert "failed the kiosk's own signature check" in k.log("agent")

    p = k.agent_cli("queue", "--json")
    assert p.returncode == 1 and "found damaged on this kiosk" in p.stderr
    rows = json.loads(p.stdout)
    assert [(r["packet_id"], r["state"]) for r in rows] == [(damaged, "damaged")]
    assert "signature does not verify" in rows[0]["reason"]
    p = k.agent_cli("status", "--json")
    assert p.returncode == 1 and json.loads(p.stdout)["queue"]["damaged"] == 1
    p = k.agent_cli("resubmit", damaged)
    assert p.returncode == 1 and "can never be sent" in p.stderr

    usb = tmp_path / "usb"
    p = k.agent_cli("export", "--to", str(usb), "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["damaged_left_out"] == 1
    assert list(usb.iterdir()) == []
    p = k.agent_cli("export", "--to", str(usb), "--include-damaged", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["damaged"] == 1
    (exported,) = usb.iterdir()
    assert damaged in exported.name
