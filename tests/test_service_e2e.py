"""The whole kit through its console scripts, as an operator and a technician use it:
a real Mosquitto, `ektp-central run`, `ektp-agent run --simulate`, `ektp-sim`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.agentkit import Kit, script
from tests.linkkit import check_exactly_once, wait_for
from tests.netkit import Broker

KIOSK = "320715-01"


def retained(port: int, topic: str) -> dict[str, object]:
    """The retained message on ``topic`` as a fresh subscriber gets it."""
    got: list[bytes] = []
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"probe-{os.getpid()}-{time.monotonic_ns()}",
        protocol=mqtt.MQTTv5,
    )
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, qos=1)
    c.on_message = lambda cl, u, m: got.append(bytes(m.payload))
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        wait_for(lambda: bool(got), 10, f"the retained message on {topic}")
    finally:
        c.disconnect()
        c.loop_stop()
    doc: dict[str, object] = json.loads(got[-1])
    return doc


def sim(kit: Kit, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [script("ektp-sim"), "--dir", str(kit.data_dir / "sim"), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_enroll_sync_and_the_centre_holds_them(kit: tuple[Kit, Broker]) -> None:
    k, broker = kit
    k.start_central()
    k.start_agent()
    receipts = k.enroll(4)
    assert [r["seq"] for r in receipts] == [1, 2, 3, 4]
    # the service handed its simulator Kit.instant_pen (EKTP_SIM_INSTANT_PEN)
    assert json.loads(sim(k, "status", "--json").stdout)["devices"]["signature"]["instant"] is True
    p = k.agent_cli("sync", "--wait", "--timeout", "60")
    assert p.returncode == 0, p.stdout + p.stderr
    stored = {r["packet_id"] for r in k.central_packets()}
    assert stored == {r["packet_id"] for r in receipts}
    queue = json.loads(k.agent_cli("queue", "--json").stdout)
    assert queue == []
    wait_for(  # health goes out on a change of a device and every interval, not at each commit
        lambda: retained(broker.port, f"ektp/v1/{KIOSK}/health")["enrollments"] == {"total": 4},
        5,
        "the retained health to count the 4 enrollments",
    )
    health = retained(broker.port, f"ektp/v1/{KIOSK}/health")
    assert all(d["state"] == "ok" for d in health["devices"].values())  # type: ignore[attr-defined]


def test_fault_shows_in_status_diag_and_health_then_recovers(kit: tuple[Kit, Broker]) -> None:
    k, broker = kit
    k.start_agent()
    assert sim(k, "fault", "fingerprint", "unplug").returncode == 0
    wait_for(
        lambda: k.status()["devices"]["fingerprint"]["state"] == "fault",
        5,
        "fingerprint in fault within ~one interval",
    )
    p = k.agent_cli("diag", "--json")
    assert p.returncode == 1
    doc = json.loads(p.stdout)
    failed = [d for d in doc["devices"] if not d["passed"]]
    assert [d["device"] for d in failed] == ["fingerprint"]
    assert failed[0]["hint"]
    wait_for(
        lambda: (
            retained(broker.port, f"ektp/v1/{KIOSK}/health")["devices"]["fingerprint"]["state"] == "fault"
        ),  # type: ignore[index]
        10,
        "the retained health to show the fault",
    )
    published = retained(broker.port, f"ektp/v1/{KIOSK}/health")["devices"]  # type: ignore[index]
    assert published["fingerprint"]["hint"] == failed[0]["hint"]  # the centre shows the technician's hint
    assert published["signature"]["hint"] == ""  # none for a device that is ok
    p = k.agent_cli("enroll", "--synthetic", "--count", "1")
    assert p.returncode == 1 and "fingerprint" in p.stderr  # refused before anything is committed
    assert sim(k, "clear", "fingerprint").returncode == 0
    wait_for(lambda: k.status()["devices"]["fingerprint"]["state"] == "ok", 10, "fingerprint back to ok")
    assert k.agent is not None and k.agent.poll() is None, "the service restarted"
    assert k.agent_cli("diag", "fingerprint").returncode == 0
    assert len(k.enroll(1)) == 1


def test_status_diag_queue_export_with_the_service_down(kit: tuple[Kit, Broker], tmp_path: Path) -> None:
    k, _broker = kit
    k.start_agent()  # no centre: the packets stay undelivered
    receipts = k.enroll(2)
    assert k.agent is not None
    k.agent.send_signal(signal.SIGTERM)
    assert k.agent.wait(30) == 0
    p = k.agent_cli("status", "--json")
    doc = json.loads(p.stdout)
    assert doc["service"] == "stopped"
    assert doc["queue"]["pending"] == 2
    assert set(doc["devices"]) == {"fingerprint", "signature", "iris", "camera"}
    p = k.agent_cli("diag", "--json")
    assert json.loads(p.stdout)["service"] == "stopped"
    rows = json.loads(k.agent_cli("queue", "--json").stdout)
    assert [r["packet_id"] for r in rows] == [r["packet_id"] for r in receipts]
    assert all(set(r) >= {"packet_id", "seq", "created_at", "state", "bytes", "attempts"} for r in rows)
    p = k.agent_cli("sync")
    assert p.returncode == 3
    out = tmp_path / "usb"
    assert k.agent_cli("export", "--to", str(out)).returncode == 0
    assert k.agent_cli("export", "--to", str(out)).returncode == 0  # idempotent
    assert len(list(out.iterdir())) == 2
    p = k.central_cli("import", str(out), "--json")
    assert p.returncode == 0, p.stderr
    assert {r["packet_id"] for r in k.central_packets()} == {r["packet_id"] for r in receipts}


def test_sigkill_during_enroll_loop_every_receipt_exactly_once(kit: tuple[Kit, Broker]) -> None:
    k, _broker = kit
    k.start_central()
    k.start_agent()
    receipts: list[dict[str, object]] = []
    enroll = subprocess.Popen(
        [script("ektp-agent"), "--config", str(k.agent_conf), "enroll", "--synthetic", "--count", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert enroll.stdout is not None
    for line in enroll.stdout:
        receipts.append(json.loads(line))
        if len(receipts) == 3:
            assert k.agent is not None
            os.kill(k.agent.pid, signal.SIGKILL)  # the agent alone, as a crash would
            break
    rest, _err = enroll.communicate(timeout=60)
    receipts += [json.loads(x) for x in rest.splitlines() if x.strip()]
    assert enroll.returncode != 0  # the service died under it
    k.agent.wait(10)  # type: ignore[union-attr]
    k.start_agent()  # resumes the outbox
    assert k.agent_cli("sync", "--wait", "--timeout", "60").returncode == 0
    # every receipt at the centre, seqs 1..N as the kiosk counts them, and nothing else but at
    # most the one commit the kill may have cut off from its receipt
    cut_off = max(int(str(r["seq"])) for r in receipts) + 1
    figure = check_exactly_once(k, receipts, unreceipted_ok={cut_off})
    assert figure["receipts"] >= 3


def test_a_real_kit_refuses_synthetic_enrollments_and_bad_requests(kit: tuple[Kit, Broker]) -> None:
    k, _broker = kit
    agent = k.spawn("ektp-agent", "run", name="agent")  # no --simulate: real devices (none here)
    try:
        wait_for(lambda: (k.data_dir / "api.sock").exists(), 30, "the API socket")
        p = k.agent_cli("enroll", "--synthetic", "--count", "1")
        assert p.returncode == 1 and "simulated peripherals" in p.stderr
        applicant = k.root / "applicant.json"
        # a man's NIK with a woman's declared sex: refused as a bad request, nothing captured
        applicant.write_text(
            json.dumps(
                {
                    "nik": "3171011708450001",
                    "demographics": {
                        "name": "Budi",
                        "sex": "F",
                        "birth_date": "1945-08-17",
                        "birth_place": "Jakarta",
                        "address": "Jl. Merdeka 1",
                        "religion": "Islam",
                    },
                }
            )
        )
        p = k.agent_cli("enroll", "--applicant", str(applicant))
        assert p.returncode == 1
        assert "internal" not in p.stderr
        doc = k.status()
        assert doc["service"] == "running" and doc["enrollments"]["total"] == 0
        assert {d["state"] for d in doc["devices"].values()} <= {"fault", "absent"}
    finally:
        k.kill(agent, signal.SIGTERM)


def test_a_repeated_finger_is_refused_through_the_service_and_nothing_is_committed(
    kit: tuple[Kit, Broker], tmp_path: Path
) -> None:
    """Issue 14: the resident places finger 1 again when asked for finger 3 (`ektp-sim present
    --repeat-finger 3=1`); the service's capture matches it on the module and refuses it."""
    from hw_sim.residents import synthetic_resident

    k, _ = kit
    k.start_agent()
    seed = next(s for s in range(2, 200) if synthetic_resident(s).missing_finger is None)
    r = synthetic_resident(seed)
    applicant = tmp_path / "applicant.json"
    applicant.write_text(
        json.dumps(
            {
                "nik": r.nik,
                "demographics": {
                    "name": r.name,
                    "sex": r.sex,
                    "birth_date": r.birth_date.isoformat(),
                    "birth_place": r.birth_place,
                    "address": r.address,
                    "religion": r.religion,
                },
            }
        )
    )
    shown = sim(k, "present", str(seed), "--repeat-finger", "3=1")
    assert shown.returncode == 0 and "finger 1 placed for finger 3" in shown.stdout, shown.stderr
    p = k.agent_cli("enroll", "--applicant", str(applicant))
    assert p.returncode == 1
    assert "finger 3 looks like finger 1: place the right middle finger" in p.stderr
    assert k.status()["devices"]["fingerprint"]["state"] == "ok"  # the operator's slip, not the device's
    assert k.status()["enrollments"]["total"] == 0
    assert sim(k, "present", str(seed)).returncode == 0  # the same resident, each finger once
    p = k.agent_cli("enroll", "--applicant", str(applicant))
    assert p.returncode == 0, p.stderr
    same = sim(k, "present", "1", "--repeat-finger", "3=3")  # not a repeat: refused, named
    assert same.returncode == 1 and "two different fingers" in same.stderr
