"""Packets the centre rejected are no dead end: `status`, `queue` and `sync` say so and exit 1,
`export --include-rejected` carries them, `resubmit` puts them back in the queue, through the
running service or, with it stopped, on the outbox file. Driven through the console scripts."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.outbox import Outbox
from tests.agentkit import Kit
from tests.linkkit import wait_for
from tests.netkit import Broker

REASON = "unknown_kiosk: kiosk 320715-01 is not registered at the centre"


def stop_agent(k: Kit) -> None:
    assert k.agent is not None
    k.agent.send_signal(signal.SIGTERM)
    assert k.agent.wait(30) == 0


def reject(k: Kit, packet_ids: list[str], reason: str = REASON) -> None:
    """What the link does on a verified ack saying "rejected"; the service must be stopped."""
    with Outbox(k.data_dir / "outbox.db") as outbox:
        for packet_id in packet_ids:
            assert outbox.mark_rejected(packet_id, reason)


def queue(k: Kit) -> tuple[int, list[dict[str, Any]], str]:
    p = k.agent_cli("queue", "--json")
    rows: list[dict[str, Any]] = json.loads(p.stdout)
    return p.returncode, rows, p.stderr


def states(k: Kit) -> dict[str, str]:
    return {r["packet_id"]: r["state"] for r in queue(k)[1]}


def json_of(p: subprocess.CompletedProcess[str]) -> Any:
    assert p.stdout.strip(), p.stderr
    return json.loads(p.stdout)


def test_rejected_packets_with_the_service_stopped(kit: tuple[Kit, Broker], tmp_path: Path) -> None:
    k, _broker = kit
    k.start_agent()  # no centre: nothing is delivered
    waiting, first, second = (r["packet_id"] for r in k.enroll(3))
    stop_agent(k)
    reject(k, [first, second])

    code, rows, err = queue(k)
    assert code == 1
    assert [r["state"] for r in rows] == ["pending", "rejected", "rejected"]
    assert [r.get("reason") for r in rows] == [None, REASON, REASON]
    assert f"2 packets were rejected by the centre: {REASON}" in err
    assert "`ektp-agent resubmit --rejected`" in err
    p = k.agent_cli("queue")
    assert p.returncode == 1 and "3 undelivered packet(s): 1 to send, 2 rejected by the centre" in p.stdout

    p = k.agent_cli("status", "--json")
    doc = json_of(p)
    assert p.returncode == 1 and doc["service"] == "stopped"
    assert doc["queue"]["rejected"] == 2 and doc["queue"]["pending"] == 1
    assert doc["rejected"] == {"count": 2, "reason": REASON, "packet_ids": [first, second]}
    assert "2 packets were rejected by the centre" in p.stderr
    assert k.agent_cli("sync", "--wait", "--timeout", "5").returncode == 3  # sync needs the service

    usb = tmp_path / "usb"
    p = k.agent_cli("export", "--to", str(usb))
    assert p.returncode == 0
    assert "2 packet(s) rejected by the centre not exported" in p.stdout
    assert [f.name.split("-", 1)[1] for f in sorted(usb.iterdir())] == [f"{waiting}.ektp"]
    p = k.agent_cli("export", "--to", str(usb), "--include-rejected", "--json")
    assert p.returncode == 0
    assert json_of(p) == {
        "exported": 3,
        "written": 2,
        "already_there": 1,
        "dir": str(usb),
        "pending": 1,
        "rejected": 2,
        "rejected_left_out": 0,
    }
    p = k.agent_cli("export", "--to", str(usb), "--include-rejected")
    assert p.returncode == 0 and "1 undelivered, 2 rejected (0 written, 3 already there)" in p.stdout
    assert len(list(usb.iterdir())) == 3

    for usage in (["resubmit"], ["resubmit", "--json"], ["resubmit", "--rejected", first]):
        p = k.agent_cli(*usage)
        assert p.returncode == 2, usage
        assert "--rejected" in p.stderr
    p = k.agent_cli("resubmit", waiting)
    assert p.returncode == 1
    assert f"packet {waiting} is not rejected: it is pending" in p.stderr
    unknown = str(uuid.uuid4())
    p = k.agent_cli("resubmit", unknown, "--json")
    assert p.returncode == 1 and f"packet {unknown} is not in this kiosk's outbox" in p.stderr
    assert json_of(p) == {"resubmitted": 0, "not_rejected": [{"packet_id": unknown, "state": "unknown"}]}
    assert states(k) == {waiting: "pending", first: "rejected", second: "rejected"}

    # a named rejected packet goes back even when another name is wrong (typed in capitals here)
    p = k.agent_cli("resubmit", first.upper(), waiting, "--json")
    assert p.returncode == 1
    assert json_of(p) == {"resubmitted": 1, "not_rejected": [{"packet_id": waiting, "state": "pending"}]}
    assert states(k) == {waiting: "pending", first: "pending", second: "rejected"}

    p = k.agent_cli("resubmit", "--rejected", "--json")
    assert p.returncode == 0, p.stderr
    assert json_of(p) == {"resubmitted": 1}
    p = k.agent_cli("resubmit", "--rejected")
    assert p.returncode == 0 and p.stdout.strip() == "resubmitted 0 packet(s)"

    code, rows, err = queue(k)
    assert code == 0 and err == ""
    assert {r["state"] for r in rows} == {"pending"} and not any("reason" in r for r in rows)
    doc = json_of(k.agent_cli("status", "--json"))
    assert doc["queue"]["rejected"] == 0 and doc["queue"]["pending"] == 3
    assert doc["rejected"] == {"count": 0, "reason": None, "packet_ids": []}


def test_resubmit_through_the_running_service(kit: tuple[Kit, Broker]) -> None:
    k, _broker = kit
    k.start_agent()
    ids = [r["packet_id"] for r in k.enroll(2)]
    stop_agent(k)
    reject(k, ids)
    k.start_agent()  # no centre yet

    p = k.agent_cli("status", "--json")
    doc = json_of(p)
    assert doc["service"] == "running"
    assert doc["queue"]["rejected"] == 2 and doc["rejected"]["packet_ids"] == ids
    assert p.returncode == 1 and f"2 packets were rejected by the centre: {REASON}" in p.stderr
    assert queue(k)[0] == 1
    p = k.agent_cli("sync", "--wait", "--timeout", "20")
    assert p.returncode == 1
    assert "all packets delivered" not in p.stdout
    assert f"2 packets were rejected by the centre: {REASON}; fix the cause" in p.stderr
    p = k.agent_cli("sync", "--json")
    assert p.returncode == 1
    assert json_of(p) == {
        "undelivered": 0,
        "connected": True,
        "rejected": 2,
        "rejected_reason": REASON,
        "damaged": 0,
    }

    p = k.agent_cli("resubmit", ids[0], str(uuid.uuid4()))
    assert p.returncode == 1 and "not in this kiosk's outbox" in p.stderr
    assert "the service sends them now" in p.stdout
    p = k.agent_cli("resubmit", "--rejected", "--json")
    assert p.returncode == 0, p.stderr
    assert json_of(p) == {"resubmitted": 1}
    assert f"resubmit: packet {ids[1]}" in k.log("agent") and REASON in k.log("agent")  # the old reason

    wait_for(lambda: set(states(k).values()) <= {"pending", "sent"}, 10, "both packets queued again")
    p = k.agent_cli("status", "--json")
    assert p.returncode == 0, p.stderr  # nothing else is wrong with this kit
    assert json_of(p)["rejected"]["count"] == 0

    k.start_central()
    p = k.agent_cli("sync", "--wait", "--timeout", "60")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "all packets delivered" in p.stdout
    assert {r["packet_id"] for r in k.central_packets()} == set(ids)


@pytest.fixture
def late_kit(tmp_path: Path) -> Iterator[Kit]:
    """A kiosk with keys whose public key the centre has not been given yet."""
    broker = Broker(tmp_path / "broker")
    broker.start()
    k = Kit(tmp_path / "kit", broker.port, health_s=1.0)
    try:
        for p in (k.central_cli("keys", "init"), k.agent_cli("keys", "init")):
            assert p.returncode == 0, p.stderr
        yield k
    finally:
        k.close()
        broker.stop()


@pytest.mark.timeout(240)
def test_a_kiosk_registered_late_gets_its_rejected_packets_in(late_kit: Kit) -> None:
    k = late_kit
    k.start_central()
    k.start_agent()
    ids = [r["packet_id"] for r in k.enroll(2)]
    wait_for(lambda: set(states(k).values()) == {"rejected"}, 60, "the centre to reject both packets")
    p = k.agent_cli("sync", "--wait", "--timeout", "10")
    assert p.returncode == 1 and "2 packets were rejected by the centre" in p.stderr
    assert "resubmit --rejected" in p.stderr

    p = k.central_cli("kiosk", "add", k.kiosk_id, "--public-key", str(k.data_dir / "kiosk.key.pub"))
    assert p.returncode == 0, p.stderr
    more = [r["packet_id"] for r in k.enroll(1, seed=5)]  # accepted from now on: the drain moves on
    p = k.agent_cli("sync", "--wait", "--timeout", "60")
    assert p.returncode == 1 and "2 packets were rejected" in p.stderr  # still here, and said so
    assert {r["packet_id"] for r in k.central_packets()} == set(more)

    p = k.agent_cli("resubmit", "--rejected", "--json")
    assert p.returncode == 0, p.stderr
    assert json_of(p) == {"resubmitted": 2}
    p = k.agent_cli("sync", "--wait", "--timeout", "60")
    assert p.returncode == 0, p.stdout + p.stderr
    assert {r["packet_id"] for r in k.central_packets()} == set(ids + more)
    assert queue(k)[:2] == (0, [])
