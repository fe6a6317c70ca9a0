"""Drain rate of the kiosk's link to the central consumer, against two baselines in the same run.

The agent: N real sealed packets (about 250 KB each) committed to a real outbox before
the link starts; then the real ``Link`` drains them through a Mosquitto of the bench's
own (loopback, free port, ``persistence false``) to the real ``CentralConsumer`` (SQLite
central store, in a child process) until the outbox counts N delivered. Timed from the
start of ``Link.run`` (so the connect is included) to the poll that sees N delivered.

Over the same broker, with the same packet bytes and the same window:
(a) raw paho QoS 1 publishing, the next publish as each PUBACK comes back, nobody
    subscribed: the kiosk-to-broker path's limit (bench/drain_baselines.py);
(b) a minimal durable pipeline: raw paho publisher; raw paho subscriber (child process)
    committing each message in its own SQLite transaction (WAL, synchronous=FULL) and
    publishing a plain ack; the publisher keeps the window of un-acked packets
    (bench/drain_centre.py).

Each broker config (``--broker``: ``nodelay``, then Mosquitto's ``stock`` defaults) gets
its own broker and its own runs; the first config's figures carry no suffix in the JSON.
Run from the repository root: ``.venv/bin/python bench/drain.py [--n 2000] [--window 16]``.
The last line printed is a JSON object of the figures. Goal: agent_pps >= 0.85 x durable_pps.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drain_baselines import durable_publish, raw_publish
from drain_centre import CentreSide

from agent.config import AgentConfig, parse_config
from agent.link import Link
from agent.outbox import Outbox
from hw_sim.residents import synthetic_resident
from tests.factories import record_from_resident
from tests.netkit import Broker, mosquitto_binary
from wire.keys import (
    CentralPublicKeys,
    create_central_keys,
    create_kiosk_key,
    load_central_public,
    public_path,
)
from wire.packet import SealedPacket, seal
from wire.record import EnrollmentRecord

KIOSK = "320715-01"
PREFIX = "ektp/v1"
DEFAULT_N = 2000
DEFAULT_WINDOW = AgentConfig().mqtt.window  # the link's default (config mqtt.window)
BROKER_RECEIVE_MAXIMUM = 20  # Mosquitto's default max_inflight_messages, announced in CONNACK
PAYLOAD_POOL = 64  # distinct sealed packets the baselines cycle through
POLL_S = 0.005  # how often the agent run looks at the outbox's delivered count
GOAL = 0.85
SIDES = ("raw", "durable", "agent")
# Broker configs, on top of tests/netkit.py's (loopback listener, persistence false). "nodelay":
# Nagle's algorithm off on the broker's sockets, as production brokers run (EMQX's default).
# "stock": Mosquitto's default set_tcp_nodelay false, under which a small write behind an
# unacknowledged one waits for the peer's delayed ACK (about 40 ms on Linux): every round trip
# of a small message stalls, and all three runs measure those stalls more than themselves.
BROKERS = {"nodelay": "set_tcp_nodelay true\n", "stock": ""}


class DrainStalled(RuntimeError):
    """A run did not finish within its time limit."""


# ----------------------------------------------------------------------------- the agent's side


class KioskBacklog:
    """A real outbox with N committed packets, and the real ``Link`` that drains it."""

    def __init__(
        self, root: Path, port: int, kiosk_key: Any, central: CentralPublicKeys, window: int
    ) -> None:
        self.root = root
        self.kiosk_key = kiosk_key
        self.central = central
        self.config = parse_config(
            f'[kiosk]\nid = "{KIOSK}"\ndata_dir = "{root}"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\ntopic_prefix = "{PREFIX}"\nwindow = {window}\n'
        )
        self.db = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="outbox")
        self.outbox = self.db.submit(
            Outbox, root / "outbox.db", max_bytes=self.config.store.max_bytes
        ).result()
        self.link: Link | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def commit(self, record: EnrollmentRecord, n: int) -> int:
        """Seal (per seq) and commit n packets; returns the packet size."""

        def build(seq: int) -> SealedPacket:
            return seal(
                record,
                kiosk_id=KIOSK,
                seq=seq,
                kiosk_key=self.kiosk_key,
                central_public=self.central.encryption,
                clock_synced=True,
            )

        # One commit per submit, on the outbox's thread: Ctrl-C stops the build between two commits.
        sizes = {self.db.submit(self.outbox.commit, build).result().bytes for _ in range(n)}
        if len(sizes) != 1:
            raise RuntimeError(f"backlog packets differ in size: {sorted(sizes)}")
        return sizes.pop()

    def delivered(self, reader: Outbox) -> int:
        return reader.stats().delivered

    def drain(self, n: int, timeout_s: float) -> float:
        """Start the link and return the seconds until the outbox counts n delivered."""
        loop = self._loop = asyncio.new_event_loop()
        self.link = Link(self.config, self.outbox, self.central, db=self.db, health=self._health)
        self._thread = threading.Thread(
            target=self._run, args=(loop, self.link), name="kiosk-link", daemon=True
        )
        # The bench watches through a connection of its own: it never waits for, or holds, the
        # writer's lock that the drain uses (WAL readers and the writer do not block each other).
        reader = Outbox.open_readonly(self.outbox.path)
        try:
            started = time.perf_counter()
            self._thread.start()
            deadline = started + timeout_s
            while (delivered := self.delivered(reader)) < n:
                if time.perf_counter() > deadline:
                    raise DrainStalled(f"agent: {delivered} of {n} delivered after {timeout_s:.0f} s")
                if not self._thread.is_alive():
                    raise DrainStalled(f"agent: the link stopped with {delivered} of {n} delivered")
                time.sleep(POLL_S)
            return time.perf_counter() - started
        finally:
            reader.close()

    def close(self) -> None:
        thread, loop, link = self._thread, self._loop, self.link
        if thread is not None and loop is not None and link is not None and thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(link.stop(), loop).result(10)
            thread.join(15)
        if loop is not None and (thread is None or not thread.is_alive()):
            loop.close()
        self._thread = self._loop = None
        with contextlib.suppress(Exception):
            self.db.submit(self.outbox.close).result(10)
        self.db.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop, link: Link) -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(link.run())

    async def _health(self) -> dict[str, Any]:
        stats = await asyncio.get_running_loop().run_in_executor(self.db, self.outbox.stats)
        assert self.link is not None
        return {
            "kiosk_id": KIOSK,
            "queue": {"pending": stats.pending + stats.sent, "delivered": stats.delivered},
            "link": self.link.stats.to_json(),
        }


# ----------------------------------------------------------------------------- one run of each side


class Bench:
    """Everything one invocation owns: the temp dir, the broker, the keys, the packet pool."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="ektp-drain-", dir=args.dir))
        self.broker: Broker | None = None
        self.record = record_from_resident(synthetic_resident(args.seed))
        self.central_key_path = self.tmp / "keys" / "central.key"
        create_central_keys(self.central_key_path)
        self.central = load_central_public(public_path(self.central_key_path))
        self.kiosk_key_path = self.tmp / "keys" / "kiosk.key"
        self.kiosk_key = create_kiosk_key(self.kiosk_key_path)
        self.pool = [
            seal(
                self.record,
                kiosk_id=KIOSK,
                seq=seq,
                kiosk_key=self.kiosk_key,
                central_public=self.central.encryption,
                clock_synced=True,
            ).data
            for seq in range(1, PAYLOAD_POOL + 1)
        ]
        self.packet_bytes = len(self.pool[0])
        self.timeout_s = max(120.0, args.n * 0.25)
        self.broker_port = 0
        self.broker_version = _mosquitto_version()

    def start_broker(self, name: str) -> None:
        self.stop_broker()
        extra = BROKERS[name]
        if self.args.window > BROKER_RECEIVE_MAXIMUM - 2:  # room for the link's status and health
            extra += f"max_inflight_messages {self.args.window + 8}\n"
        self.broker = Broker(self.tmp / f"broker-{name}", extra_config=extra)
        self.broker.start()
        self.broker_port = self.broker.port

    def stop_broker(self) -> None:
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    @property
    def port(self) -> int:
        assert self.broker is not None
        return self.broker.port

    def topic(self, kind: str) -> str:
        return f"{PREFIX}/{KIOSK}/{kind}"

    def run(self, side: str, label: str) -> dict[str, Any]:
        root = self.tmp / f"{side}-{label}"
        root.mkdir()
        try:
            return {"raw": self._run_raw, "durable": self._run_durable, "agent": self._run_agent}[side](root)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def _run_raw(self, root: Path) -> dict[str, Any]:
        _settle_disk()
        seconds = raw_publish(
            self.port,
            self.topic("enrollment"),
            self.pool,
            self.args.n,
            self.args.window,
            KIOSK,
            self.timeout_s,
        )
        return {"seconds": seconds}

    def _run_durable(self, root: Path) -> dict[str, Any]:
        side = CentreSide(
            "durable",
            port=self.port,
            db=str(root / "durable.db"),
            topic=self.topic("enrollment"),
            ack_topic=self.topic("ack"),
        )
        try:
            side.start()
            _settle_disk()
            seconds = durable_publish(
                self.port,
                self.topic("enrollment"),
                self.topic("ack"),
                self.pool,
                self.args.n,
                self.args.window,
                KIOSK,
                self.timeout_s,
            )
        finally:
            report = side.stop()
        _check_exactly_once("durable", report.get("stored_rows"), self.args.n)
        return {"seconds": seconds, "centre": report}

    def _run_agent(self, root: Path) -> dict[str, Any]:
        centre = CentreSide(
            "central",
            port=self.port,
            db=str(root / "central" / "central.db"),
            kiosk_id=KIOSK,
            kiosk_public=str(public_path(self.kiosk_key_path)),
            central_key=str(self.central_key_path),
        )
        kiosk = KioskBacklog(root / "kiosk", self.port, self.kiosk_key, self.central, self.args.window)
        link_stats: dict[str, Any] = {}
        try:
            centre.start()
            started = time.perf_counter()
            size = kiosk.commit(self.record, self.args.n)
            build_s = time.perf_counter() - started
            if size != self.packet_bytes:
                raise RuntimeError(f"backlog packets are {size} bytes, the baselines' {self.packet_bytes}")
            _settle_disk()
            seconds = kiosk.drain(self.args.n, self.timeout_s)
            assert kiosk.link is not None
            link_stats = kiosk.link.stats.to_json()
        finally:
            kiosk.close()
            report = centre.stop()
        _check_exactly_once("agent", report.get("distinct_ids"), self.args.n)
        if report.get("stored_rows") != report.get("distinct_ids"):
            raise RuntimeError(f"agent: the central store holds duplicate rows: {report}")
        return {"seconds": seconds, "build_s": build_s, "centre": report, "link": link_stats}

    def close(self) -> None:
        self.stop_broker()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _settle_disk() -> None:
    """Flush what earlier runs left dirty in the page cache, so it does not land in this run's time."""
    os.sync()
    time.sleep(0.2)


