"""Clock synchronisation status: read from the system, never raises, unknown when it cannot tell."""

from __future__ import annotations

import ctypes.util
import shutil
import subprocess

import pytest

from agent import clock
from agent.clock import ClockStatus, ClockSync, clock_status, clock_synced


def test_reads_the_system_without_raising() -> None:
    status = clock_status()
    assert isinstance(status, ClockStatus)
    assert status.source in ("adjtimex", "timedatectl", "none")
    assert clock_synced() in (True, False)
    if status.source == "adjtimex":
        assert status.max_error_us is not None
        if status.synced:
            assert status.max_error_us < clock.MAXERROR_UNSYNCED_US


def test_no_libc_falls_back_to_timedatectl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/timedatectl")

    def fake_run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert args[1:] == ["show", "-p", "NTPSynchronized", "--value"]
        return subprocess.CompletedProcess(args, 0, stdout="yes\n", stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert clock_status() == ClockStatus(ClockSync.SYNCED, "timedatectl")
    assert clock_synced() is True


@pytest.mark.parametrize(
    "outcome",
    [
        subprocess.CompletedProcess(["t"], 1, stdout="", stderr="Failed to connect to bus"),
        subprocess.CompletedProcess(["t"], 0, stdout="maybe\n", stderr=""),
        subprocess.TimeoutExpired(["t"], 2.0),
        FileNotFoundError("gone"),
    ],
)
def test_cannot_tell_is_unknown_and_not_synced(monkeypatch: pytest.MonkeyPatch, outcome: object) -> None:
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/timedatectl")

    def fake_run(args: list[str], **kwargs: object) -> object:
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(subprocess, "run", fake_run)
    status = clock_status()
    assert status.sync is ClockSync.UNKNOWN and not status.synced
    assert clock_synced() is False


def test_nothing_available_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert clock_status().sync is ClockSync.UNKNOWN
