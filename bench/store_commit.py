"""Outbox.commit against a raw sqlite3 insert with the same pragmas, in the same run.

Both sides: WAL, synchronous=FULL, one transaction per ~400 KB packet, on the same
disk; the two are interleaved packet by packet so drift in the disk's speed hits both.
The last line printed is a JSON object of the figures. Goal: commit_ratio <= 1.2.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.outbox import Outbox

PACKET_BYTES = 400_000


@dataclass(frozen=True, slots=True)
class BenchPacket:
    packet_id: str
    created_at: str
    data: bytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="packets per side (default 200)")
    parser.add_argument("--size", type=int, default=PACKET_BYTES, help="packet bytes (default 400000)")
    parser.add_argument("--dir", default=None, help="where to put the databases (default: a temp dir)")
    args = parser.parse_args()

    payloads = [os.urandom(args.size) for _ in range(8)]  # varied bytes, little memory
    with tempfile.TemporaryDirectory(prefix="ektp-bench-", dir=args.dir) as tmp:
        outbox = Outbox(Path(tmp) / "outbox.db")
        raw = sqlite3.connect(Path(tmp) / "raw.db", isolation_level=None)
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("PRAGMA synchronous=FULL")
        raw.execute("CREATE TABLE packets (seq INTEGER PRIMARY KEY, packet_id TEXT, data BLOB)")
        outbox_s: list[float] = []
        raw_s: list[float] = []
        try:
            for i in range(args.n):
                data = payloads[i % len(payloads)]
                packet = BenchPacket(str(uuid.uuid4()), "2026-11-27T10:00:00Z", data)
                started = time.perf_counter()
                outbox.commit(_returning(packet))
                outbox_s.append(time.perf_counter() - started)

                started = time.perf_counter()
                raw.execute("BEGIN IMMEDIATE")
                raw.execute(
                    "INSERT INTO packets (seq, packet_id, data) VALUES (?, ?, ?)",
                    (i + 1, packet.packet_id, data),
                )
                raw.execute("COMMIT")
                raw_s.append(time.perf_counter() - started)
        finally:
            outbox.close()
            raw.close()

    outbox_ms = statistics.median(outbox_s) * 1000
    raw_ms = statistics.median(raw_s) * 1000
    ratio = outbox_ms / raw_ms
    print(f"packets: {args.n} x {args.size} bytes, WAL + synchronous=FULL, one transaction each")
    print(f"outbox commit median: {outbox_ms:.3f} ms (p90 {_p90(outbox_s) * 1000:.3f} ms)")
    print(f"raw sqlite3 median:   {raw_ms:.3f} ms (p90 {_p90(raw_s) * 1000:.3f} ms)")
    print(f"ratio: {ratio:.3f} (goal <= 1.2)")
    print(
        json.dumps(
            {
                "commit_ratio": round(ratio, 3),
                "outbox_median_ms": round(outbox_ms, 3),
                "raw_median_ms": round(raw_ms, 3),
                "n": args.n,
                "packet_bytes": args.size,
            }
        )
    )
    return 0


def _returning(packet: BenchPacket) -> Callable[[int], BenchPacket]:
    return lambda seq: packet


def _p90(samples: list[float]) -> float:
    return sorted(samples)[int(len(samples) * 0.9) - 1]


if __name__ == "__main__":
    sys.exit(main())
