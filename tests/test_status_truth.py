"""`ektp-agent status` tells the truth: every problem that keeps enrollments from the centre
or from being recorded is said in words and makes it exit 1; warnings are said and do not.
Driven through the console scripts against a real Mosquitto (and a real centre).

Two kiosks, each started once for its tests (the tests of one kiosk run in file order and
build on each other): the first has no centre, a store bound of ~4 packets and a broker
whose ACL the tests change; the second has its camera disabled, its own simulator (so the
devices answer after the service stops) and a centre that does not know its key.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.api import ApiError, request
from agent.clock import SIMULATE_ENV, STRETCH_FILE
from tests.agentkit import Kit, script
from tests.linkkit import wait_for
from tests.netkit import Broker, free_port

KIOSK = "320715-01"
NO_PRIVILEGES = ("setpriv", "--bounding-set=-all", "--inh-caps=-all")  # root, but without its capabilities
OPEN_ACL = "topic readwrite ektp/v1/#\n"
# status, health and acks as usual, but no enrollment: the broker answers PUBACK 0x87
NO_ENROLLMENT_ACL = (
    "topic write ektp/v1/+/status\ntopic write ektp/v1/+/health\ntopic read ektp/v1/+/ack\n"
    "topic read ektp/v1/+/enrollment\ntopic read ektp/v1/+/status\ntopic read ektp/v1/+/health\n"
)


@pytest.fixture(scope="module", autouse=True)
def unsynchronised_clock() -> Iterator[None]:
    """Every kiosk and command here sees an unsynchronised clock, whatever this host's NTP says."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SIMULATE_ENV, "unsynced")
        yield


def status_json(k: Kit) -> tuple[int, dict[str, Any]]:
    p = k.agent_cli("status", "--json")
    doc: dict[str, Any] = json.loads(p.stdout)
    return p.returncode, doc


def status(k: Kit) -> tuple[int, dict[str, Any], str]:
    """(exit code, the JSON document, the plain text) of `status`, both asked once each."""
    p = k.agent_cli("status", "--json")
    doc: dict[str, Any] = json.loads(p.stdout)
    text = k.agent_cli("status")
    assert text.returncode == p.returncode, (text.stdout, p.stdout)
    return p.returncode, doc, text.stdout


def codes(findings: list[dict[str, str]]) -> list[str]:
    return [f["code"] for f in findings]


def start_simulator(k: Kit) -> None:
    """The kiosk's simulator on its own, as on a training kit: it answers while the service is stopped."""
    sim = subprocess.Popen(
        [script("ektp-sim"), "--dir", str(k.data_dir / "sim"), "run"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    k.procs.append(sim)
    wait_for(lambda: (k.data_dir / "sim" / "control.sock").exists(), 30, "the simulator")


def enroll_direct(k: Kit, seed: int) -> dict[str, Any]:
    """One synthetic enrollment through the API's direct path (no capture: the store is what is tested)."""
    (item,) = request(k.data_dir / "api.sock", "enroll", synthetic=True, direct=True, count=1, seed=seed)
    receipt: dict[str, Any] = item["receipt"]
    return receipt


# ----------------------------------------------------------------------------- kiosk 1: no centre


@pytest.fixture(scope="module")
def lone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Kit, Broker]]:
    """A kiosk without a centre, its store bound at ~10 packets, on a broker with an ACL file."""
    root = tmp_path_factory.mktemp("status-lone")
    acl = root / "ektp.acl"
    acl.write_text(OPEN_ACL)
    broker = Broker(root / "broker", extra_config=f"acl_file {acl}\n")
    broker.start()
    k = Kit(root / "kit", broker.port, extra_agent="[store]\nmax_bytes = 1000000\n")  # ~10 packets of ~92 KB
    try:
        k.setup_keys()
        start_simulator(k)
        k.agent = k.spawn("ektp-agent", "run", "--simulate", name="agent")  # test 1 waits for it
        yield k, broker
    finally:
        k.close()
        broker.stop()