def _check_exactly_once(side: str, stored: object, n: int) -> None:
    if stored != n:
        raise RuntimeError(f"{side}: the receiving side stored {stored} packets, expected exactly {n}")


# ----------------------------------------------------------------------------- the report


def _figures(
    args: argparse.Namespace, bench: Bench, runs: dict[str, dict[str, list[dict[str, Any]]]]
) -> dict[str, Any]:
    """Flat figures: the first broker config's without a suffix, the others' with ``_{config}``."""
    fig: dict[str, Any] = {"n": args.n, "packet_bytes": bench.packet_bytes, "window": args.window}
    fig["repeats"] = args.repeats
    fig["brokers"] = list(runs)
    for index, (broker, by_side) in enumerate(runs.items()):
        suffix = "" if index == 0 else f"_{broker}"
        pps: dict[str, float] = {}
        for side, results in by_side.items():
            if not results:
                continue
            rates = [args.n / r["seconds"] for r in results]
            pps[side] = statistics.median(rates)
            fig[f"{side}_pps{suffix}"] = round(pps[side], 1)
            fig[f"{side}_mb_s{suffix}"] = round(pps[side] * bench.packet_bytes / 1e6, 1)
            if len(rates) > 1:
                fig[f"{side}_pps_all{suffix}"] = [round(r, 1) for r in rates]
        for a, b in (("agent", "durable"), ("agent", "raw"), ("durable", "raw")):
            if a in pps and b in pps:
                fig[f"{a}_vs_{b}{suffix}"] = round(pps[a] / pps[b], 3)
        if by_side.get("agent"):
            fig[f"agent_republished{suffix}"] = sum(r["link"].get("republished", 0) for r in by_side["agent"])
    return fig


