"""Suite-wide fixtures: a check that every test leaves no threads, child processes or
open file descriptors (ptys, sockets) behind."""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Iterator

import pytest

LEFTOVER_GRACE_S = 3.0

pytest_plugins = ["tests.agentkit"]  # the ``kit`` fixture: a configured kiosk and centre with their broker

# The Debian packages built, installed, upgraded and purged (minutes, root only): not in a
# plain `pytest` run nor in `make test` (tests/test_deb.py checks the packaging there without
# a build); `make deb-test`, which `make bench` calls, runs them by naming the folder.
collect_ignore = ["deb_cycle"]


def _fds() -> set[int]:
    try:
        return {int(n) for n in os.listdir("/proc/self/fd")}
    except FileNotFoundError:  # not Linux
        return set()


def _children() -> set[int]:
    try:
        with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
            return {int(p) for p in f.read().split()}
    except FileNotFoundError:
        return set()


def _fd_target(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


@pytest.fixture(autouse=True)
def no_leftovers(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves threads, processes or descriptors behind (after a short grace)."""
    threads_before = set(threading.enumerate())
    fds_before = _fds()
    children_before = _children()
    yield
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while True:
        gc.collect()  # a dropped paho client closes its wake-up socket pair only when collected
        threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        fds = {
            fd for fd in _fds() - fds_before if not _fd_target(fd).startswith(("/dev/urandom", "anon_inode"))
        }
        children = _children() - children_before
        if not (threads or fds or children) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    problems = []
    if threads:
        problems.append(f"threads left running: {[t.name for t in threads]}")
    if fds:
        problems.append(f"file descriptors left open: {sorted((fd, _fd_target(fd)) for fd in fds)}")
    if children:
        problems.append(f"child processes left running: {sorted(children)}")
    if problems:
        pytest.fail(f"{request.node.nodeid} leaked: " + "; ".join(problems), pytrace=False)
