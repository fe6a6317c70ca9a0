"""`python -m demo` (what `make run` runs), end to end and without a terminal: it
enrolls, survives the broker cut, drains the backlog, stops cleanly and leaves nothing
running behind it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _processes_naming(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (the demo's directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


@pytest.mark.timeout(110)
def test_demo_enrolls_survives_a_broker_cut_and_stops_cleanly(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    argv = [sys.executable, "-m", "demo", "--duration", "60", "--cut-after", "10", "--cut-for", "10"]
    proc = subprocess.Popen(
        [*argv, "--dir", str(demo_dir)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        out, err = proc.communicate(timeout=95)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # let it stop its children, then fail
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"the demo did not stop by itself within 95 s:\n{out[-4000:]}\n{err[-2000:]}")
    p = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    where = f"\nstdout:\n{p.stdout[-4000:]}\nstderr:\n{p.stderr[-2000:]}"
    assert p.returncode == 0, where
    lines = p.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["ok"] is True, where
    assert summary["enrolled"] >= 5, where
    assert summary["enroll_failures"] == 0, where
    assert summary["delivered"] == summary["enrolled"] == summary["centre_stored"], where
    assert summary["undelivered"] == summary["lost"] == summary["duplicates"] == 0, where
    assert summary["exactly_once"] is True, where
    assert summary["broker_cuts"] == 1, where
    cut = summary["cuts"][0]
    assert cut["peak_backlog"] >= 1, where  # enrollments went on during the cut
    assert summary["backlog_drained"] is True and cut["drained_after_s"] is not None, where
    assert summary["reconnects"] >= 1, where
    # the plain progress lines tell the story
    text = p.stdout
    assert "wiped at start" in text
    for needle in ("broker cut", "broker restored", "backlog drained", "enrolled seq 1 "):
        assert needle in text, f"{needle!r} missing{where}"
    assert "\x1b[" not in text  # no live view (escape codes) without a terminal
    # nothing left running: no process names the demo's directory any more
    assert _processes_naming(str(demo_dir)) == []
