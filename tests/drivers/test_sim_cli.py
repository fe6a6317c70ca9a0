"""The simulator's control protocol in-process, and `ektp-sim` driven as a user would, as a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hw_sim.control import SimControl, SimControlError, SimNotRunning
from hw_sim.server import SimAlreadyRunning, SimServer

SERIAL = ("fingerprint", "signature")


def _ektp_sim() -> list[str]:
    script = Path(sys.executable).parent / "ektp-sim"
    found = shutil.which("ektp-sim")
    if script.exists():
        return [str(script)]
    if found:
        return [found]
    return [sys.executable, "-m", "hw_sim.cli"]


@pytest.fixture
def sim_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ektp-sim-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server(sim_dir: Path) -> Iterator[SimServer]:
    with SimServer(sim_dir, SERIAL) as srv:
        yield srv


def test_control_client_round_trip(server: SimServer, sim_dir: Path) -> None:
    control = SimControl(sim_dir)
    status = control.status()
    assert set(status["devices"]) == set(SERIAL)
    assert all(d["fault"] is None for d in status["devices"].values())
    control.fault("signature", "garbage", 30)
    assert control.status()["devices"]["signature"]["fault"] == "garbage"
    assert 0 < control.status()["faults"]["signature"]["remaining_s"] <= 30
    control.clear()
    assert control.status()["devices"]["signature"]["fault"] is None
    assert control.present(7)["seed"] == 7
    assert control.status()["resident"] == 7


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            {"op": "fault", "device": "printer", "kind": "timeout"},
            "expected one of fingerprint, signature, iris, camera",
        ),
        (
            {"op": "fault", "device": "fingerprint", "kind": "melt"},
            "expected one of unplug, timeout, garbage",
        ),
        (
            {"op": "fault", "device": "iris", "kind": "timeout"},
            "not running in this simulator; running: fingerprint",
        ),
        ({"op": "fault", "device": "fingerprint", "kind": "slow", "for": -1}, "positive number"),
        ({"op": "clear", "device": "printer"}, "unknown device 'printer'"),
        ({"op": "present", "seed": "x"}, "non-negative integer"),
        ({"op": "present", "seed": 1, "finger": 11}, "1..10"),
        ({"op": "reboot"}, "expected one of status, fault, clear, present"),
        ([1, 2], "JSON object"),
    ],
)
def test_control_errors_name_the_bad_value_and_the_valid_ones(
    server: SimServer, request_: object, message: str
) -> None:
    reply = server.handle(request_)
    assert reply["ok"] is False and message in reply["error"]


def test_control_error_reaches_the_client(server: SimServer, sim_dir: Path) -> None:
    with pytest.raises(SimControlError, match="unknown fault kind 'melt'"):
        SimControl(sim_dir).fault("fingerprint", "melt")


def test_no_simulator_running(sim_dir: Path) -> None:
    with pytest.raises(SimNotRunning, match=f"start it with `ektp-sim --dir {sim_dir} run`"):
        SimControl(sim_dir).status()


def test_a_second_simulator_on_the_same_dir_is_refused(server: SimServer, sim_dir: Path) -> None:
    with pytest.raises(SimAlreadyRunning, match="already runs"):
        SimServer(sim_dir, SERIAL).start()
    assert SimControl(sim_dir).status()["ok"]  # the first one is untouched


def _cli(sim_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_ektp_sim(), "--dir", str(sim_dir), *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_ektp_sim_console_script(sim_dir: Path) -> None:
    proc = subprocess.Popen(
        [*_ektp_sim(), "--dir", str(sim_dir), "run", "--device", "fingerprint", "--device", "signature"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                SimControl(sim_dir).status()
                break
            except SimNotRunning:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the simulator did not come up"
                time.sleep(0.1)
        links = [p for p in sim_dir.iterdir() if p.is_symlink() and os.readlink(p).startswith("/dev/pts/")]
        assert {p.name for p in links} == set(SERIAL)

        status = _cli(sim_dir, "status", "--json")
        assert status.returncode == 0, status.stderr
        doc = json.loads(status.stdout)
        assert doc["ok"] and set(doc["devices"]) == set(SERIAL) and doc["pid"] == proc.pid

        assert _cli(sim_dir, "fault", "fingerprint", "timeout", "--for", "60").returncode == 0
        assert (
            json.loads(_cli(sim_dir, "status", "--json").stdout)["devices"]["fingerprint"]["fault"]
            == "timeout"
        )
        table = _cli(sim_dir, "status").stdout
        assert "fingerprint" in table and "timeout" in table and "DEVICE" in table

        assert _cli(sim_dir, "clear").returncode == 0
        assert json.loads(_cli(sim_dir, "status", "--json").stdout)["devices"]["fingerprint"]["fault"] is None

        bad = _cli(sim_dir, "fault", "printer", "timeout")
        assert bad.returncode == 2 and "fingerprint" in bad.stderr and "camera" in bad.stderr
        bad_kind = _cli(sim_dir, "fault", "signature", "melt")
        assert bad_kind.returncode == 2 and "low-quality" in bad_kind.stderr
        not_running = _cli(sim_dir, "fault", "iris", "timeout")
        assert not_running.returncode == 1 and "not running" in not_running.stderr

        again = _cli(sim_dir, "run", "--device", "fingerprint")
        assert again.returncode != 0 and "already runs" in again.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "fingerprint:" in out
    assert not any(p.is_symlink() or p.is_socket() for p in sim_dir.iterdir()), list(sim_dir.iterdir())
    gone = _cli(sim_dir, "status")
    assert gone.returncode == 3 and "no simulator running" in gone.stderr


@pytest.mark.parametrize("command", ["run", "fault", "clear", "status", "present"])
def test_every_command_has_help_with_an_example(command: str, sim_dir: Path) -> None:
    result = _cli(sim_dir, command, "--help")
    assert result.returncode == 0 and "Example: ektp-sim --dir" in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "instant"),
    [((), {}, False), (("--instant-pen",), {}, True), ((), {"EKTP_SIM_INSTANT_PEN": "1"}, True)],
    ids=["real-pace", "flag", "env"],
)
def test_run_instant_pen_by_flag_or_environment(
    sim_dir: Path, args: tuple[str, ...], env: dict[str, str], instant: bool
) -> None:
    """`run --instant-pen` (or EKTP_SIM_INSTANT_PEN=1, which `ektp-agent run --simulate` hands
    its simulator) makes the pad stream a signature at once; without either, the pen's pace."""
    clean = {k: v for k, v in os.environ.items() if k != "EKTP_SIM_INSTANT_PEN"}
    proc = subprocess.Popen(
        [*_ektp_sim(), "--dir", str(sim_dir), "run", "--device", "signature", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**clean, **env},
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                doc = SimControl(sim_dir).status()
                break
            except SimNotRunning:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the simulator did not come up"
                time.sleep(0.1)
        assert doc["devices"]["signature"]["instant"] is instant
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