LABELS = {
    "raw": "(a) raw paho QoS 1, nobody subscribed   ",
    "durable": "(b) durable: SQLite txn per msg + ack   ",
    "agent": "agent: Link -> broker -> CentralConsumer",
}


def _print_report(args: argparse.Namespace, bench: Bench, fig: dict[str, Any]) -> None:
    print(
        f"drain: {args.n} packets x {bench.packet_bytes} bytes ({args.n * bench.packet_bytes / 1e6:.0f} MB), "
        f"window {args.window}, {args.repeats} repeat(s) (medians), {bench.broker_version}, 127.0.0.1"
    )
    for index, broker in enumerate(fig["brokers"]):
        suffix = "" if index == 0 else f"_{broker}"
        print(f"broker config {broker!r}{' (set_tcp_nodelay true)' if broker == 'nodelay' else ''}:")
        for side in SIDES:
            if f"{side}_pps{suffix}" in fig:
                print(
                    f"  {LABELS[side]}  {fig[f'{side}_pps{suffix}']:8.1f} packets/s"
                    f"  {fig[f'{side}_mb_s{suffix}']:7.1f} MB/s"
                )
        if f"agent_vs_durable{suffix}" in fig:
            ratio = fig[f"agent_vs_durable{suffix}"]
            print(f"  agent / (b) = {ratio:.3f} (goal >= {GOAL}: {'met' if ratio >= GOAL else 'NOT met'})")
        if f"agent_vs_raw{suffix}" in fig:
            print(f"  agent / (a) = {fig[f'agent_vs_raw{suffix}']:.3f}")


