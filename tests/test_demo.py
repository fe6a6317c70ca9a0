"""`python -m demo` (what `make run` runs), end to end and without a terminal: it enrolls,
survives the broker cut (and names it as its own), drains the backlog, never shows
counters that contradict each other, stops cleanly and leaves nothing running behind it;
without --duration it says first that it stops by itself."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.cli import DEFAULT_DURATION_S, run_length

# a plain progress line: "[  13.1s] enrolled 2, backlog 0 (0 B), link down ..., centre stored 2 ..."
PROGRESS = re.compile(r"\] enrolled (\d+), backlog (\d+) .*, centre stored (\d+)")


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


@pytest.fixture
def short_dir(tmp_path: Path) -> Iterator[Path]:
    """A demo directory with a short path: its Unix sockets must fit in sun_path (108 bytes),
    and a parallel run's temporary folders are long (…/popen-gw1/test_…)."""
    path = Path(tempfile.mkdtemp(prefix="demo-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(110)
def test_demo_enrolls_survives_a_broker_cut_and_stops_cleanly(tmp_path: Path, short_dir: Path) -> None:
    demo_dir = short_dir / "demo"
    argv = [sys.executable, "-m", "demo", "--duration", "40", "--cut-after", "10", "--cut-for", "10"]
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
    assert "link down: the demo cut the broker" in text, where  # the demo's cut, named as such
    assert "Unspecified error" not in text, where  # not paho's reason code for it
    # every progress line's counters agree: what is not stored at the centre is in the backlog
    progress = [tuple(map(int, m.groups())) for m in map(PROGRESS.search, lines) if m]
    assert len(progress) >= 5, where
    for enrolled, backlog, stored in progress:
        assert enrolled - backlog <= stored <= enrolled, f"{(enrolled, backlog, stored)}{where}"
    assert "\x1b[" not in text  # no live view (escape codes) without a terminal
    # nothing left running: no process names the demo's directory any more
    assert _processes_naming(str(demo_dir)) == []


@pytest.mark.timeout(90)
def test_without_a_terminal_it_says_first_that_it_stops_by_itself(tmp_path: Path, short_dir: Path) -> None:
    """No --duration and no terminal: the first line says it stops after 60 s. SIGTERM while
    it starts up stops it cleanly at once, with nothing left running."""
    demo_dir = short_dir / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "demo", "--dir", str(demo_dir)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        first, second = proc.stdout.readline(), proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)  # after the second line: its signal handlers are in place
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    where = f"\nstdout:\n{first}{second}{out[-3000:]}\nstderr:\n{err[-2000:]}"
    assert first.startswith("demo: no terminal"), where
    assert f"stops by itself after {DEFAULT_DURATION_S:g} s" in first, where
    assert second.startswith("e-KTP recorder kit demo: data in"), where
    assert proc.returncode == 0, where
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["ok"] is True and summary["enrolled"] == 0, where
    assert _processes_naming(str(demo_dir)) == []


@pytest.mark.parametrize(
    ("asked", "terminal", "runs"),
    [
        (None, True, None),  # on a terminal: until Ctrl-C
        (None, False, DEFAULT_DURATION_S),  # without one: nobody can press Ctrl-C
        (30.0, False, 30.0),
        (30.0, True, 30.0),
        (0.0, False, None),  # --duration 0: until stopped, even without a terminal
    ],
)
def test_how_long_the_demo_runs(asked: float | None, terminal: bool, runs: float | None) -> None:
    duration, note = run_length(asked, terminal=terminal)
    assert duration == runs
    assert bool(note) == (asked is None and not terminal)
