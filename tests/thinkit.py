"""A thin link that is cut now and then, and a kiosk and a centre talking across it.

What bench/thin_link.py measures and tests/test_thin_link.py checks: the kiosk's MQTT
traffic goes through ``ThinLink``, a userspace TCP proxy on 127.0.0.1 with one token
bucket per direction (shared by every connection, as the link's capacity is), that every
``cut_every_s`` seconds closes both sides of every connection and refuses new ones for
``down_s`` seconds. The proxy reads from a side only as fast as the bucket allows, holds
at most ``buffer_bytes`` per direction, and keeps its kernel receive buffers small, so the
sender's own TCP send buffer backs up as behind a real thin link (not an infinite queue).

Around it (``ThinRun``): a Mosquitto of the run's own on a free loopback port; the centre
as a real ``ektp-central run`` process of this source tree with its SQLite store, connected
straight to the broker; the kiosk in this process, the real ``Link`` over a real outbox
holding sealed packets of synthetic residents (agent.synthetic), connected through the
proxy. The run's report counts what the centre holds at the end against the kiosk's
committed packets: stored bytes, lost (freed on the kiosk, missing at the centre),
duplicated and unknown rows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import math
import os
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, parse_config
from agent.link import Link
from agent.outbox import Outbox, OutboxStats, Receipt
from agent.synthetic import SyntheticRecords
from central.store import open_store
from tests.linkkit import Keys
from tests.netkit import Broker
from wire.keys import load_central_public, public_path
from wire.packet import SealedPacket, seal

REPO = Path(__file__).resolve().parent.parent
KIOSK_ID = "320715-01"
PACKET_BYTES_ESTIMATE = 92_000  # a sealed synthetic resident, record version 2 (bench/record_size.py)

# The proxy
BURST_BYTES = 4096  # the token bucket's depth: what may go at once after a quiet moment
BUFFER_BYTES = 16384  # read but not yet written on, per direction of a connection
SOCKET_BUFFER = 16384  # SO_RCVBUF of the proxy's sockets (Linux doubles it): a small hidden queue
MIN_READ_BYTES = 512  # the proxy waits for this many tokens before it reads (no busy loop)
READ_QUANTUM_S = 0.02  # ... or for this long's worth at a fast rate
MAX_SELECT_S = 0.25

# The run
CENTRE_READY_S = 20.0  # the centre's "connected" log line within this, else go on anyway
SETTLE_S = 2.0  # after the end: the centre stores what reached the broker before it
PROGRESS_S = 10.0
POLL_S = 0.25


# ----------------------------------------------------------------------------- the thin link


class TokenBucket:
    """``rate`` bytes a second, at most ``burst`` at once."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def refill(self, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens

    def take(self, n: int) -> None:
        self.tokens -= n

    def seconds_until(self, n: float) -> float:
        return max(0.0, (n - self.tokens) / self.rate)


@dataclass
class _Flow:
    """One direction of one forwarded connection."""

    src: socket.socket
    dst: socket.socket
    bucket: TokenBucket
    upward: bool  # kiosk -> broker
    pending: bytearray = field(default_factory=bytearray)


@dataclass
class _Pair:
    client: socket.socket
    upstream: socket.socket
    up: _Flow
    down: _Flow


@dataclass
class LinkCounters:
    accepted: int = 0  # connections forwarded
    refused: int = 0  # connections refused while the link was down
    cuts: int = 0
    up_bytes: int = 0  # kiosk -> broker, written to the broker
    down_bytes: int = 0  # broker -> kiosk, written to the kiosk
    dropped_bytes: int = 0  # read from a side, lost in the proxy's buffer at a cut