# ----------------------------------------------------------------------------- main


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=DEFAULT_N, help=f"packets per run (default {DEFAULT_N})")
    parser.add_argument(
        "--window", type=int, default=DEFAULT_WINDOW, help=f"packets in flight (default {DEFAULT_WINDOW})"
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of each side; medians if > 1 (default 1)"
    )
    parser.add_argument(
        "--sides", default=",".join(SIDES), help=f"which runs, comma-separated (default {','.join(SIDES)})"
    )
    parser.add_argument(
        "--broker",
        default=",".join(BROKERS),
        help="broker configs, comma-separated: nodelay (set_tcp_nodelay true), stock (Mosquitto's"
        f" defaults); the first one's figures carry no suffix (default {','.join(BROKERS)})",
    )
    parser.add_argument("--seed", type=int, default=8, help="synthetic resident of the record (default 8)")
    parser.add_argument("--dir", default=None, help="where to put the temp dir (default: the system's)")
    args = parser.parse_args(argv)
    args.sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if not args.sides or set(args.sides) - set(SIDES):
        parser.error(f"--sides takes a comma-separated subset of {','.join(SIDES)}")
    args.broker = list(dict.fromkeys(b.strip() for b in args.broker.split(",") if b.strip()))
    if not args.broker or set(args.broker) - set(BROKERS):
        parser.error(f"--broker takes a comma-separated subset of {','.join(BROKERS)}")
    if args.n < 1 or args.window < 1 or args.repeats < 1:
        parser.error("--n, --window and --repeats must be positive")
    return args


def _raise_on_sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    mosquitto_binary()  # fail early, with the install hint, when there is no broker binary
    sides = [s for s in SIDES if s in args.sides]
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {b: {s: [] for s in sides} for b in args.broker}
    bench: Bench | None = None
    try:
        bench = Bench(args)
        for broker in args.broker:
            bench.start_broker(broker)
            for repeat in range(args.repeats):
                order = sides[repeat % len(sides) :] + sides[: repeat % len(sides)]  # no side always first
                for side in order:
                    result = bench.run(side, f"{broker}-{repeat}")
                    runs[broker][side].append(result)
                    extra = f", backlog built in {result['build_s']:.1f} s" if "build_s" in result else ""
                    print(
                        f"  [{broker}] run {repeat + 1} {side}: {result['seconds']:.2f} s, "
                        f"{args.n / result['seconds']:.1f} packets/s{extra}",
                        file=sys.stderr,
                        flush=True,
                    )
            bench.stop_broker()
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        if bench is not None:
            bench.close()
    fig = _figures(args, bench, runs)
    sys.stderr.flush()
    _print_report(args, bench, fig)
    print(json.dumps(fig))
    return 0


def _mosquitto_version() -> str:
    out = subprocess.run([mosquitto_binary(), "-h"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0] if out else "mosquitto"


if __name__ == "__main__":
    sys.exit(main())
