"""The Parigi scenario: a district office offline for three weeks, then the link returns.

7,000 synthetic enrollments (~250 KB each, ~1.8 GB) are committed through the running
service's local API at full speed while the broker is unreachable (``"direct": true``:
the generator's records, not the peripherals, so the figure is the store's, not the
simulator's); the kiosk is rebooted twice during the outage (SIGTERM, start again);
then the broker and the centre come up and the backlog drains by itself.

Figures: commit time and rate; the agent's RSS (VmRSS sampled every 0.2 s, and the
kernel's VmHWM) during the outage and the drain; cold start to READY=1 (systemd's
notify protocol, read from a real datagram socket) with the full backlog; the drain's
time and rate against raw paho QoS 1 publishing of the same number of same-size
payloads to the same broker in the same run; and the exactly-once check at the centre
(n packets, each once, seq 1..n without a gap). The last line is a JSON object.

    .venv/bin/python bench/parigi.py            # 7,000 enrollments, a few minutes
    .venv/bin/python bench/parigi.py --n 500    # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.api import call, request
from tests.agentkit import Kit
from tests.netkit import Broker

BATCH = 250  # enrollments per API request


class RssSampler:
    """VmRSS of one process every ``period`` seconds, and its VmHWM."""

    def __init__(self, pid: int, period: float = 0.2) -> None:
        self.pid, self.period = pid, period
        self.samples: list[float] = []
        self.hwm_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _read(self) -> tuple[float, float] | None:
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            got = self._read()
            if got:
                self.samples.append(got[0])
                self.hwm_mb = max(self.hwm_mb, got[1])

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        s = self.samples or [0.0]
        head = statistics.median(s[: max(1, len(s) // 10)])
        tail = statistics.median(s[-max(1, len(s) // 10) :])
        return {
            "peak_mb": round(max(max(s), self.hwm_mb), 1),
            "start_mb": round(head, 1),
            "end_mb": round(tail, 1),
        }


class Agent:
    """`ektp-agent run --simulate` with a notify socket, so READY is timed as systemd sees it."""

    def __init__(self, kit: Kit, work: Path) -> None:
        self.kit = kit
        self.notify_path = work / f"notify-{time.monotonic_ns()}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.notify_path))
        self.sock.settimeout(0.2)
        started = time.monotonic()
        self.proc = kit.spawn(
            "ektp-agent", "run", "--simulate", name="agent", env={"NOTIFY_SOCKET": str(self.notify_path)}
        )
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"agent exited {self.proc.returncode}: {kit.log('agent')[-1500:]}")
            try:
                if "READY=1" in self.sock.recv(4096).decode():
                    break
            except TimeoutError:
                pass
            if time.monotonic() - started > 120:
                raise SystemExit("agent never sent READY=1")
        self.ready_s = time.monotonic() - started
        self.rss = RssSampler(self.proc.pid)

    def stop(self) -> dict[str, float]:
        rss = self.rss.stop()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.sock.close()
        self.notify_path.unlink(missing_ok=True)
        return rss


def enroll(kit: Kit, n: int, first_seed: int) -> float:
    started = time.monotonic()
    done = 0
    while done < n:
        count = min(BATCH, n - done)
        got = sum(
            1
            for _ in request(
                kit.agent_conf.parent / "data" / "api.sock",
                "enroll",
                synthetic=True,
                direct=True,
                count=count,
                seed=first_seed + done,
                timeout=600,
            )
        )
        assert got == count, f"{got} receipts for {count}"
        done += count
    return time.monotonic() - started


def undelivered(kit: Kit) -> int:
    return int(call(kit.data_dir / "api.sock", "sync")[0]["undelivered"])


def raw_paho_rate(port: int, n: int, size: int, window: int) -> float:
    """Packets/s of bare QoS 1 publishing of n payloads of ``size`` bytes, ``window`` in flight."""
    done = threading.Semaphore(0)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="parigi-baseline", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(window)
    client.max_queued_messages_set(window)
    client.on_publish = lambda c, u, mid, rc, p: done.release()
    client.connect("127.0.0.1", port)
    client.loop_start()
    payload = os.urandom(size)
    started = time.monotonic()
    for i in range(n):
        if i >= window:
            done.acquire()
        client.publish("bench/parigi/raw", payload, qos=1)
    for _ in range(min(n, window)):
        done.acquire()
    elapsed = time.monotonic() - started
    client.disconnect()
    client.loop_stop()
    return n / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=7000, help="enrollments during the outage (default 7000)")
    ap.add_argument("--reboots", type=int, default=2, help="service restarts during the outage (default 2)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ektp-parigi-"))
    broker = Broker(work / "broker", extra_config="max_queued_messages 100000\n")
    kit = Kit(work / "kit", broker.port, health_s=5.0, extra_agent="[store]\nmax_bytes = 8000000000\n")
    figures: dict[str, Any] = {"n": args.n}
    agent: Agent | None = None
    try:
        kit.setup_keys()
        # -- the outage: no broker
        agent = Agent(kit, work)
        figures["ready_empty_s"] = round(agent.ready_s, 3)
        per_leg = [args.n // (args.reboots + 1)] * (args.reboots + 1)
        per_leg[-1] += args.n - sum(per_leg)
        commit_s, rss_outage, seed = 0.0, [], 1
        for leg, count in enumerate(per_leg):
            commit_s += enroll(kit, count, seed)
            seed += count
            print(f"outage: {seed - 1} enrollments committed ({commit_s:.1f} s)", flush=True)
            rss_outage.append(agent.stop())
            agent = Agent(kit, work)
            if leg < args.reboots:
                print(f"reboot {leg + 1}: READY after {agent.ready_s:.2f} s", flush=True)
        figures["ready_full_backlog_s"] = round(agent.ready_s, 3)
        figures["commit_s"] = round(commit_s, 1)
        figures["commit_per_s"] = round(args.n / commit_s, 1)
        status = call(kit.data_dir / "api.sock", "status")[0]
        backlog = status["queue"]
        figures["backlog_bytes"] = backlog["pending_bytes"]
        assert backlog["pending"] == args.n, backlog
        mean_size = backlog["pending_bytes"] // args.n
        # -- the link returns
        broker.start()
        kit.start_central()
        started = time.monotonic()
        while undelivered(kit) > 0:
            time.sleep(0.5)
            if time.monotonic() - started > 3600:
                raise SystemExit("the drain did not finish within an hour")
        drain_s = time.monotonic() - started
        rss_drain = agent.stop()
        agent = None
        figures["drain_s"] = round(drain_s, 1)
        figures["drain_per_s"] = round(args.n / drain_s, 1)
        figures["drain_mb_per_s"] = round(backlog["pending_bytes"] / drain_s / 1e6, 2)
        raw = raw_paho_rate(broker.port, args.n, mean_size, 16)
        figures["raw_paho_per_s"] = round(raw, 1)
        figures["drain_vs_raw_paho"] = round(args.n / drain_s / raw, 3)
        figures["rss_outage_peak_mb"] = max(r["peak_mb"] for r in rss_outage)
        figures["rss_drain_peak_mb"] = rss_drain["peak_mb"]
        figures["rss_peak_mb"] = max(figures["rss_outage_peak_mb"], figures["rss_drain_peak_mb"])
        first = rss_outage[0]["start_mb"]
        figures["rss_end_over_start"] = round(rss_drain["end_mb"] / first, 3) if first else None
        # -- exactly once at the centre
        rows = kit.central_packets()
        ids = [r["packet_id"] for r in rows]
        seqs = sorted(r["seq"] for r in rows)
        figures["central_packets"] = len(rows)
        figures["duplicated"] = len(ids) - len(set(ids))
        figures["seq_gaps"] = sum(1 for a, b in zip([0, *seqs], seqs, strict=False) if b != a + 1)
        figures["exactly_once"] = (
            len(rows) == args.n and figures["duplicated"] == 0 and seqs == list(range(1, args.n + 1))
        )
        print(
            f"commit {figures['commit_per_s']}/s; READY with full backlog {figures['ready_full_backlog_s']} s; "
            f"drain {figures['drain_s']} s ({figures['drain_mb_per_s']} MB/s, {figures['drain_vs_raw_paho']} x raw paho); "
            f"RSS peak {figures['rss_peak_mb']} MB, end/start {figures['rss_end_over_start']}; "
            f"exactly once: {figures['exactly_once']}"
        )
    finally:
        if agent is not None:
            agent.stop()
        kit.close()
        broker.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures))
    return 0 if figures.get("exactly_once") else 1


if __name__ == "__main__":
    sys.exit(main())
