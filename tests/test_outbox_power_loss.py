"""Power loss: a receipt goes out only after the packet's WAL frames are on the disk.

SIGKILL cannot tell ``synchronous=FULL`` from ``OFF`` (the page cache survives a killed
process), so these tests watch the system calls instead: strace follows a process that
commits and prints (or sends) each receipt, and every receipt must come after an
``fsync``/``fdatasync`` of the outbox's ``-wal`` file that follows the last write to it;
the WAL's directory entry must be synced before the first receipt too. This is the order
a power cut respects: what was not synced may be gone, what was printed must not be.

A block-level crash simulation (dm-flakey, dm-log-writes) would go further, but this
kernel has no device-mapper; the syscall order is what a power cut relies on.

Two processes are watched: the outbox child of the crash test (``C <id> <seq>`` lines on
stdout) and the service itself (`ektp-agent run --simulate`), whose receipts leave on the
local API socket to `ektp-agent enroll`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.api import request
from tests.agentkit import Kit, script
from tests.netkit import Broker

ROOT = Path(__file__).resolve().parent.parent
KEY_HEX = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
TRACED = "openat,write,pwrite64,pwritev,pwritev2,writev,sendto,sendmsg,fsync,fdatasync"

# "1234 name(args) = ret", "1234 name(args <unfinished ...>", "1234 <... name resumed>...) = ret"
_CALL = re.compile(r"^(\d+)\s+(\w+)\((.*)$")
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>(.*)$")
_FD = re.compile(r"^(\d+)<([^>]*)>")


def strace_binary() -> str:
    found = shutil.which("strace")
    if not found:
        pytest.fail("strace is not installed: `make setup` installs it (apt-get install strace)")
    return found


def strace_cmd(log: Path) -> list[str]:
    """strace following threads and children, fds shown with their paths (-yy: sockets too)."""
    return [
        strace_binary(),
        "-f",
        "-yy",
        "--seccomp-bpf",
        "-e",
        f"trace={TRACED}",
        "-s",
        "256",
        "-o",
        str(log),
    ]


@dataclass
class Order:
    """What the trace shows, in the order the kernel saw it."""

    receipts: list[str] = field(default_factory=list)  # receipts seen going out
    early: list[str] = field(default_factory=list)  # receipts out while WAL bytes were unsynced
    wal_writes: int = 0
    wal_syncs: int = 0
    dir_synced: bool = False
    wal_created: bool = False
    before_dir_sync: list[str] = field(default_factory=list)  # receipts before the WAL's directory was synced


def check_order(trace: str, wal: Path, is_receipt: re.Pattern[str]) -> Order:
    """Replay the trace: a write to the WAL makes it dirty, a completed sync of it makes it clean;
    a write whose fd and bytes match ``is_receipt`` is a receipt and must find it clean.

    A call split by another thread (``<unfinished ...>``) counts when it completes (for a sync)
    or when it starts (for a write): the strict reading."""
    order = Order()
    dirty = False
    wal_name, directory = str(wal), str(wal.parent)
    pending: dict[tuple[str, str], str] = {}  # (pid, call) -> its arguments, while unfinished
    for line in trace.splitlines():
        m = _RESUMED.match(line)
        if m:
            pid, name, rest = m.groups()
            args = pending.pop((pid, name), "")
            started, done, ok = False, True, rest.rstrip().endswith("= 0")
        else:
            m = _CALL.match(line)
            if not m:
                continue
            pid, name, args = m.groups()
            unfinished = args.endswith("<unfinished ...>")
            if unfinished:
                pending[(pid, name)] = args
            started, done, ok = True, not unfinished, args.rstrip().endswith("= 0")
        fd = _FD.match(args)
        target = fd.group(2) if fd else ""
        if name == "openat" and started and f'"{wal_name}"' in args and "O_CREAT" in args:
            order.wal_created = True
        if name in ("fsync", "fdatasync"):
            if done and ok and target == wal_name:
                dirty = False
                order.wal_syncs += 1
            elif done and ok and target == directory and order.wal_created:
                order.dir_synced = True
            continue
        if not started:
            continue
        if target == wal_name and name.startswith(("write", "pwrite")):
            dirty = True
            order.wal_writes += 1
        elif name in ("write", "writev", "sendto", "sendmsg") and is_receipt.search(args):
            receipt = is_receipt.search(args).group(1)  # type: ignore[union-attr]
            order.receipts.append(receipt)
            if dirty:
                order.early.append(receipt)
            if not order.dir_synced:
                order.before_dir_sync.append(receipt)
    return order


def assert_synced_before_every_receipt(order: Order, want: int) -> None:
    assert len(order.receipts) == want, f"saw {len(order.receipts)} receipts in the trace, expected {want}"
    assert order.wal_writes >= want, "no writes to the WAL: the trace or the store is not what it seems"
    assert order.early == [], (
        f"{len(order.early)} of {len(order.receipts)} receipts went out before their WAL frames were "
        f"synced ({order.wal_syncs} WAL syncs in all): a power cut there loses a receipted packet"
    )
    assert order.wal_created and order.before_dir_sync == [], (
        "a receipt went out before the directory entry of the new WAL file was synced"
    )


def test_the_outbox_syncs_the_wal_before_each_receipt(tmp_path: Path) -> None:
    """The outbox child of the crash test commits 40 packets (frees, requeues and the
    non-synced mark_sent in between) and prints a receipt line after each commit returns."""
    log, db = tmp_path / "strace.log", tmp_path / "outbox.db"
    p = subprocess.run(
        [*strace_cmd(log), sys.executable, "-m", "tests.outbox_child", str(db), "7", KEY_HEX, "40"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    printed = [line for line in p.stdout.splitlines() if line.startswith("C ")]
    assert len(printed) == 40
    order = check_order(
        log.read_text(errors="replace"), Path(f"{db}-wal"), re.compile(r'^1<[^>]*>, "C (\S+) ')
    )
    assert_synced_before_every_receipt(order, 40)
    assert order.receipts == [line.split()[1] for line in printed]


def test_the_service_syncs_the_wal_before_it_answers_enroll(tmp_path: Path) -> None:
    """`ektp-agent run --simulate` under strace answers three enrollments on its local API
    socket, each receipt only after the WAL frames are on the disk."""
    broker = Broker(tmp_path / "broker")  # not started: the link stays down, nothing drains
    k = Kit(tmp_path / "kit", broker.port)
    log = tmp_path / "strace.log"
    agent: subprocess.Popen[bytes] | None = None
    try:
        k.setup_keys()
        with open(k.root / "agent.log", "ab") as out:
            agent = subprocess.Popen(
                [*strace_cmd(log), script("ektp-agent"), "--config", str(k.agent_conf), "run", "--simulate"],
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        k.procs.append(agent)
        deadline = time.monotonic() + 60
        while k.agent_cli("status", "--json").stdout.find('"service": "running"') < 0:
            assert agent.poll() is None, k.log("agent")[-2000:]
            assert time.monotonic() < deadline, "the service did not come up under strace"
            time.sleep(0.3)
        # the generator's records (``direct``): the capture is not what is watched here
        answers = request(k.data_dir / "api.sock", "enroll", synthetic=True, direct=True, count=3, seed=11)
        receipts = [str(item["receipt"]["packet_id"]) for item in answers]
        assert len(receipts) == 3
    finally:
        if agent is not None and agent.poll() is None:
            os.killpg(agent.pid, signal.SIGTERM)  # strace, the service and its simulator
            agent.wait(30)
        k.close()
    order = check_order(
        log.read_text(errors="replace"),
        k.data_dir / "outbox.db-wal",
        re.compile(
            r'^\d+<UNIX-STREAM:\[.*?api\.sock"\]>, "\{\\"receipt\\": \{\\"packet_id\\": \\"([0-9a-f-]+)'
        ),
    )
    assert_synced_before_every_receipt(order, 3)
    assert order.receipts == receipts
