"""kill -9 at random moments: every printed receipt survives, intact, in seq order, no gaps.

(kill -9 keeps the page cache: what a power cut would lose is checked in
tests/test_outbox_power_loss.py; the time a kill and recovery round takes is measured in
bench/timings.py, not asserted here.)"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.outbox import Outbox
from tests.outbox_child import key_from_hex, verify

ROOT = Path(__file__).resolve().parent.parent
SEED = 20261127
KILLS = 60
KEY_HEX = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
READY_TIMEOUT_S = 20.0


def _run_and_kill(db: Path, seed: int, rng: random.Random, stderr_path: Path) -> list[str]:
    """Start the child, SIGKILL it at a random moment, reap it; return its complete stdout lines."""
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.outbox_child", str(db), str(seed), KEY_HEX],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        assert proc.stdout is not None
        lines: list[bytes] = []
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0.0, 0.15))  # may land in start-up or the open's recovery
        else:
            first = proc.stdout.readline()
            assert first == b"ready\n", f"child did not start: {first!r} {stderr_path.read_text()}"
            lines.append(first)
            time.sleep(rng.uniform(0.0, 0.12))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        rest = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, f"child exited by itself: {stderr_path.read_text()}"
    text = b"".join(lines) + rest
    return [line.decode() for line in text.split(b"\n")[:-1]]  # a torn last line is not a receipt


def _audit_rows(db: Path) -> list[tuple[int, str, str]]:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return conn.execute("SELECT seq, packet_id, state FROM packets ORDER BY seq").fetchall()
    finally:
        conn.close()


def _check_receipt(
    outbox: Outbox, public: Ed25519PublicKey, packet_id: str, seq: int, delivered: set[str]
) -> None:
    info = outbox.info(packet_id)
    assert info is not None, f"printed receipt {packet_id} seq={seq} is missing"
    assert info.seq == seq
    data = outbox.get(packet_id)
    if packet_id in delivered or info.state == "delivered":
        assert info.state == "delivered" and data is None
        return
    assert info.state == "pending"  # everything sent is resumed as pending on open
    assert data is not None and len(data) == info.bytes
    got_seq, got_id, _ = verify(public, data)
    assert (got_seq, got_id) == (seq, packet_id)


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_no_receipt(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    public = key_from_hex(KEY_HEX).public_key()
    rng = random.Random(SEED)
    receipts: dict[str, int] = {}
    delivered: set[str] = set()
    for round_no in range(KILLS):
        lines = _run_and_kill(db, SEED + round_no, rng, tmp_path / "child.err")
        fresh: dict[str, int] = {}
        for line in lines:
            kind, _, rest = line.partition(" ")
            if kind == "C":
                printed_id, printed_seq = rest.split()
                assert printed_id not in receipts and printed_id not in fresh, "a receipt printed twice"
                fresh[printed_id] = int(printed_seq)
            elif kind == "D":
                delivered.add(rest)
        receipts.update(fresh)

        with Outbox(db) as outbox:  # recovery runs here, after every kill
            stats = outbox.stats()
            for packet_id, seq in fresh.items():
                _check_receipt(outbox, public, packet_id, seq, delivered)
        assert not list(tmp_path.glob("outbox.db.corrupt-*")), "a kill made the store look corrupt"
        rows = _audit_rows(db)
        seqs = [r[0] for r in rows]
        assert seqs == list(range(1, len(rows) + 1)), "a gap or a reused seq"
        assert len({r[1] for r in rows}) == len(rows), "a duplicated packet id"
        assert stats.last_seq == len(rows) == stats.total_committed
        assert stats.pending + stats.sent + stats.delivered + stats.rejected == len(rows)
        assert stats.sent == 0
        by_id = {r[1]: r[0] for r in rows}
        assert all(by_id[p] == s for p, s in receipts.items())

    # Every receipt of every round, once more, at the end.
    with Outbox(db) as outbox:
        for packet_id, seq in sorted(receipts.items(), key=lambda kv: kv[1]):
            _check_receipt(outbox, public, packet_id, seq, delivered)
    assert len(receipts) > KILLS, "the child hardly committed anything; the kills proved little"
    assert delivered, "no frees were exercised"
    print(f"{len(receipts)} receipts, {len(delivered)} delivered, {KILLS} kills")