def test_start_up_says_not_yet_tested_and_status_wait_waits_for_the_first_tests(
    lone: tuple[Kit, Broker],
) -> None:
    k, _broker = lone
    p = k.agent_cli("status", "--wait", "--timeout", "60", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(p.stdout)
    assert doc["service"] == "running"
    assert {d["state"] for d in doc["devices"].values()} == {"ok"}  # it waited for the first self-tests
    assert doc["problems"] == []
    assert codes(doc["warnings"]) == ["clock-unsynchronised"]
    # READY comes before any self-test: the devices are not yet tested, not faulty
    (ready,) = [line for line in k.log("agent").splitlines() if "ready: kiosk" in line]
    assert "faulty: none; not yet tested: fingerprint, signature, iris, camera" in ready, ready


def test_clock_unsynchronised_for_long_while_enrolling_is_a_problem(lone: tuple[Kit, Broker]) -> None:
    k, _broker = lone
    enroll_direct(k, seed=1)
    code, doc, text = status(k)
    assert code == 0, text  # just unsynchronised: NTP may set it any minute
    assert doc["host"]["clock_unsynchronised_enrollments"] == 1
    assert "clock-unsynchronised" in codes(doc["warnings"]) and doc["problems"] == []
    assert "clock: not synchronised; 1 enrollment recorded on it in 0 min" in text
    # the same stretch an hour on (it is measured in seconds since boot, kept in the data dir)
    stretch = k.data_dir / STRETCH_FILE
    noted = json.loads(stretch.read_text())
    stretch.write_text(json.dumps({**noted, "started_boot_s": noted["started_boot_s"] - 3600}))
    code, doc, text = status(k)
    assert code == 1, text
    assert codes(doc["problems"]) == ["clock-unsynchronised"]
    (problem,) = doc["problems"]
    assert "not been synchronised for 60 min while 1 enrollment(s) were recorded" in problem["message"]
    assert "timedatectl" in problem["message"]
    assert f"  - {problem['message']}\n" in text  # whole, on one line: piped output is never wrapped
    stretch.unlink()  # what the service does when the clock is synchronised
    code, doc, text = status(k)
    assert code == 0 and doc["problems"] == [], text


def test_a_broker_that_refuses_the_enrollments_is_a_problem(lone: tuple[Kit, Broker]) -> None:
    k, broker = lone
    # the packet waits: no centre consumes it (PUBACK 0x10), a warning only
    wait_for(lambda: "no-centre" in codes(status_json(k)[1]["warnings"]), 30, "the no-centre warning")
    acl = Path(broker.conf.read_text().split("acl_file ")[1].split("\n")[0])
    acl.write_text(NO_ENROLLMENT_ACL)
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGHUP)  # Mosquitto reloads its ACL; the kiosk stays connected
    wait_for(lambda: status_json(k)[0] == 1, 30, "status to see the refused publishes")
    _code, doc, text = status(k)
    assert codes(doc["problems"]) == ["publishes-refused"], doc["problems"]
    assert doc["link"]["connected"] is True and doc["link"]["last_refused"] == "Not authorized"
    assert "link: connected, but the broker refuses this kiosk's enrollments (Not authorized)" in text
    (problem,) = doc["problems"]
    assert f"ektp/v1/{KIOSK}/enrollment" in problem["message"] and "ACL" in problem["message"]
    assert f"  - {problem['message']}\n" in text
    acl.write_text(OPEN_ACL)
    broker.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: status_json(k)[0] == 0, 30, "the problem to clear once the broker takes them again")
    assert status_json(k)[1]["link"]["refused_in_a_row"] == 0


def test_near_full_is_shown_before_full_and_full_is_a_problem(lone: tuple[Kit, Broker]) -> None:
    k, _broker = lone
    seen: list[tuple[int, list[str], list[str]]] = []
    for seed in range(2, 20):
        try:
            enroll_direct(k, seed)
        except ApiError as exc:
            assert exc.code == "store-full", exc
            break
        code, doc = status_json(k)
        seen.append((code, codes(doc["problems"]), codes(doc["warnings"])))
    else:
        raise AssertionError(f"the store never refused an enrollment: {seen}")
    code, doc, text = status(k)
    assert code == 1, text
    assert "store-full" in codes(doc["problems"]) and doc["queue"]["full"] is True
    assert "FULL" in text and "new enrollments are refused" in text
    # every status before the refusal: near full came, as a warning (exit 0), before any full
    near = [i for i, (_c, _p, w) in enumerate(seen) if "store-near-full" in w]
    full = [i for i, (_c, p, _w) in enumerate(seen) if "store-full" in p]
    assert near, seen
    assert not full or near[0] < full[0], seen
    assert all(c == 0 for c, p, _w in seen if "store-full" not in p), seen


def test_the_stopped_service_reports_the_same_problems(lone: tuple[Kit, Broker]) -> None:
    k, _broker = lone
    running_code, running = status_json(k)
    stretch = k.data_dir / STRETCH_FILE  # the store test's enrollments started a new stretch
    noted = json.loads(stretch.read_text())
    stretch.write_text(json.dumps({**noted, "started_boot_s": noted["started_boot_s"] - 3600}))
    assert k.agent is not None
    k.kill(k.agent, signal.SIGTERM)
    code, doc, text = status(k)
    assert doc["service"] == "stopped" and code == 1, text
    assert codes(doc["problems"]) == ["store-full", "clock-unsynchronised"], doc["problems"]
    assert codes(doc["warnings"])[0] == "service-stopped"
    assert running_code == 1 and "store-full" in codes(running["problems"])
    assert doc["queue"]["pending"] == running["queue"]["pending"] > 0
    assert "warning: the service is not running" in text


# ----------------------------------------------------------------------------- kiosk 2: an unknown kiosk


