"""The drain over a constrained link: 2 Mbit/s, 300 ms RTT (a rural mobile uplink).

The broker and the centre run inside a network namespace this script creates, reached
over a veth pair whose both ends are shaped to 2 Mbit/s with a token bucket (tc tbf).
The kiosk (the real Link over a real outbox, in this process) reaches the broker through
a delay line on 127.0.0.1 that adds 150 ms each way. 200 packets (~250 KB each) are
committed, then the link is opened and the time until the centre has acknowledged all of
them is measured. Figure: goodput (packet bytes delivered per second) as a fraction of
the link rate. Goal >= 0.9.

This machine's kernel has no netem qdisc, so neither the delay nor the 1 % loss of the
issue can be made by tc: the delay is the userspace delay line, and there is no loss
(said in the JSON as "loss": "not emulated"). Without namespaces (not root, no iproute2)
the script falls back to a userspace proxy that both throttles and delays, and marks the
figure "shaping": "userspace-proxy".

    sudo .venv/bin/python bench/slow_link.py [--n 200] [--rate-mbit 2] [--rtt-ms 300]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from central.store import open_store
from tests.linkkit import Keys, Kiosk
from tests.netkit import free_port, mosquitto_binary
from wire.keys import public_path

NS_HOST, NS_PEER = "10.231.7.1", "10.231.7.2"  # inside our own namespace and veth only


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


class Namespace:
    """A namespace joined to the host by a veth pair shaped to ``rate_mbit`` both ways."""

    def __init__(self, rate_mbit: float) -> None:
        self.name = f"ektp-slow-{os.getpid()}"
        self.host_if, self.peer_if = f"eks{os.getpid() % 10000}h", f"eks{os.getpid() % 10000}p"
        sh("ip", "netns", "add", self.name)
        try:
            sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if)
            sh("ip", "link", "set", self.peer_if, "netns", self.name)
            sh("ip", "addr", "add", f"{NS_HOST}/30", "dev", self.host_if)
            sh("ip", "link", "set", self.host_if, "up")
            ns = ("ip", "netns", "exec", self.name)
            sh(*ns, "ip", "addr", "add", f"{NS_PEER}/30", "dev", self.peer_if)
            sh(*ns, "ip", "link", "set", self.peer_if, "up")
            sh(*ns, "ip", "link", "set", "lo", "up")
            tbf = ("tbf", "rate", f"{rate_mbit}mbit", "burst", "16kb", "latency", "2s")
            sh("tc", "qdisc", "add", "dev", self.host_if, "root", *tbf)
            sh(*ns, "tc", "qdisc", "add", "dev", self.peer_if, "root", *tbf)
        except BaseException:
            self.close()
            raise

    def exec(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


class DelayLine:
    """127.0.0.1:port -> target, each byte delayed ``one_way_s``; optionally rate-limited too."""

    def __init__(self, target: tuple[str, int], one_way_s: float, bytes_per_s: float | None = None) -> None:
        self.target, self.delay, self.rate = target, one_way_s, bytes_per_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.gate = threading.Event()  # closed: connections are refused (the outage)
        self.stop = threading.Event()
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.gate.is_set():
                conn.close()
                continue
            try:
                up = socket.create_connection(self.target, 5)
            except OSError:  # the broker is gone (the end of the run): the client retries
                conn.close()
                continue
            self.socks += [conn, up]
            for a, b in ((conn, up), (up, conn)):
                queue: collections.deque[tuple[float, bytes]] = collections.deque()
                cv = threading.Condition()
                threading.Thread(target=self._read, args=(a, queue, cv), daemon=True).start()
                threading.Thread(target=self._write, args=(b, queue, cv), daemon=True).start()

    def _read(
        self, s: socket.socket, queue: collections.deque[tuple[float, bytes]], cv: threading.Condition
    ) -> None:
        while True:
            try:
                data = s.recv(16384)
            except OSError:
                data = b""
            with cv:
                queue.append((time.monotonic() + self.delay, data))
                cv.notify()
            if not data:
                return

    def _write(
        self, s: socket.socket, queue: collections.deque[tuple[float, bytes]], cv: threading.Condition
    ) -> None:
        while True:
            with cv:
                while not queue:
                    cv.wait()
                due, data = queue.popleft()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_WR)
                return
            if self.rate:
                time.sleep(len(data) / self.rate)
            try:
                s.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        for s in self.socks:
            s.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--rate-mbit", type=float, default=2.0)
    ap.add_argument("--rtt-ms", type=float, default=300.0)
    ap.add_argument("--window", type=int, default=16)
    args = ap.parse_args()
    rate_bytes = args.rate_mbit * 1e6 / 8
    work = Path(tempfile.mkdtemp(prefix="ektp-slow-"))
    keys = Keys(work, "320715-01")
    port = free_port()
    ns: Namespace | None = None
    procs: list[subprocess.Popen[bytes]] = []
    shaping = "netns+veth+tbf, delay line"
    try:
        try:
            if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
                raise PermissionError("needs root, ip and tc")
            ns = Namespace(args.rate_mbit)
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"no namespace ({exc}); falling back to a throttling userspace proxy", flush=True)
            shaping = "userspace-proxy"
        conf = work / "mosquitto.conf"
        bind = NS_PEER if ns else "127.0.0.1"
        conf.write_text(
            f"listener {port} {bind}\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            if ns
            else f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        wrap = ns.exec if ns else (lambda *c: list(c))
        procs.append(subprocess.Popen(wrap(mosquitto_binary(), "-c", str(conf)), stderr=subprocess.DEVNULL))
        store = open_store(str(work / "central.db"))
        store.add_kiosk(keys.kiosk_id, public_path(keys.kiosk_path).read_bytes())
        store.close()
        cconf = work / "central.toml"
        cconf.write_text(
            f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n[store]\nurl = "{work / "central.db"}"\n'
            f'[keys]\ncentral_private_key = "{keys.central_path}"\n'
        )
        central = str(Path(sys.executable).parent / "ektp-central")
        with open(work / "central.log", "wb") as central_log:
            procs.append(subprocess.Popen(wrap(central, "--config", str(cconf), "run"), stderr=central_log))
        time.sleep(1.5)
        line = DelayLine(
            (bind, port), args.rtt_ms / 2000, None if ns else rate_bytes
        )  # the kiosk's side of the slow link
        kiosk = Kiosk(work / "kiosk", line.port, keys, window=args.window, ack_timeout_s=120)
        try:
            kiosk.commit(args.n)
            total = kiosk.stats().pending_bytes
            started = time.monotonic()
            line.gate.set()
            kiosk.loop.call_soon_threadsafe(kiosk.link.wake)
            while kiosk.stats().delivered < args.n:
                time.sleep(0.5)
                if time.monotonic() - started > 3600:
                    raise SystemExit("not delivered within an hour")
            elapsed = time.monotonic() - started
        finally:
            kiosk.stop()
            line.close()
        goodput = total / elapsed
        figures = {
            "n": args.n,
            "bytes": total,
            "rate_mbit": args.rate_mbit,
            "rtt_ms": args.rtt_ms,
            "window": args.window,
            "elapsed_s": round(elapsed, 1),
            "goodput_mbit": round(goodput * 8 / 1e6, 3),
            "goodput_fraction": round(goodput / rate_bytes, 3),
            "shaping": shaping,
            "loss": "not emulated (no netem in this kernel)",
            "republished": kiosk.link.stats.republished,
        }
        print(
            f"{args.n} packets, {total / 1e6:.1f} MB over {args.rate_mbit} Mbit/s, {args.rtt_ms:.0f} ms RTT: "
            f"{elapsed:.1f} s, goodput {figures['goodput_mbit']} Mbit/s = {figures['goodput_fraction']} of the link"
        )
        print(json.dumps(figures))
        return 0
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        if ns:
            ns.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
