"""The time limits that left the correctness tests (issue 17), measured here instead, each
against a baseline of the same run:

- ``stats``: ``Outbox.stats()`` with 7,000 packets (4,000 pending, 3,000 delivered) against
  the same call on an outbox of 10 packets. The store keeps counters, so the ratio should be
  about 1 (it once was a scan of the table; tests/test_outbox.py asserted < 2 ms).
- ``stop``: ``Link.stop()`` while the broker accepts TCP but never answers CONNECT, against
  the CONNACK timeout (10 s) it must not wait out (tests/test_link_robustness.py asserted
  < 2 s; the test now makes the timeout and the keepalive an hour and only checks the stop
  finishes).
- ``crash``: one round of tests/test_outbox_crash.py (start the child, SIGKILL it, open the
  outbox with its recovery, check every receipt), and the recovering open against an open
  of the same file after a clean close (the test asserted < 40 s for 60 rounds).

    .venv/bin/python bench/timings.py           # about a minute
    .venv/bin/python bench/timings.py --rounds 60

The last line printed is a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.outbox import Outbox
from tests.linkkit import Keys, Kiosk, wait_for
from tests.netkit import Broker, TcpProxy
from tests.outbox_child import key_from_hex
from tests.test_outbox_crash import KEY_HEX, SEED, _check_receipt, _run_and_kill


@dataclass(frozen=True, slots=True)
class FakePacket:
    packet_id: str
    created_at: str
    data: bytes


def filled(path: Path, n: int, delivered: int) -> Outbox:
    ob = Outbox(path)
    for _ in range(n):
        ob.commit(lambda seq: FakePacket(str(uuid.uuid4()), "2026-01-01T00:00:00Z", b"p" * 16))
    ob.mark_delivered([q.packet_id for q in ob.undelivered()[:delivered]])
    return ob


def per_call(fn: object, calls: int) -> float:
    assert callable(fn)
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls


def bench_stats(root: Path, calls: int) -> dict[str, float]:
    big, small = filled(root / "big.db", 7000, 3000), filled(root / "small.db", 10, 3)
    try:
        s = big.stats()
        assert (s.pending, s.delivered) == (4000, 3000)
        # interleaved, so that drift of the machine hits both
        big_t, small_t = [], []
        for _ in range(5):
            big_t.append(per_call(big.stats, calls))
            small_t.append(per_call(small.stats, calls))
    finally:
        big.close()
        small.close()
    b, s_ = statistics.median(big_t), statistics.median(small_t)
    return {
        "stats_ms_7000": round(b * 1000, 3),
        "stats_ms_10": round(s_ * 1000, 3),
        "stats_ratio": round(b / s_, 2),
    }


def bench_stop(root: Path, repeats: int) -> dict[str, float]:
    from agent.link.session import CONNECT_TIMEOUT_S

    broker = Broker(root / "broker")
    broker.start()
    times = []
    try:
        for i in range(repeats):
            keys = Keys(root / f"k{i}", "320715-01")
            proxy = TcpProxy(broker.port)
            proxy.stall(True)  # TCP accepted, CONNECT never answered
            try:
                kiosk = Kiosk(root / f"k{i}" / "kiosk", proxy.port, keys)
                wait_for(lambda p=proxy: p.accepted >= 1, 10, "the kiosk's TCP connection")  # type: ignore[misc]
                time.sleep(0.2)  # well inside the wait for CONNACK
                started = time.perf_counter()
                kiosk.stop()
                times.append(time.perf_counter() - started)
            finally:
                proxy.close()
    finally:
        broker.stop()
    worst = max(times)
    return {
        "stop_s_median": round(statistics.median(times), 3),
        "stop_s_worst": round(worst, 3),
        "connack_timeout_s": CONNECT_TIMEOUT_S,
        "stop_ratio": round(worst / CONNECT_TIMEOUT_S, 3),
    }


def bench_crash(root: Path, rounds: int) -> dict[str, float]:
    db = root / "outbox.db"
    public = key_from_hex(KEY_HEX).public_key()
    rng = random.Random(SEED)
    round_s, recover_s, clean_s = [], [], []
    receipts: dict[str, int] = {}
    for n in range(rounds):
        started = time.perf_counter()
        lines = _run_and_kill(db, SEED + n, rng, root / "child.err")
        fresh = {
            line.split()[1]: int(line.split()[2])
            for line in lines
            if line.startswith("C ") and len(line.split()) == 3
        }
        receipts.update(fresh)
        t = time.perf_counter()
        with Outbox(db) as outbox:  # recovery after the kill
            recover_s.append(time.perf_counter() - t)
            for packet_id, seq in fresh.items():
                _check_receipt(outbox, public, packet_id, seq, set())
        round_s.append(time.perf_counter() - started)
        t = time.perf_counter()
        Outbox(db).close()  # the same file, after a clean close
        clean_s.append(time.perf_counter() - t)
    r, c = statistics.median(recover_s), statistics.median(clean_s)
    return {
        "crash_rounds": rounds,
        "crash_receipts": len(receipts),
        "crash_round_s_median": round(statistics.median(round_s), 3),
        "crash_rounds_s_total": round(sum(round_s), 1),
        "recovering_open_ms": round(r * 1000, 2),
        "clean_open_ms": round(c * 1000, 2),
        "recovery_ratio": round(r / c, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="stats() calls per sample (default 200)")
    parser.add_argument("--stops", type=int, default=5, help="link stops measured (default 5)")
    parser.add_argument("--rounds", type=int, default=20, help="kill rounds (default 20; the test runs 60)")
    args = parser.parse_args()
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ektp-timings-") as tmp:
        root = Path(tmp)
        (root / "stats").mkdir()
        (root / "stop").mkdir()
        (root / "crash").mkdir()
        figures.update(bench_stats(root / "stats", args.calls))
        print(f"stats(): {figures['stats_ms_7000']} ms at 7000 packets, {figures['stats_ms_10']} ms at 10")
        figures.update(bench_stop(root / "stop", args.stops))
        print(
            f"stop while waiting for CONNACK: worst {figures['stop_s_worst']} s of a {figures['connack_timeout_s']} s timeout"
        )
        figures.update(bench_crash(root / "crash", args.rounds))
        print(
            f"crash round: {figures['crash_round_s_median']} s median; recovering open {figures['recovering_open_ms']} ms "
            f"vs clean open {figures['clean_open_ms']} ms"
        )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
