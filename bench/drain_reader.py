"""Peak memory of the drain reader over a big backlog (default 7,000 x 300 KB, about 2 GB).

Builds the backlog through Outbox.commit in a temp dir (deleted afterwards), reopens
the store (timing the open: quick_check and recovery), then streams every packet with
iter_pending(window). Peak RSS is read from /proc/self/status (VmHWM, reset through
/proc/self/clear_refs before streaming) and getrusage. The last line printed is a JSON
object of the figures. Goal: peak RSS while streaming <= 80 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.outbox import Outbox

PACKET_BYTES = 300_000
_HEADER = struct.Struct(">Q16s")


@dataclass(frozen=True, slots=True)
class BenchPacket:
    packet_id: str
    created_at: str
    data: bytes


def _builder(packet_id: str, body: bytes) -> Callable[[int], BenchPacket]:
    """A distinct header (seq, id) in front of the shared body."""
    raw_id = uuid.UUID(packet_id).bytes
    return lambda seq: BenchPacket(packet_id, "2026-11-27T10:00:00Z", _HEADER.pack(seq, raw_id) + body)


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=7000, help="packets in the backlog (default 7000)")
    parser.add_argument("--size", type=int, default=PACKET_BYTES, help="packet bytes (default 300000)")
    parser.add_argument("--window", type=int, default=16, help="packets per read (default 16)")
    parser.add_argument("--dir", default=None, help="where to build the backlog (default: a temp dir)")
    args = parser.parse_args()

    need = args.n * args.size * 2.2  # database plus WAL headroom
    free = shutil.disk_usage(args.dir or tempfile.gettempdir()).free
    if free < need:
        print(f"not enough disk: need about {need / 1e9:.1f} GB, {free / 1e9:.1f} GB free", file=sys.stderr)
        return 1

    body = os.urandom(args.size - _HEADER.size)  # one body, a distinct header per packet
    with tempfile.TemporaryDirectory(prefix="ektp-drain-", dir=args.dir) as tmp:
        path = Path(tmp) / "outbox.db"
        started = time.perf_counter()
        with Outbox(path) as outbox:
            for _ in range(args.n):
                packet_id = str(uuid.uuid4())
                outbox.commit(_builder(packet_id, body))
        build_s = time.perf_counter() - started
        db_bytes = path.stat().st_size

        rss_before = _status_mb("VmRSS")
        peak_reset = _reset_peak()
        started = time.perf_counter()
        outbox = Outbox(path)
        open_s = time.perf_counter() - started
        count = total = 0
        last_seq = 0
        started = time.perf_counter()
        try:
            for packet in outbox.iter_pending(window=args.window):
                seq, _ = _HEADER.unpack_from(packet.data)
                if seq != packet.seq or packet.seq <= last_seq:
                    raise SystemExit(f"out of order or damaged at seq {packet.seq}")
                last_seq = packet.seq
                count += 1
                total += len(packet.data)
        finally:
            outbox.close()
        stream_s = time.perf_counter() - started
        hwm = _status_mb("VmHWM")
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    if count != args.n:
        raise SystemExit(f"streamed {count} packets, expected {args.n}")
    print(
        f"backlog: {args.n} x {args.size} bytes = {db_bytes / 1e9:.2f} GB on disk, built in {build_s:.1f} s"
    )
    print(f"open (quick_check + resume) of the full store: {open_s:.2f} s")
    print(f"streamed {count} packets ({total / 1e9:.2f} GB) in {stream_s:.1f} s, window {args.window}")
    print(f"RSS before streaming: {rss_before:.1f} MB; peak while opening+streaming (VmHWM): {hwm:.1f} MB")
    print(f"growth: {hwm - rss_before:.1f} MB; process peak (ru_maxrss, whole run): {maxrss_mb:.1f} MB")
    print(
        json.dumps(
            {
                "n": args.n,
                "packet_bytes": args.size,
                "window": args.window,
                "db_gb": round(db_bytes / 1e9, 3),
                "build_s": round(build_s, 1),
                "open_s": round(open_s, 2),
                "stream_s": round(stream_s, 1),
                "rss_before_mb": round(rss_before, 1),
                "stream_peak_rss_mb": round(hwm, 1) if peak_reset else None,
                "rss_growth_mb": round(hwm - rss_before, 1) if peak_reset else None,
                "process_peak_rss_mb": round(maxrss_mb, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
