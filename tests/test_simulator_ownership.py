"""Who owns a simulator, with real processes: the one `ektp-agent run --simulate` starts is
that service's and goes with it (a SIGKILL of the service alone included); one started by
hand (`ektp-sim run`) outlives every service that used it; a next service never adopts
the simulator of a service that died, it waits for it to go and starts its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hw_sim.control import SimControl, SimNotRunning
from tests.agentkit import Kit, script
from tests.netkit import Broker

pytestmark = pytest.mark.slow

GONE_WITHIN_S = 20.0  # a bound for a failure message, not a timing claim


def _sim_dir(k: Kit) -> Path:
    return k.data_dir / "sim"


def _simulator_pids(sim_dir: Path) -> list[int]:
    """Live (not zombie) simulator processes serving ``sim_dir``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")  # empty: a zombie
        except OSError:
            continue
        if "hw_sim.cli" in argv and str(sim_dir) in argv and "run" in argv:
            found.append(int(entry.name))
    return found


def _wait(cond: Callable[[], bool], what: str, timeout: float = GONE_WITHIN_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"still waiting for {what} after {timeout:.0f} s")
        time.sleep(0.05)


def _answers(sim_dir: Path) -> bool:
    try:
        SimControl(sim_dir, timeout_s=2.0).status()
    except SimNotRunning:
        return False
    return True


def _stop_cleanly(agent: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the service alone (not its process group): what it stops, it stops itself."""
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(30) == 0


def _kill_leftovers(sim_dir: Path) -> None:
    for pid in _simulator_pids(sim_dir):
        os.kill(pid, signal.SIGKILL)


def test_a_killed_service_takes_its_simulator_with_it(kit: tuple[Kit, Broker]) -> None:
    k, _broker = kit
    sim_dir = _sim_dir(k)
    try:
        agent = k.start_agent()
        assert "started the simulator" in k.log("agent")
        [sim] = _simulator_pids(sim_dir)

        os.kill(agent.pid, signal.SIGKILL)  # the service alone; its simulator is not in the signal
        agent.wait(10)
        _wait(lambda: sim not in _simulator_pids(sim_dir), "the dead service's simulator to stop")
        assert not _answers(sim_dir)
        assert not (sim_dir / "control.sock").exists()  # it stopped itself, cleanly
        assert "is gone: stopping" in (sim_dir / "sim.log").read_text()

        agent = k.start_agent()  # nothing to adopt: it starts its own
        assert k.log("agent").count("started the simulator") == 2
        assert "attached to the simulator" not in k.log("agent")
        [again] = _simulator_pids(sim_dir)
        _stop_cleanly(agent)
        _wait(lambda: again not in _simulator_pids(sim_dir), "the stopped service's simulator to stop")
        assert _simulator_pids(sim_dir) == []
    finally:
        _kill_leftovers(sim_dir)


def test_a_simulator_started_by_hand_outlives_the_service_that_used_it(kit: tuple[Kit, Broker]) -> None:
    k, _broker = kit
    sim_dir = _sim_dir(k)
    sim = subprocess.Popen(
        [script("ektp-sim"), "--dir", str(sim_dir), "run"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait(lambda: _answers(sim_dir), "the hand-started simulator to answer")
        assert SimControl(sim_dir).status()["owner_pid"] is None
        agent = k.start_agent()
        assert "attached to the simulator already running" in k.log("agent")
        _stop_cleanly(agent)
        assert sim.poll() is None, "the service stopped a simulator it did not start"
        assert _answers(sim_dir)
    finally:
        sim.terminate()
        sim.wait(15)


def test_the_next_service_waits_for_a_dead_services_simulator_and_starts_its_own(
    kit: tuple[Kit, Broker],
) -> None:
    """The moment between a service's death and its simulator's: the next service finds it
    still answering. Here the "service" is a stand-in process that started a simulator as
    the service does; it stays alive until the next service is seen waiting."""
    k, _broker = kit
    sim_dir = _sim_dir(k)
    sim_dir.mkdir(parents=True, exist_ok=True)
    starter = (
        "import os, subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-m', 'hw_sim.cli', '--dir', sys.argv[1], 'run',"
        " '--owner-pid', str(os.getpid())])\n"
        "sys.stdin.read()\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", starter, str(sim_dir)], stdin=subprocess.PIPE, start_new_session=True
    )
    agent = None
    try:
        _wait(lambda: _answers(sim_dir), "the stand-in service's simulator to answer")
        assert SimControl(sim_dir).status()["owner_pid"] == owner.pid
        [theirs] = _simulator_pids(sim_dir)
        agent = k.spawn("ektp-agent", "run", "--simulate", name="agent")
        _wait(lambda: f"belongs to service pid {owner.pid}" in k.log("agent"), "the service to wait")
        assert agent.poll() is None
        owner.kill()  # the stand-in dies: its simulator goes, the service starts its own
        owner.wait(10)
        _wait(lambda: "started the simulator" in k.log("agent"), "the service to start its own simulator")
        assert theirs not in _simulator_pids(sim_dir)
        assert SimControl(sim_dir).status()["owner_pid"] == agent.pid
        _stop_cleanly(agent)
        assert _simulator_pids(sim_dir) == []
    finally:
        if owner.stdin is not None:
            owner.stdin.close()
        if owner.poll() is None:
            owner.kill()
            owner.wait(10)
        _kill_leftovers(sim_dir)


def test_a_stopping_simulator_leaves_the_device_link_another_one_took_over(tmp_path: Path) -> None:
    """A service killed in start-up: its simulator stops after the next service's simulator
    already made its own device at the same path; the old one must not remove that link."""
    from hw_sim.pty_link import PtyPort

    link = tmp_path / "fingerprint"
    old, new = PtyPort(link), PtyPort(link)
    old.plug()
    new.plug()  # the next simulator replaces the link with its own pty
    old.unplug()
    assert link.is_symlink() and os.readlink(link) == new.slave_name
    new.unplug()
    assert not link.exists() and not link.is_symlink()
