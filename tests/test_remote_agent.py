"""The kiosk's side of remote commands, on a real Mosquitto with `ektp-agent run --simulate`: a
test-side centre (tests.remotekit) signs commands with the kit's centre key and verifies the
kiosk's results with its public key. Each verb acts through the service; a replayed, expired,
re-targeted, unsigned or kiosk-signed command runs nothing and gets a signed refusal; commands
sent while the kiosk is stopped run when it starts (its persistent session), unless expired;
[remote] enabled and verbs refuse; intervals change at once and `config reset-remote` reverts
them; the `logs` verb carries no NIK or name of the synthetic residents; `remote log` lists all."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from agent.log_buffer import LogBuffer, redact
from agent.outbox import Outbox
from agent.remote_store import AUDIT_ROWS, RemoteStore, read_audit
from hw_sim.residents import synthetic_resident
from tests.agentkit import Kit
from tests.netkit import Broker
from tests.remotekit import NIL_ID, CommandSender, sim
from tests.remotekit import start_with_remote as start
from tests.remotekit import stop_agent as stop
from wire.command import VERBS, sign_command
from wire.keys import load_central_private, load_kiosk_private, load_kiosk_public

KIOSK = "320715-01"


@pytest.fixture
def centre(kit: tuple[Kit, Broker]) -> Iterator[CommandSender]:
    k, broker = kit
    sender = CommandSender(
        broker.port,
        KIOSK,
        load_central_private(k.root / "central" / "central.key").signing,
        load_kiosk_public(k.data_dir / "kiosk.key.pub"),
    )
    try:
        yield sender
    finally:
        sender.close()
        assert not sender.bad_results, (
            f"results that do not verify with the kiosk's key: {sender.bad_results}"
        )


def overrides(k: Kit) -> dict[str, Any]:
    doc: dict[str, Any] = k.status()["remote"]
    return doc["overrides"]


def audit(k: Kit) -> list[dict[str, Any]]:
    p = k.agent_cli("remote", "log", "--json")
    assert p.returncode == 0, p.stderr
    rows: list[dict[str, Any]] = json.loads(p.stdout)
    return rows


class HealthCounter:
    """Counts the health messages the kiosk publishes (the retained one at subscription aside)."""

    def __init__(self, port: int) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"health-{os.getpid()}", protocol=mqtt.MQTTv5
        )
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"ektp/v1/{KIOSK}/health", qos=0)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if not msg.retain:
            with self._lock:
                self.count += 1

    def during(self, seconds: float) -> int:
        with self._lock:
            before = self.count
        time.sleep(seconds)
        with self._lock:
            return self.count - before

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_each_verb_acts_and_every_forgery_is_refused(kit: tuple[Kit, Broker], centre: CommandSender) -> None:
    k, broker = kit
    start(k)

    # diag of an injected fault: the fault and the technician's hint, as `ektp-agent diag` gives them
    sim(k, "fault", "fingerprint", "unplug")
    r = centre.call("diag", {"devices": ["fingerprint", "iris"]})
    assert r.status == "failed" and "fingerprint: fault" in r.reason
    fingerprint, iris = r.result["devices"]
    assert fingerprint["device"] == "fingerprint" and fingerprint["state"] == "fault" and fingerprint["hint"]
    assert iris["state"] == "ok" and iris["passed"]
    local = json.loads(k.agent_cli("diag", "fingerprint", "--json").stdout)["devices"][0]
    assert fingerprint["hint"] == local["hint"] and fingerprint["detail"] == local["detail"]
    sim(k, "clear", "fingerprint")
    r = centre.call("reopen", {"device": "fingerprint"})
    assert r.status == "ok" and r.result["reopened"] and r.result["state"] == "ok", r.result
    assert centre.call("diag").status == "ok"

    status = centre.call("status")
    assert status.status == "ok", status.reason
    assert status.result["service"] == "running" and status.result["kiosk_id"] == KIOSK
    assert status.result["remote"]["enabled"] and status.result["remote"]["link"]["connected"]
    sync = centre.call("sync")
    assert sync.status == "ok" and sync.result["connected"] is True and sync.result["undelivered"] == 0

    # intervals: applied by the running service at once, shown by status, reverted by reset-remote
    counter = HealthCounter(broker.port)
    try:
        assert counter.during(2.2) >= 2, "health every second ([health] interval_s = 1)"
        r = centre.call("health-interval", {"seconds": 30})
        assert r.status == "ok" and r.result["was"] == 1.0 and r.result["health_interval_s"] == 30
        assert centre.call("selftest-interval", {"seconds": 20}).status == "ok"
        time.sleep(0.5)  # the health published at the change
        assert counter.during(2.2) == 0, "the new health interval is in force without a restart"
        remote = k.status()["remote"]
        assert (remote["health_interval_s"], remote["selftest_interval_s"]) == (30, 20)
        assert remote["overrides"]["health-interval"]["set_by"] == "tester@centre"
        plain = k.agent_cli("status").stdout
        assert "health-interval 30 s, set by the centre" in plain and "config reset-remote" in plain
        p = k.agent_cli("config", "reset-remote")
        assert p.returncode == 0, p.stderr
        assert "reverted health-interval 30 s" in p.stdout and "reverted selftest-interval 20 s" in p.stdout
        assert "health every 1 s, self-tests every 0.5 s" in p.stdout
        assert counter.during(2.2) >= 2, "back to the config's interval without a restart"
    finally:
        counter.close()
    assert overrides(k) == {}
    assert "nothing to revert" in k.agent_cli("config", "reset-remote").stdout

    # a replay runs nothing: the interval it set was reverted and stays so
    payload, first = centre.sign("health-interval", {"seconds": 40})
    centre.publish(payload)
    assert centre.result(first.command_id).status == "ok"
    assert k.agent_cli("config", "reset-remote").returncode == 0
    centre.publish(payload)
    replay = centre.result(first.command_id, count=2)
    assert replay.status == "refused" and replay.reason.startswith("replay"), replay.reason

    # expired, re-targeted, unsigned, kiosk-signed, garbage: each refused, signed, nothing run
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=120)
    expired = centre.send("health-interval", {"seconds": 50}, ttl_s=60, now=past)
    assert centre.result(expired.command_id).status == "expired"
    other = centre.send("health-interval", {"seconds": 50}, kiosk="320715-02")
    r = centre.result(other.command_id)
    assert r.status == "refused" and r.reason.startswith("wrong-kiosk"), r.reason
    payload, unsigned = centre.sign("health-interval", {"seconds": 50})
    centre.publish(payload[:-64] + bytes(64))
    r = centre.result(unsigned.command_id)
    assert r.status == "refused" and r.reason.startswith("bad-signature"), r.reason
    kiosk_key = load_kiosk_private(k.data_dir / "kiosk.key")
    by_kiosk = centre.send("health-interval", {"seconds": 50}, key=kiosk_key)
    r = centre.result(by_kiosk.command_id)
    assert r.status == "refused" and r.reason.startswith("bad-signature"), r.reason
    centre.publish(b"garbage, not a command")
    r = centre.result(NIL_ID)
    assert r.status == "refused" and r.reason.startswith("truncated"), r.reason
    assert overrides(k) == {}, "no refused command changed anything"

    rows = audit(k)
    assert [(r["verb"], r["status"]) for r in rows] == [
        ("diag", "failed"),
        ("reopen", "ok"),
        ("diag", "ok"),
        ("status", "ok"),
        ("sync", "ok"),
        ("health-interval", "ok"),
        ("selftest-interval", "ok"),
        ("health-interval", "ok"),
        ("health-interval", "refused"),  # the replay
        ("health-interval", "expired"),
        ("health-interval", "refused"),  # another kiosk's
        ("health-interval", "refused"),  # unsigned: the verb it claims
        ("health-interval", "refused"),  # kiosk-signed
        ("", "refused"),  # garbage
    ]
    assert rows[0]["issuer"] == "tester@centre" and rows[0]["args"] == {"devices": ["fingerprint", "iris"]}
    assert rows[0]["reason"].startswith("fingerprint: fault")
    assert [r["issuer"] for r in rows[-3:]] == ["(unverified)"] * 3
    plain = k.agent_cli("remote", "log").stdout
    assert "health-interval seconds=40" in plain and "replay" in plain and "14 command(s)" in plain

    # an override outlives a restart; reset-remote with the service stopped removes it
    assert centre.call("health-interval", {"seconds": 45}).status == "ok"
    stop(k)
    assert k.status()["remote"]["overrides"]["health-interval"]["seconds"] == 45
    p = k.agent_cli("config", "reset-remote", "--json")
    doc = json.loads(p.stdout)
    assert doc["service"] == "stopped" and [r["verb"] for r in doc["reverted"]] == ["health-interval"]
    assert doc["health_interval_s"] == 1.0 and not (k.data_dir / "remote-settings.json").exists()


def test_offline_delivery_policy_and_logs_without_personal_data(
    kit: tuple[Kit, Broker], centre: CommandSender
) -> None:
    k, _broker = kit
    start(k)  # its first connection makes the broker's session for it
    first = [r["packet_id"] for r in k.enroll(2, seed=1)]
    stop(k)
    with Outbox(k.data_dir / "outbox.db") as outbox:  # what a rejecting ack would do
        for packet_id in first:
            assert outbox.mark_rejected(packet_id, "unknown_kiosk: not registered at the centre")

    # sent while the kiosk is stopped: the broker keeps them; the short-lived one expires meanwhile
    resubmit = centre.send("resubmit", {"rejected": True}, ttl_s=120)
    short = centre.send("health-interval", {"seconds": 60}, ttl_s=1)
    time.sleep(1.2)
    start(k)
    r = centre.result(resubmit.command_id)
    assert r.status == "ok" and r.result["resubmitted"] == 2, r
    assert centre.result(short.command_id).status == "expired"
    assert k.status()["queue"]["rejected"] == 0
    assert overrides(k) == {}
    sync = centre.call("sync")
    assert sync.status == "ok" and sync.result["undelivered"] == 2 and sync.result["rejected"] == 0

    # logs: the enrollments are in them, none of the residents' NIKs, names or addresses
    k.enroll(1, seed=3)
    r = centre.call("logs", {"lines": 1000})
    lines = r.result["lines"]
    assert r.status == "ok" and any("committed enrollment seq 3" in line for line in lines), lines
    text = "\n".join(lines)
    for seed in range(1, 4):
        resident = synthetic_resident(seed)
        for personal in (resident.nik, resident.name, resident.address, resident.nik[6:12]):
            assert personal not in text, f"resident {seed}'s {personal!r} in the logs"
    assert len(centre.call("logs", {"lines": 2}).result["lines"]) == 2
    later = centre.call("logs", {"since": dt.datetime.now(dt.UTC).isoformat()})
    assert not any("committed enrollment" in line for line in later.result["lines"])

    # the config refuses: a verb outside [remote] verbs, then every verb
    stop(k)
    k.write_configs(k.port, 1.0, '[remote]\nverbs = ["status", "logs"]\n')
    start(k)
    r = centre.call("diag")
    assert r.status == "refused" and "[remote] verbs" in r.reason, r.reason
    assert centre.call("status").status == "ok"
    stop(k)
    k.write_configs(k.port, 1.0, "[remote]\nenabled = false\n")
    start(k)
    r = centre.call("status")
    assert r.status == "refused" and "[remote] enabled = false" in r.reason, r.reason
    assert k.status()["remote"]["refused_verbs"] == list(VERBS)
    stop(k)

    rows = audit(k)  # read-only, with the service stopped
    assert [(r["verb"], r["status"]) for r in rows] == [
        ("resubmit", "ok"),
        ("health-interval", "expired"),
        ("sync", "ok"),
        ("logs", "ok"),
        ("logs", "ok"),
        ("logs", "ok"),
        ("diag", "refused"),
        ("status", "ok"),
        ("status", "refused"),
    ]
    assert "remote commands: off" in k.agent_cli("status").stdout


# ----------------------------------------------------------------------------- without a broker


def test_the_log_buffer_redacts_what_could_slip_in() -> None:
    resident = synthetic_resident(7)
    blob = base64.b64encode(random.Random(7).randbytes(300)).decode()
    buffer = LogBuffer(capacity=4)
    logger = logging.getLogger("test.remote.buffer")
    logger.addHandler(buffer)
    logger.propagate = False
    try:
        logger.warning("the oldest line, pushed out by the fifth")
        try:
            raise ValueError(f"invalid NIK {resident.nik!r} for name={resident.name!r}")
        except ValueError:
            logger.exception("enrollment of %s failed", {"name": resident.name, "address": resident.address})
        logger.warning("image b'\\x89PNG\\r\\n' and %s", blob)
        logger.warning("spaced %s", " ".join(resident.nik[i : i + 4] for i in range(0, 16, 4)))
        logger.warning("the newest line")
    finally:
        logger.removeHandler(buffer)
    lines = buffer.lines(10)
    assert len(lines) == 4 and buffer.dropped == 1 and "oldest" not in lines[0]
    text = "\n".join(lines)
    for personal in (resident.nik, resident.name, resident.address, blob[:40], "PNG"):
        assert personal not in text, personal
    assert "ValueError: invalid NIK" in lines[0] and "[number]" in lines[2] and "[data]" in lines[1]
    assert buffer.lines(1) == lines[-1:]
    assert buffer.lines(10, dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)) == []
    kept = "connected to 127.0.0.1:1883; packet 01a21f90-924b-7326-8f60-a232292900ac; /var/lib/ektp-agent/sim"
    assert redact(kept) == kept


def test_the_store_records_before_running_and_stays_bounded(tmp_path: Path, monkeypatch: Any) -> None:
    _payload, command = sign_command(KIOSK, "sync", {}, Ed25519PrivateKey.generate(), issuer="ops")
    store = RemoteStore(tmp_path / "remote.db")
    try:
        assert (tmp_path / "remote.db").stat().st_mode & 0o777 == 0o600
        claim = store.claim(command, time.time() + 60)
        assert claim.state == "new"
        assert store.claim(command, time.time() + 60).state == "running"  # a crash before the answer
        assert store.interrupted() == 1  # at the next start the audit says so
        store.finish(claim.audit_id, "ok", "", "sync asked", b"signed result")
        again = store.claim(command, time.time() + 60)
        assert again.state == "answered" and again.result == b"signed result"
        store.acknowledged(command.command_id)
        assert store.claim(command, time.time() + 60).state == "done"
        store.prune(now=time.time() + 60 + 86400 + 1)  # past its expiry and the margin: forgotten
        assert store.claim(command, time.time() + 60).state == "new"
        monkeypatch.setattr("agent.remote_store.AUDIT_ROWS", 5)
        for i in range(8):
            store.record(f"id-{i}", "ops", "status", {}, "refused", "test")
        store.prune()
    finally:
        store.close()
    rows = read_audit(tmp_path / "remote.db")
    assert len(rows) == 5 and rows[-1].command_id == "id-7" and AUDIT_ROWS == 10_000
    with contextlib.closing(sqlite3.connect(tmp_path / "remote.db")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
