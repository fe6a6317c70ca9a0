"""The local API under a crowd of idle clients, against a real running service: beyond
``api.max_connections`` a client is told "busy" and closed, the refusals are logged a few
lines at most, idle connections are closed after ``api.idle_timeout_s``, and `ektp-agent
status` says "busy" cleanly, then works again. The service runs with only 256 file
descriptors, fewer than the connections thrown at it. Also here, on the same simulated
kiosk: every file it makes is private, and every packet it commits carries the signed
synthetic mark (tests/test_synthetic_guard.py: a production kiosk refuses synthetic ones)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.api import ThrottledLog, request
from agent.outbox import Outbox
from tests.agentkit import Kit
from tests.netkit import Broker
from wire.packet import read_header

MAX_CONNECTIONS = 8
IDLE_S = 3
CROWD = 1100  # more than the service's descriptors
FDS = 256


@pytest.fixture(scope="module")
def kiosk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:
    root = tmp_path_factory.mktemp("api-limits")
    broker = Broker(root / "broker")
    broker.start()
    kit = Kit(
        root / "kit",
        broker.port,
        extra_agent=f"[api]\nmax_connections = {MAX_CONNECTIONS}\nidle_timeout_s = {IDLE_S}\n",
    )
    try:
        kit.setup_keys()
        kit.start_agent(prefix=("prlimit", f"--nofile={FDS}:{FDS}"))
        yield kit
    finally:
        kit.close()
        broker.stop()


class Busy:
    """Connections that keep a slot each by asking for `sync` over and over (never idle)."""

    def __init__(self, path: Path, n: int) -> None:
        self.socks = []
        for _ in range(n):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(30)
            s.connect(str(path))
            self.socks.append(s)
        self.stop = threading.Event()
        self.answers = 0
        self.threads = [threading.Thread(target=self._ask, args=(s,), name="busy") for s in self.socks]
        for t in self.threads:
            t.start()

    def _ask(self, s: socket.socket) -> None:
        stream = s.makefile("rb")
        while not self.stop.is_set():
            s.sendall(b'{"op": "sync"}\n')
            while not json.loads(stream.readline()).get("done"):
                pass
            self.answers += 1
            self.stop.wait(0.2)
        stream.close()

    def go_idle(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def wait_closed_by_the_service(self) -> None:
        for s in self.socks:
            assert s.recv(1) == b"", "an idle connection got data instead of being closed"

    def close(self) -> None:
        self.go_idle()
        for s in self.socks:
            s.close()


def test_a_crowd_of_idle_connections_is_refused_logged_briefly_and_timed_out(kiosk: Kit) -> None:
    path = kiosk.data_dir / "api.sock"
    log_before = kiosk.log("agent")
    busy = Busy(path, MAX_CONNECTIONS)
    crowd: list[socket.socket] = []
    try:
        for _ in range(CROWD):  # connect and say nothing
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(30)
            crowd.append(s)
            while True:
                try:
                    s.connect(str(path))
                    break
                except BlockingIOError:  # the listen backlog is full: a flooding client insists
                    time.sleep(0.005)
        refusals = []
        for s in crowd:
            with s.makefile("rb") as stream:
                refusals.append(json.loads(stream.readline()))
                assert stream.readline() == b"", "a refused connection stays open"
        assert {(r["done"], r["ok"], r["code"]) for r in refusals} == {(True, False, "busy")}
        assert "api.max_connections" in refusals[0]["error"] and str(path) in refusals[0]["error"]

        p = kiosk.agent_cli("status", timeout=60)  # the slots are taken: told so, in one line
        assert p.returncode == 1, p.stdout + p.stderr
        assert "ektp-agent: the agent service is busy" in p.stderr and "Traceback" not in p.stderr
        assert busy.answers > 0
        busy.go_idle()  # from now on the slots' connections are idle
        busy.wait_closed_by_the_service()
    finally:
        for s in crowd:
            s.close()
        busy.close()

    p = kiosk.agent_cli("status", "--json", timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["service"] == "running"
    log = kiosk.log("agent")[len(log_before) :]
    lines = [line for line in log.splitlines() if "refused a connection" in line]
    assert 1 <= len(lines) <= 4, lines  # CROWD + 1 refusals, one line per 10 s at most
    assert len(log.splitlines()) < 40, log[-3000:]
    assert "Too many open files" not in log and "out of system resource" not in log
    assert kiosk.agent is not None and kiosk.agent.poll() is None


def test_every_file_the_kiosk_makes_is_private(kiosk: Kit, tmp_path: Path) -> None:
    kiosk.enroll(1)
    p = kiosk.agent_cli("keys", "rotate")
    assert p.returncode == 0, p.stderr
    usb = tmp_path / "usb"
    assert kiosk.agent_cli("export", "--to", str(usb)).returncode == 0
    assert (kiosk.data_dir / "mqtt-connection").exists(), "the link never connected"
    seen = []
    for root in (kiosk.data_dir, usb):
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [*dirnames, *filenames]:
                path = Path(dirpath) / name
                with contextlib.suppress(FileNotFoundError):  # the WAL's -shm comes and goes
                    st = path.lstat()
                    if stat.S_ISLNK(st.st_mode):
                        continue  # the simulator's device links
                    mode = stat.S_IMODE(st.st_mode)
                    seen.append(path.name)
                    if path == kiosk.data_dir / "api.sock":
                        assert mode == 0o660, oct(mode)  # its group may use the API
                    else:
                        assert mode & 0o077 == 0, f"{path} has mode {mode:04o}"
    for expected in ("outbox.db", "kiosk.key", "kiosk.key.pub", "mqtt-connection", "sim.log"):
        assert expected in seen, (expected, seen)
    assert any(".retired-" in name for name in seen)


def test_the_refusal_log_says_how_many_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    throttled = ThrottledLog(logging.getLogger("ektp.test"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="ektp.test"):
        for _ in range(1000):
            throttled.warning("refused %s", "one")
        now[0] += 4
        throttled.catch_up("refused since")  # too soon: still quiet
        now[0] += 6
        throttled.warning("refused %s", "again")
        for _ in range(5):
            throttled.warning("refused %s", "again")
        now[0] += 30
        throttled.catch_up("refused since")
        throttled.catch_up("refused since")  # nothing left to tell
    assert [r.getMessage() for r in caplog.records] == [
        "refused one",
        "refused again (999 more like it in the last 10 s not logged)",
        "refused since: 5 in the last 30 s",
    ]


def test_every_packet_of_a_simulated_kit_carries_the_synthetic_mark(kiosk: Kit) -> None:
    k = kiosk
    receipts = k.enroll(1)
    receipts += [
        item["receipt"]
        for item in request(k.data_dir / "api.sock", "enroll", synthetic=True, direct=True, count=2, seed=9)
    ]
    with Outbox.open_readonly(k.data_dir / "outbox.db") as ob:
        headers = [read_header(ob.get(r["packet_id"]) or b"") for r in receipts]
    assert [h.packet_id for h in headers] == [r["packet_id"] for r in receipts]
    assert all(h.synthetic for h in headers)