class ThinLink:
    """127.0.0.1:``port`` -> 127.0.0.1:``target_port`` at ``rate`` bytes/s each way, cut periodically.

    ``start()`` starts the clock of the cuts: the first one comes ``cut_every_s`` after it
    (0: never). ``end()`` cuts for good. Counters and outages are read from any thread."""

    def __init__(
        self,
        target_port: int,
        rate: float,
        *,
        cut_every_s: float = 0.0,
        down_s: float = 0.0,
        burst_bytes: int = BURST_BYTES,
        buffer_bytes: int = BUFFER_BYTES,
    ) -> None:
        if rate <= 0 or cut_every_s < 0 or down_s < 0 or (cut_every_s and down_s >= cut_every_s):
            raise ValueError("rate > 0, and 0 <= down_s < cut_every_s (or cut_every_s = 0: no cuts)")
        self.target_port = target_port
        self.rate = rate
        self.cut_every_s, self.down_s = cut_every_s, down_s
        self.buffer_bytes = buffer_bytes
        self.read_min = max(1, min(burst_bytes, max(MIN_READ_BYTES, int(rate * READ_QUANTUM_S))))
        self.counters = LinkCounters()
        self._buckets = {"up": TokenBucket(rate, burst_bytes), "down": TokenBucket(rate, burst_bytes)}
        self._outages: list[tuple[float, float]] = []  # (start, end) in monotonic time; end may be inf
        self._lock = threading.Lock()
        self._requests: list[float] = []  # cuts asked for from other threads: their down time
        self._pairs: list[_Pair] = []
        self._down_until = 0.0
        self._next_cut = math.inf
        self.started_at: float | None = None
        self.error: str | None = None  # the proxy's thread failed with this
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)  # inherited by accept()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.port = int(self.listener.getsockname()[1])
        self._wake_r, self._wake_w = os.pipe()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="thin-link", daemon=True)

    # ------------------------------------------------------------------------- control

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._next_cut = self.started_at + self.cut_every_s if self.cut_every_s else math.inf
        self._thread.start()

    def cut(self, down_s: float) -> None:
        """Cut every connection now and refuse new ones for ``down_s`` (inf: for good)."""
        with self._lock:
            self._requests.append(down_s)
        os.write(self._wake_w, b"x")

    def end(self) -> None:
        self.cut(math.inf)

    def close(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            os.write(self._wake_w, b"x")
            self._thread.join(5)
        for pair in self._pairs:
            self._close_pair(pair)
        self._pairs = []
        self.listener.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def outages(self) -> list[tuple[float, float]]:
        with self._lock:
            return list(self._outages)

    def up_seconds(self, t0: float, t1: float) -> float:
        """How long the link was up (forwarding, accepting) between two monotonic times."""
        down = sum(max(0.0, min(end, t1) - max(start, t0)) for start, end in self.outages())
        return max(0.0, t1 - t0 - down)

    # ------------------------------------------------------------------------- the loop

    def _run(self) -> None:
        try:
            self._forward_until_stopped()
        except Exception as exc:  # a bug here must show in the run's report, not look like a dead link
            self.error = f"{type(exc).__name__}: {exc}"
            raise

    def _forward_until_stopped(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            self._due_cuts(now)
            readers: dict[socket.socket, _Flow] = {}
            writers: dict[socket.socket, _Flow] = {}
            timeout = min(MAX_SELECT_S, max(0.0, self._next_cut - now))
            if self._down_until > now:
                timeout = min(timeout, self._down_until - now)
            for pair in self._pairs:
                for flow in (pair.up, pair.down):
                    if flow.pending:
                        writers[flow.dst] = flow
                    if len(flow.pending) >= self.buffer_bytes:
                        continue
                    if flow.bucket.refill(now) >= self.read_min:
                        readers[flow.src] = flow
                    else:
                        timeout = min(timeout, flow.bucket.seconds_until(self.read_min))
            watched: list[Any] = [self.listener, self._wake_r, *readers]
            r, w, _ = select.select(watched, list(writers), [], timeout)
            if self._wake_r in r:
                os.read(self._wake_r, 4096)
            if self.listener in r:
                self._accept()
            for s in w:
                flow = writers[s]
                if self._owner(flow) is not None:
                    self._flush(flow)
            for s in r:
                flow_or_none = readers.get(s)
                if flow_or_none is not None and self._owner(flow_or_none) is not None:
                    self._read(flow_or_none)

    def _due_cuts(self, now: float) -> None:
        with self._lock:
            asked, self._requests = self._requests, []
        for down_s in asked:
            self._cut(now, down_s)
        if now >= self._next_cut:
            self._cut(now, self.down_s)
            while self._next_cut <= now:
                self._next_cut += self.cut_every_s
        if self._down_until == math.inf:
            self._next_cut = math.inf

    def _cut(self, now: float, down_s: float) -> None:
        pairs, self._pairs = self._pairs, []
        for pair in pairs:
            self.counters.dropped_bytes += len(pair.up.pending) + len(pair.down.pending)
            self._close_pair(pair)
        self.counters.cuts += 1
        end = now + down_s
        self._down_until = max(self._down_until, end)
        with self._lock:
            self._outages.append((now, end))

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        if time.monotonic() < self._down_until:  # the link is down: a reset, as from no route
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            self.counters.refused += 1
            return
        upstream = socket.socket()
        try:
            upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
            upstream.settimeout(2)
            upstream.connect(("127.0.0.1", self.target_port))
        except OSError:  # the broker is gone: the client sees a closed connection and retries
            upstream.close()
            conn.close()
            return
        for s in (conn, upstream):
            s.setblocking(False)
            with contextlib.suppress(OSError):  # no Nagle stalls added by the proxy itself
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up = _Flow(conn, upstream, self._buckets["up"], upward=True)
        down = _Flow(upstream, conn, self._buckets["down"], upward=False)
        self._pairs.append(_Pair(conn, upstream, up, down))
        self.counters.accepted += 1

    def _owner(self, flow: _Flow) -> _Pair | None:
        return next((p for p in self._pairs if flow is p.up or flow is p.down), None)

    def _read(self, flow: _Flow) -> None:
        n = min(int(flow.bucket.tokens), self.buffer_bytes - len(flow.pending), 65536)
        if n <= 0:
            return
        try:
            data = flow.src.recv(n)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(flow)
            return
        flow.bucket.take(len(data))
        flow.pending += data
        self._flush(flow)

    def _flush(self, flow: _Flow) -> None:
        try:
            sent = flow.dst.send(flow.pending)
        except BlockingIOError:
            return
        except OSError:
            self._drop(flow)
            return
        del flow.pending[:sent]
        if flow.upward:
            self.counters.up_bytes += sent
        else:
            self.counters.down_bytes += sent

    def _drop(self, flow: _Flow) -> None:
        """One side closed or failed: close the connection on both sides."""
        pair = self._owner(flow)
        if pair is not None:
            self._pairs.remove(pair)
            self._close_pair(pair)

    @staticmethod
    def _close_pair(pair: _Pair) -> None:
        for s in (pair.client, pair.upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


# ----------------------------------------------------------------------------- the centre


class CentreProcess:
    """``ektp-central run`` of this source tree, on a SQLite store in ``root``, straight to the broker."""

    def __init__(self, root: Path, broker_port: int, keys: Keys) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.db = root / "central.db"
        self.conf = root / "central.toml"
        self.log = root / "central.log"
        self.conf.write_text(
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\n[store]\nurl = "{self.db}"\n'
            f'[keys]\ncentral_private_key = "{keys.central_path}"\n'
        )
        store = open_store(str(self.db))
        try:
            store.add_kiosk(keys.kiosk_id, public_path(keys.kiosk_path).read_bytes(), replace=True)
        finally:
            store.close()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> bool:
        """Start it; True once it says it is connected (False: it did not say so in time)."""
        # The console script's entry point, run from this tree (not from wherever the package is installed).
        cmd = [sys.executable, "-c", "import sys; from central.cli import main; sys.exit(main())"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*cmd, "--config", str(self.conf), "run"],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + CENTRE_READY_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ektp-central run exited with {self.proc.returncode}: {self.log_tail()}")
            if "connected to" in self.log_text():
                return True
            time.sleep(0.1)
        return False

    def exit_code(self) -> int | None:
        """None while it runs (or before it started); its exit status once it died."""
        return None if self.proc is None else self.proc.poll()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_tail(self, n: int = 2000) -> str:
        return self.log_text()[-n:]

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None:
            return
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)

    def packets(self, kiosk: str) -> list[dict[str, Any]]:
        """The kiosk's stored packets (``packet_id``, ``seq``, ``bytes``, ...), read from the store."""
        store = open_store(str(self.db))
        try:
            return store.packets(kiosk)
        finally:
            store.close()


# ----------------------------------------------------------------------------- the kiosk


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


class ThinKiosk:
    """The real ``Link`` over a real outbox, on its own event loop thread (as bench/drain.py's)."""

    def __init__(self, root: Path, port: int, keys: Keys, *, mqtt: dict[str, object] | None = None) -> None:
        self.root = root
        self.keys = keys
        extra = "".join(f"{k} = {_toml(v)}\n" for k, v in (mqtt or {}).items() if v is not None)
        self.config: AgentConfig = parse_config(
            f'[kiosk]\nid = "{keys.kiosk_id}"\ndata_dir = "{root}"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n{extra}'
        )
        root.mkdir(parents=True, exist_ok=True)
        self.db = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="thin-outbox")
        self.outbox: Outbox | None = self.db.submit(
            Outbox, root / "outbox.db", max_bytes=self.config.store.max_bytes
        ).result()
        self.central_public = load_central_public(public_path(keys.central_path))
        self.receipts: list[Receipt] = []
        self.link: Link | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def commit(self, n: int, *, seed: int = 1, pool: int = 2) -> list[Receipt]:
        """Seal and commit ``n`` packets of synthetic residents (``pool`` rendered biometric sets)."""
        records = SyntheticRecords(pool_size=pool)
        outbox = self._outbox()
        for i in range(n):
            record = records.record(seed + i)

            def build(seq: int, record: Any = record) -> SealedPacket:
                return seal(
                    record,
                    kiosk_id=self.keys.kiosk_id,
                    seq=seq,
                    kiosk_key=self.keys.kiosk,
                    central_public=self.central_public.encryption,
                    clock_synced=True,
                )

            self.receipts.append(self.db.submit(outbox.commit, build).result())
        return self.receipts

    def start(self) -> None:
        self._loop = asyncio.new_event_loop()
        self.link = Link(self.config, self._outbox(), self.central_public, db=self.db, health=self._health)
        self._thread = threading.Thread(target=self._run, name="thin-kiosk-link", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the link (cleanly: it writes down what it learnt); the outbox stays open."""
        thread, loop, link = self._thread, self._loop, self.link
        if thread is not None and loop is not None and link is not None and thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(link.stop(), loop).result(10)
            thread.join(20)
        if loop is not None and (thread is None or not thread.is_alive()):
            loop.close()
        self._thread = self._loop = None

    def close(self) -> None:
        self.stop()
        if self.outbox is not None:
            with contextlib.suppress(Exception):
                self.db.submit(self.outbox.close).result(10)
            self.outbox = None
        self.db.shutdown(wait=True, cancel_futures=True)

    def stats(self) -> OutboxStats:
        return self.db.submit(self._outbox().stats).result()

    def states(self) -> dict[str, str]:
        """The state of every committed packet in the outbox (``delivered`` = freed after an ack)."""
        outbox = self._outbox()

        def read() -> dict[str, str]:
            out = {}
            for r in self.receipts:
                info = outbox.info(r.packet_id)
                out[r.packet_id] = info.state if info is not None else "unknown"
            return out

        return self.db.submit(read).result()

    def link_stats(self) -> dict[str, Any]:
        return self.link.stats.to_json() if self.link is not None else {}

    def _outbox(self) -> Outbox:
        if self.outbox is None:
            raise RuntimeError("the kiosk is closed")
        return self.outbox

    def _run(self) -> None:
        assert self._loop is not None and self.link is not None
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self.link.run())

    async def _health(self) -> dict[str, Any]:
        stats = await asyncio.get_running_loop().run_in_executor(self.db, self._outbox().stats)
        return {
            "kiosk_id": self.keys.kiosk_id,
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "queue": {"pending": stats.pending + stats.sent, "pending_bytes": stats.pending_bytes},
            "link": self.link_stats(),
        }


class LinkLog(logging.Handler):
    """What the kiosk's link logs (ektp.link), with the monotonic time of each record."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[float, int, str]] = []
        self._logger = logging.getLogger("ektp.link")
        self._level = self._logger.level

    def __enter__(self) -> LinkLog:
        self._logger.addHandler(self)
        if self._logger.getEffectiveLevel() > logging.INFO:
            self._logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.records.append((time.monotonic(), record.levelno, record.getMessage()))

    def connects(self) -> list[float]:
        return [t for t, _lvl, msg in self.records if msg.startswith("connected to")]

    def problems(self, top: int = 6) -> dict[str, int]:
        """Warnings and errors, counted by message with the numbers taken out (ports, counters)."""
        words = Counter(
            " ".join("#" if any(c.isdigit() for c in w) else w for w in msg.split())[:160]
            for _t, lvl, msg in self.records
            if lvl >= logging.WARNING
        )
        return dict(words.most_common(top))


# ----------------------------------------------------------------------------- a run


@dataclass
class ThinSettings:
    rate_kbit: float = 64.0
    cut_every_s: float = 30.0
    down_s: float = 2.0
    duration_s: float = 240.0
    packets: int | None = None  # None: enough for the run never to run out
    chunk_bytes: int | None = None  # [mqtt] chunk_bytes of the kiosk (the agent's default when None)
    window: int | None = None  # [mqtt] window of the kiosk (the agent's default when None)
    mqtt: dict[str, object] = field(default_factory=dict)  # more [mqtt] keys of the kiosk
    seed: int = 1

    @property
    def rate_bytes(self) -> float:
        return self.rate_kbit * 1000 / 8

    def packet_count(self) -> int:
        if self.packets is not None:
            return self.packets
        window = self.window or AgentConfig().mqtt.window
        carried = self.rate_bytes * self.duration_s / PACKET_BYTES_ESTIMATE
        return math.ceil(carried * 1.25) + window


Progress = Callable[[str], None]


class ThinRun:
    """Broker, centre, proxy and kiosk for one run in ``root``; ``with`` closes all of them."""

    def __init__(self, root: Path, settings: ThinSettings, progress: Progress | None = None) -> None:
        self.root = root
        self.settings = settings
        self.say: Progress = progress or (lambda _line: None)
        self.broker: Broker | None = None
        self.centre: CentreProcess | None = None
        self.link: ThinLink | None = None
        self.kiosk: ThinKiosk | None = None
        self.centre_ready = False
        self.centre_died: str | None = None  # the tail of its log, if it exited during the run
        self.samples: list[dict[str, Any]] = []
        self.final_rows: list[dict[str, Any]] = []  # the centre's rows of the kiosk after the run
        self.final_states: dict[str, str] = {}  # the kiosk's packet id -> outbox state after the run

    def __enter__(self) -> ThinRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prepare(self) -> list[Receipt]:
        """Broker and centre up, the packets committed in the kiosk's outbox; the link not started."""
        s = self.settings
        self.root.mkdir(parents=True, exist_ok=True)
        keys = Keys(self.root, KIOSK_ID)
        # Nagle off on the broker's sockets, as production brokers run (docs/benchmarks.md, drain)
        self.broker = Broker(self.root / "broker", extra_config="set_tcp_nodelay true\n")
        self.broker.start()
        self.centre = CentreProcess(self.root / "central", self.broker.port, keys)
        self.centre_ready = self.centre.start()
        if not self.centre_ready:
            self.say(f"the centre did not log 'connected to' within {CENTRE_READY_S:.0f} s; going on")
        self.link = ThinLink(self.broker.port, s.rate_bytes, cut_every_s=s.cut_every_s, down_s=s.down_s)
        mqtt = {"chunk_bytes": s.chunk_bytes, "window": s.window, **s.mqtt}
        self.kiosk = ThinKiosk(self.root / "kiosk", self.link.port, keys, mqtt=mqtt)
        n = s.packet_count()
        started = time.monotonic()
        receipts = self.kiosk.commit(n, seed=s.seed)
        self.say(
            f"committed {n} packets ({sum(r.bytes for r in receipts) / 1e6:.1f} MB) in "
            f"{time.monotonic() - started:.1f} s; broker on {self.broker.port}, thin link on {self.link.port}"
        )
        return receipts

    def run(self, duration_s: float, *, until_delivered: bool = False) -> dict[str, Any]:
        """Open the link for ``duration_s`` (or until every packet is delivered); the report."""
        assert self.link is not None and self.kiosk is not None and self.centre is not None
        n = len(self.kiosk.receipts)
        with LinkLog() as linklog:
            self.link.start()
            t0 = self.link.started_at
            assert t0 is not None
            self.kiosk.start()
            next_progress = t0 + PROGRESS_S
            cuts_seen = 0
            delivered_at: float | None = None
            while True:
                time.sleep(POLL_S)
                if (now := time.monotonic()) >= t0 + duration_s:
                    break
                cuts = self.link.counters.cuts
                if now >= next_progress or cuts != cuts_seen:
                    self._sample(now - t0, f"cut {cuts}" if cuts != cuts_seen else "")
                    cuts_seen = cuts
                    next_progress = now + PROGRESS_S
                if until_delivered:
                    st = self.kiosk.stats()
                    if st.delivered >= n and st.pending == 0 and st.sent == 0:
                        delivered_at = time.monotonic()
                        break
            t_end = time.monotonic()
            self.link.end()  # nothing crosses any more; what reached the broker may still be stored
            time.sleep(SETTLE_S)
            self._sample(t_end - t0, "end")
            link_stats = self.kiosk.link_stats()
            self.kiosk.stop()
            states = self.kiosk.states()
            outbox = self.kiosk.stats()
            self.centre.stop()
            rows = self.centre.packets(KIOSK_ID)
        self.final_rows, self.final_states = rows, states
        return self._report(t0, t_end, delivered_at, rows, states, outbox, link_stats, linklog)

    @property
    def centre_log(self) -> str:
        return self.centre.log_text() if self.centre is not None else ""

    def _sample(self, t: float, note: str) -> None:
        assert self.link is not None and self.kiosk is not None and self.centre is not None
        c = self.link.counters
        try:
            rows = self.centre.packets(KIOSK_ID)
        except Exception as exc:  # the store is busy or being rewritten: the sample says so
            rows, note = [], f"{note} (centre store: {type(exc).__name__})".strip()
        if self.centre_died is None and (code := self.centre.exit_code()) is not None:
            self.centre_died = self.centre.log_tail(1500)
            self.say(f"THE CENTRE EXITED with status {code} during the run:\n{self.centre_died}")
        st = self.kiosk.stats()
        link = self.kiosk.link_stats()
        sample = {
            "t": round(t, 1),
            "cuts": c.cuts,
            "stored": len(rows),
            "stored_bytes": sum(int(r["bytes"]) for r in rows),
            "up_bytes": c.up_bytes,
            "down_bytes": c.down_bytes,
            "delivered": st.delivered,
            "held": st.pending + st.sent,
            "connected": link.get("connected"),
            "reconnects": link.get("reconnects"),
        }
        self.samples.append(sample)
        self.say(
            f"t={sample['t']:6.1f}s cuts={c.cuts:3d} centre={len(rows)} pkts {sample['stored_bytes'] / 1e3:8.1f} KB"
            f" | link up {c.up_bytes / 1e3:8.1f} KB down {c.down_bytes / 1e3:6.1f} KB"
            f" | kiosk delivered={st.delivered} held={sample['held']} connected={link.get('connected')}"
            f" reconnects={link.get('reconnects')}{'  ' + note if note else ''}"
        )

    def _report(
        self,
        t0: float,
        t_end: float,
        delivered_at: float | None,
        rows: list[dict[str, Any]],
        states: dict[str, str],
        outbox: OutboxStats,
        link_stats: dict[str, Any],
        linklog: LinkLog,
    ) -> dict[str, Any]:
        assert self.link is not None and self.kiosk is not None
        s = self.settings
        committed = {r.packet_id: r for r in self.kiosk.receipts}
        ids = [str(r["packet_id"]) for r in rows]
        stored_ids = set(ids)
        freed = {pid for pid, state in states.items() if state == "delivered"}
        elapsed = t_end - t0
        up_s = self.link.up_seconds(t0, t_end)
        stored_bytes = sum(int(r["bytes"]) for r in rows if str(r["packet_id"]) in committed)
        capacity = s.rate_bytes * up_s
        capacity_wall = s.rate_bytes * elapsed
        c = self.link.counters
        outage_ends = [end for start, end in self.link.outages() if t0 <= start < t_end and end < t_end]
        connects = linklog.connects()
        reconnect_after = []
        for end in outage_ends:
            later = [t for t in connects if t >= end]
            if later:
                reconnect_after.append(later[0] - end)
        return {
            "rate_kbit": s.rate_kbit,
            "cut_every_s": s.cut_every_s,
            "down_s": s.down_s,
            "duration_s": s.duration_s,
            "chunk_bytes": s.chunk_bytes,
            "window": self.kiosk.config.mqtt.window,
            "kiosk_mqtt": dict(s.mqtt),
            "elapsed_s": round(elapsed, 1),
            "up_s": round(up_s, 1),
            "cuts": sum(1 for start, _end in self.link.outages() if t0 <= start < t_end),
            "packets_committed": len(committed),
            "packet_bytes_mean": round(statistics.mean(r.bytes for r in committed.values())),
            "packet_bytes_min": min(r.bytes for r in committed.values()),
            "packets_stored": len(stored_ids & committed.keys()),
            "stored_bytes": stored_bytes,
            "capacity_bytes": round(capacity),
            "capacity_bytes_wall": round(capacity_wall),
            "goodput_fraction": round(stored_bytes / capacity, 3) if capacity else None,
            "goodput_fraction_wall": round(stored_bytes / capacity_wall, 3) if capacity_wall else None,
            "goodput_kbit": round(stored_bytes * 8 / 1000 / elapsed, 2) if elapsed else None,
            "lost": len(freed - stored_ids),
            "duplicated": len(ids) - len(stored_ids),
            "unknown_at_centre": len(stored_ids - committed.keys()),
            "all_delivered": delivered_at is not None or (not (committed.keys() - stored_ids)),
            "delivered_after_s": round(delivered_at - t0, 1) if delivered_at is not None else None,
            "kiosk_delivered": len(freed),
            "kiosk_held": outbox.pending + outbox.sent,
            "ran_out": delivered_at is None and outbox.pending + outbox.sent == 0,
            "proxy_up_bytes": c.up_bytes,
            "proxy_down_bytes": c.down_bytes,
            "proxy_dropped_bytes": c.dropped_bytes,
            "connections": c.accepted,
            "refused_connects": c.refused,
            "link_reconnects": link_stats.get("reconnects"),
            "link_published": link_stats.get("published"),
            "link_republished": link_stats.get("republished"),
            "reconnect_after_outage_s": _spread(reconnect_after),
            "outages_without_reconnect": len(outage_ends) - len(reconnect_after),
            "link_problems": linklog.problems(),
            "centre_ready": self.centre_ready,
            "centre_died": self.centre_died is not None,
            "proxy_error": self.link.error,
            "shaping": "userspace proxy, token bucket per direction",
        }

    def close(self) -> None:
        for step in (
            lambda: self.kiosk and self.kiosk.close(),
            lambda: self.link and self.link.close(),
            lambda: self.centre and self.centre.stop(),
            lambda: self.broker and self.broker.stop(),
        ):
            with contextlib.suppress(Exception):
                step()
        self.kiosk = self.link = self.centre = self.broker = None  # type: ignore[assignment]


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "n": len(values),
        "median": round(statistics.median(values), 2),
        "max": round(max(values), 2),
        "min": round(min(values), 2),
    }