@pytest.fixture(scope="module")
def unknown(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:
    """A kiosk with its camera disabled and its own simulator, and a centre without its key."""
    root = tmp_path_factory.mktemp("status-unknown")
    broker = Broker(root / "broker")
    broker.start()
    k = Kit(root / "kit", broker.port, extra_agent="[devices.camera]\nenabled = false\n")
    try:
        for p in (k.central_cli("keys", "init"), k.agent_cli("keys", "init")):
            assert p.returncode == 0, p.stderr
        start_simulator(k)
        k.start_central()
        k.start_agent()  # attaches to the running simulator
        yield k
    finally:
        k.close()
        broker.stop()


def test_disabled_device_is_skipped_by_diag_with_the_service_running(unknown: Kit) -> None:
    k = unknown
    p = k.agent_cli("diag")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SKIP camera: disabled in the config (devices.camera.enabled = false); not tested" in p.stdout
    assert "FAIL" not in p.stdout
    doc = json.loads(k.agent_cli("diag", "--json").stdout)
    assert doc["ok"] is True and doc["service"] == "running"
    assert [(d["device"], d["skipped"]) for d in doc["devices"]] == [
        ("fingerprint", False),
        ("signature", False),
        ("iris", False),
        ("camera", True),
    ]
    p = k.agent_cli("diag", "camera")  # named: the same, not an error
    assert p.returncode == 0 and p.stdout.startswith("SKIP camera"), p.stdout + p.stderr


def test_a_rejected_packet_is_in_the_backlog_line_and_a_problem(unknown: Kit) -> None:
    k = unknown
    receipt = enroll_direct(k, seed=3)
    wait_for(lambda: status_json(k)[1]["queue"]["rejected"] == 1, 30, "the centre's rejection")
    code, doc, text = status(k)
    assert code == 1, text
    assert codes(doc["problems"]) == ["packets-rejected"]
    assert "unknown_kiosk" in doc["problems"][0]["message"]
    held = doc["queue"]["pending_bytes"]
    assert held == receipt["bytes"]
    assert f"backlog: 0 packets to deliver, 1 rejected by the centre; {held} bytes held" in text
    # piped, nothing is cut or wrapped: the whole id in its row, each message on its one line
    p = k.agent_cli("queue")
    assert p.returncode == 1
    (row,) = [line for line in p.stdout.splitlines() if receipt["packet_id"] in line]
    assert "rejected (rejected: unknown_kiosk" in row
    assert f"  - {doc['problems'][0]['message']}\n" in text
    assert all(line == line.rstrip() for line in p.stdout.splitlines())


@pytest.mark.skipif(
    os.getuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv to drop privileges"
)
def test_permission_denied_on_the_socket_names_it_and_the_group(unknown: Kit) -> None:
    k = unknown
    sock = k.data_dir / "api.sock"
    os.chown(sock, 65534, 65534)  # another user's socket, mode 0660: root without its capabilities may not
    try:
        for command in ("status", "diag"):
            p = subprocess.run(
                [*NO_PRIVILEGES, script("ektp-agent"), "--config", str(k.agent_conf), command],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert p.returncode == 1, p.stdout + p.stderr
            assert p.stderr.strip() == (
                f"ektp-agent: permission denied on the agent's API socket {sock}: add this user to the "
                "group ektp (`sudo usermod -aG ektp $USER`, then log in again) or run as root (sudo)"
            ), p.stderr
    finally:
        os.chown(sock, 0, 0)


def test_disabled_device_and_problems_are_the_same_with_the_service_stopped(unknown: Kit) -> None:
    k = unknown
    _code, running = status_json(k)
    assert k.agent is not None
    k.kill(k.agent, signal.SIGTERM)  # its simulator runs on: the devices still answer
    p = k.agent_cli("diag")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SKIP camera: disabled in the config (devices.camera.enabled = false); not tested" in p.stdout
    assert json.loads(k.agent_cli("diag", "--json").stdout)["service"] == "stopped"
    code, doc, text = status(k)
    assert code == 1 and doc["service"] == "stopped", text
    assert doc["problems"] == running["problems"]


# ----------------------------------------------------------------------------- without a broker or service


def test_status_wait_gives_up_with_exit_3(tmp_path: Path) -> None:
    k = Kit(tmp_path / "kit", free_port())
    p = k.agent_cli("status", "--wait", "--timeout", "0.5")
    assert p.returncode == 3, p.stdout + p.stderr
    assert "did not start within 0.5 s" in p.stderr and p.stdout == ""


def test_the_centre_logs_each_failed_connect_with_its_reason(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    k = Kit(tmp_path / "kit", port)
    try:
        assert k.central_cli("keys", "init").returncode == 0
        k.start_central()
        failed = f"cannot connect to 127.0.0.1:{port}: [Errno 111] Connection refused"
        wait_for(lambda: k.log("central").count(failed) >= 2, 30, "two failed connects in the centre's log")
    finally:
        k.close()
