"""Crashes of whole processes mid-drain, through the installed console scripts: the kiosk's
`ektp-agent run --simulate` SIGKILLed, one of two `ektp-central run` SIGKILLed.

A centre is made slow with SIGSTOP: the broker keeps handing it packets that it neither
stores nor acks, so the drain is provably in progress (packets published, PUBACKed by
the broker, waiting for the centre's ack) at the moment of the kill.

Mosquitto 2.0.11 does not hand the unacknowledged messages of a shared-subscription
member whose connection died to another member (checked by hand: they are dropped with
its session); the kiosk's re-send after its ack timeout is what brings them to the
surviving centre.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agentkit import Kit
from tests.linkkit import Watcher, check_exactly_once, wait_for
from tests.netkit import Broker

KIOSK = "320715-01"
ACK_TIMEOUT_S = 2  # the kiosk sends an unacked packet again after this


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[tuple[Kit, Broker]]:
    broker = Broker(tmp_path / "broker")
    broker.start()
    k = Kit(tmp_path / "kit", broker.port, health_s=1.0)
    conf = k.agent_conf.read_text()
    assert "ack_timeout_s = 5\n" in conf
    k.agent_conf.write_text(conf.replace("ack_timeout_s = 5\n", f"ack_timeout_s = {ACK_TIMEOUT_S}\n"))
    try:
        k.setup_keys()  # inside: a failure here must still stop the broker
        yield k, broker
    finally:
        for p in k.procs:  # a stopped process would sleep through Kit.close()'s SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGCONT)
        k.close()
        broker.stop()


def queue(k: Kit) -> list[dict[str, Any]]:
    p = k.agent_cli("queue", "--json")
    assert p.returncode == 0, p.stderr
    rows: list[dict[str, Any]] = json.loads(p.stdout)
    return rows


def fleet_row(k: Kit) -> dict[str, Any]:
    p = k.central_cli("fleet", "--json")
    assert p.returncode in (0, 1), p.stderr  # 1: it lists a problem (an offline kiosk)
    return next((r for r in json.loads(p.stdout) if r["kiosk"] == KIOSK), {})


def assert_stored_exactly_once(k: Kit, receipts: list[dict[str, Any]]) -> None:
    """The centre's rows of the kiosk are exactly the receipts, seqs 1..N as the kiosk counts them."""
    check_exactly_once(k, receipts)


def synced(k: Kit) -> None:
    p = k.agent_cli("sync", "--wait", "--timeout", "60", timeout=90)
    assert p.returncode == 0, p.stdout + p.stderr + k.log("agent")[-3000:]


def test_kiosk_sigkilled_mid_drain_will_seen_then_resumes_exactly_once(kit: tuple[Kit, Broker]) -> None:
    k, broker = kit
    watcher = Watcher(broker.port, f"ektp/v1/{KIOSK}/status")
    try:
        centre = k.start_central()
        agent = k.start_agent()
        receipts = k.enroll(3, seed=1)
        synced(k)

        os.killpg(centre.pid, signal.SIGSTOP)  # the centre hangs: packets reach it, nothing is acked
        receipts += k.enroll(3, seed=4)
        wait_for(
            lambda: [r["state"] for r in queue(k)] == ["sent"] * 3,
            30,
            "three packets published and waiting for the centre's ack",
            step=0.3,
        )
        online = watcher.statuses(KIOSK)[-1]
        assert online["state"] == "online"

        os.kill(agent.pid, signal.SIGKILL)  # the agent alone (its simulator sees it gone and stops)
        agent.wait(10)
        wait_for(lambda: watcher.statuses(KIOSK)[-1]["state"] == "offline", 10, "the Last Will")
        will = watcher.statuses(KIOSK)[-1]
        assert will["connection"] == online["connection"]
        os.killpg(centre.pid, signal.SIGCONT)
        wait_for(
            lambda: fleet_row(k).get("online") is False, 20, "the centre to show the kiosk offline", step=0.3
        )

        k.start_agent()  # a simulator of its own (never the dead service's), and the outbox resumed
        assert k.log("agent").count("started the simulator") == 2
        synced(k)
        assert_stored_exactly_once(k, receipts)
        assert queue(k) == []
        wait_for(
            lambda: fleet_row(k).get("online") is True, 20, "the centre to show the kiosk online", step=0.3
        )
        assert watcher.statuses(KIOSK)[-1]["connection"] > will["connection"]
        receipts += k.enroll(1, seed=7)  # the new service's simulator answers
        synced(k)
        assert_stored_exactly_once(k, receipts)
    finally:
        watcher.close()


def test_two_centres_one_sigkilled_mid_drain_and_restarted_all_stored_exactly_once(
    kit: tuple[Kit, Broker],
) -> None:
    """One of two centres hangs with packets in hand, is SIGKILLed, and comes back as systemd
    would bring it back: with the same client id it resumes its session, so what the broker
    held for it (and what it never PUBACKed) reaches it, and everything is stored exactly once."""
    k, _broker = kit
    a = k.start_central("central-a")
    b = k.start_central("central-b")
    for name in ("central-a", "central-b"):
        wait_for(lambda n=name: "consuming $share/" in k.log(n), 15, f"{name} to subscribe")  # type: ignore[misc]
    k.start_agent()
    receipts = k.enroll(4, seed=1)
    synced(k)  # both centres at work

    os.killpg(b.pid, signal.SIGSTOP)
    receipts += k.enroll(6, seed=5)

    # the shared subscription hands some packets to the hung centre: published, stored nowhere
    def held() -> set[str]:
        sent = {r["packet_id"] for r in queue(k) if r["state"] == "sent"}
        return sent - {r["packet_id"] for r in k.central_packets()}  # read after: one acked meanwhile is out

    wait_for(lambda: bool(held()), 30, "packets held by the hung centre", step=0.3)

    os.killpg(b.pid, signal.SIGKILL)
    b.wait(10)
    k.start_central("central-b")  # the same instance name: the same session
    synced(k)
    assert_stored_exactly_once(k, receipts)
    assert queue(k) == []
    assert a.poll() is None, "the surviving centre died"
    assert "took the session over" not in k.log("central-a") + k.log("central-b")


def test_two_centre_restarts_in_a_row_deliver_within_seconds(kit: tuple[Kit, Broker]) -> None:
    """The centre restarts twice while the kiosk sends. Its stable client id resumes its session
    each time, so nothing waits for the kiosk's ack timeout (set to 10 minutes here)."""
    k, _broker = kit
    conf = k.agent_conf.read_text()
    k.agent_conf.write_text(conf.replace(f"ack_timeout_s = {ACK_TIMEOUT_S}\n", "ack_timeout_s = 600\n"))
    centre = k.start_central()
    wait_for(lambda: "consuming $share/" in k.log("central"), 15, "the centre to subscribe")
    k.start_agent()
    receipts = k.enroll(2, seed=1)
    synced(k)
    for round_ in range(2):
        centre.terminate()
        centre.wait(20)
        receipts += k.enroll(2, seed=10 + round_)  # published while no centre runs
        centre = k.start_central()
        wait_for(lambda r=round_: k.log("central").count("consuming $share/") >= r + 2, 15, "the centre back")
    p = k.agent_cli("sync", "--wait", "--timeout", "20", timeout=40)
    assert p.returncode == 0, p.stdout + p.stderr + k.log("agent")[-3000:]
    assert_stored_exactly_once(k, receipts)
