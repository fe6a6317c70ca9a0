"""A fleet of simulated kiosks from one process (``ektp-sim fleet``): what N real kiosks
publish, against a broker, for the centre's scale bench, its tests and a demo of the web view.

Each kiosk publishes what a real one does (CONTRACT.md, MQTT) on its own topics:

- ``status``, retained: online (the agent's payload, agent.link.session.status_payload)
  before its first health, and offline for every kiosk on a clean stop;
- ``health``, retained, every ``interval_s``: the agent's document in its exact shape,
  built with the agent's own pieces where they are not the host's (agent.service.queue_json,
  agent.link.stats.LinkStats, agent.health.assess for ``problems`` and ``warnings``), its
  ``ts`` with milliseconds so a bench can measure the centre's lag;
- with keys, a trickle of real enrollment packets: synthetic residents
  (agent.synthetic) sealed to the centre's public key with the synthetic flag, signed
  by the kiosk's own key, published QoS 1 as chunks (wire.chunk) with the agent's user
  properties. The centre's signed acks are verified with its public key: stored or
  duplicate frees a packet, rejected or conflict keeps it as rejected (health shows it,
  as a kiosk's does); a packet with no final answer after ``ACK_TIMEOUT_S`` goes again.

Connections. The kiosks share a small pool of MQTT v5 connections (one per
``KIOSKS_PER_CONNECTION`` by default): a connection per kiosk would be 10,000 sockets and
10,000 paho threads. A Last Will names one topic, so a shared connection cannot carry a
Will per kiosk: a killed simulator leaves its kiosks "online" (retained) until it runs
again; a clean stop publishes offline for each. A status's ``connection`` counter is the
simulator's start time in seconds plus its connection's reconnects, so a restarted
simulator's online outranks the offline of its last run at the centre (which orders
statuses by it). After a reconnect each kiosk of that connection says online again at
its next health.

Timing. Kiosk i publishes at start + i x interval / N + k x interval: spread evenly over
the interval, never in a burst. The scheduler measures its own lag (how late each health
leaves against its slot) and says so on stderr when it falls behind.

Faults. ``fault_rate`` is the fraction of kiosks that show a faulty or degraded device at
any moment: a kiosk's fault lasts FAULT_TICKS health intervals, a well kiosk starts one
with the probability that holds the fraction steady, and the fleet starts at that fraction.
Each fault is one of FAULTS, with the detail and hint a kiosk's driver would give.

Error tree::

    Exception
     +-- FleetError             the simulator cannot start (``exit 1``)
          +-- BrokerUnavailable (also ConnectionError)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent import __version__ as AGENT_VERSION
from agent.health import DEVICE_NAMES, assess
from agent.link.session import status_payload
from agent.link.stats import LinkStats
from agent.outbox import OutboxStats
from agent.service import queue_json
from wire.ack import AckError, AckStatus, verify_ack
from wire.chunk import HEAD_LEN, Chunk, packet_sha256
from wire.keys import CentralPublicKeys, load_central_public, load_kiosk_private, public_path
from wire.packet import seal

log = logging.getLogger("ektp.fleet")

KIOSKS_PER_CONNECTION = 2500
DEFAULT_REGIONS = (
    "320715",
    "720801",
    "317101",
    "351501",
    "530104",
)  # Kemendagri codes (prov, regency, district)
DEFAULT_CHUNK_BYTES = (
    65536  # a 90 KB packet crosses as 2 chunks, as on a kiosk's link before it measures a rate
)
CONNECT_TIMEOUT_S = 10.0
KEEPALIVE_S = 30
STOP_WAIT_S = 15.0  # a clean stop waits this long for the offline statuses' PUBACKs
ACK_TIMEOUT_S = 60.0  # a packet with no final answer goes again after this
MAX_INFLIGHT = 20  # publishes awaiting their PUBACK on the wire per connection (Mosquitto's default limit)
MAX_AWAITING = (
    50_000  # publishes without their PUBACK on one connection: beyond, the broker is not keeping up
)
BEHIND_S = 1.0  # a health this late against its slot counts as falling behind
BEHIND_REPORT_S = 10.0  # ... and is reported at most this often
LAG_SAMPLES = 200_000
IDLE_WAIT_S = 0.2  # the scheduler looks at acks and connections at least this often
FAULT_TICKS = (3, 17)  # a fault lasts this many health intervals (uniform; mean 10)
MAX_BYTES = 8_000_000_000  # the agent's default store.max_bytes
OUTBOX_PATH = "/var/lib/ektp-agent/outbox.db"
MQTT_OVERHEAD = 512  # fixed header, topic and user properties of a chunk, generously
SEQ_FILE = "seq.json"
KIOSK_LIST = "kiosks.txt"


class FleetError(Exception):
    """The fleet simulator cannot start; the message says what to do."""


class BrokerUnavailable(FleetError, ConnectionError):
    """The broker refused or did not answer a connection of the pool."""


# ----------------------------------------------------------------------------- what a kiosk shows


@dataclass(frozen=True, slots=True)
class DeviceFault:
    """A peripheral's trouble as its driver's self-test reports it."""

    device: str
    state: str  # "fault" or "degraded"
    detail: str
    hint: str


OK_DETAILS = {
    "fingerprint": "module answers on /dev/ttyAMA0 at 57600 baud: library 1000, security level 3, "
    "128-byte packets",
    "signature": "pad answers on /dev/ttyUSB0 at 19200 baud: 15200 x 10000, 1023 pressure levels",
    "iris": "iris camera on USB 1209:0001: firmware 2.1, 640 x 480",
    "camera": "camera 0: 1920 x 1080, brightness 118, sharpness 0.62",
}
FAULTS = (
    DeviceFault(
        "fingerprint",
        "fault",
        "no answer from the fingerprint module on /dev/ttyAMA0 at 57600 baud within 2.0 s",
        "no answer from the fingerprint module on /dev/ttyAMA0 at 57600 baud: check the cable and that "
        "the port is enabled in raspi-config",
    ),
    DeviceFault(
        "fingerprint",
        "degraded",
        f"{OK_DETAILS['fingerprint']}; recovered from 3 corrupt replies (commands sent again)",
        "noise on the line to the fingerprint module on /dev/ttyAMA0 at 57600 baud: check the ground "
        "wire, the cable length and its distance from the power supply",
    ),
    DeviceFault(
        "signature",
        "fault",
        "no signature pad port at /dev/ttyUSB0",
        "no signature pad port at /dev/ttyUSB0: check its USB cable (replug it) and the port path in the "
        "config",
    ),
    DeviceFault(
        "signature",
        "degraded",
        f"{OK_DETAILS['signature']}; slow answer (640 ms, usually under 300 ms): check the cable and the "
        "pad's power",
        "slow answer (640 ms, usually under 300 ms): check the cable and the pad's power",
    ),
    DeviceFault(
        "iris",
        "fault",
        "no iris camera on USB 1209:0001",
        "plug the iris camera straight into the Pi (no hub); if it is plugged in, try another cable and "
        "USB port, then power-cycle it",
    ),
    DeviceFault(
        "iris",
        "degraded",
        f"{OK_DETAILS['iris']}; slow answer (GET_STATUS took 900 ms, usually under 300 ms)",
        "the iris camera answers slowly: plug it straight into the Pi (no hub), try another USB cable; "
        "power-cycle it",
    ),
    DeviceFault(
        "camera",
        "fault",
        "camera 0: libcamera timed out waiting for a frame (5.0 s)",
        "reseat the camera's ribbon cable at both ends (power off first); if it still times out, "
        "replace the cable, then the camera",
    ),
    DeviceFault(
        "camera",
        "degraded",
        "camera 0: 1920 x 1080, brightness 17 (too dark), sharpness 0.21",
        "clean the lens and check the lighting at the kiosk (no back light, no dark corner)",
    ),
)


@dataclass(slots=True)
class PendingPacket:
    """A sealed packet on its way: kept until the centre's final answer."""

    packet_id: str
    seq: int
    data: bytes = field(repr=False)
    sha256: str
    committed: float  # time.monotonic()
    sent: float = 0.0
    attempts: int = 0


@dataclass(slots=True)
class SimKiosk:
    """One simulated kiosk: its schedule slot, key, counters and the state its health shows."""

    kiosk_id: str
    index: int
    phase_s: float
    connection: int  # index of its pool connection
    key: Ed25519PrivateKey | None = None
    seq: int = 0
    delivered: int = 0
    rejected: int = 0
    rejected_bytes: int = 0
    rejected_reason: str = ""
    chunks_published: int = 0
    chunks_republished: int = 0
    refused_pubacks: int = 0
    pending: dict[str, PendingPacket] = field(default_factory=dict)
    fault: DeviceFault | None = None
    fault_ticks: int = 0  # health intervals left of the fault
    online_connection: int | None = None  # the status counter it last said online with
    disk_free_base: int = 20_000_000_000
    temp_base: float = 50.0
    load_1m: float = 0.2
    started: float = field(default_factory=time.monotonic)


def kiosk_ids(n: int, regions: Sequence[str]) -> list[str]:
    """``n`` ids spread round-robin over the region codes: 320715-0001, 720801-0001, 320715-0002, ..."""
    width = max(4, len(str(math.ceil(n / len(regions)))))
    return [f"{regions[i % len(regions)]}-{i // len(regions) + 1:0{width}d}" for i in range(n)]


def check_regions(codes: Sequence[str]) -> list[str]:
    """:raises ValueError: a code that is not 6 digits (province 2, regency 2, district 2)"""
    out = []
    for code in codes:
        code = code.strip()
        if len(code) != 6 or not code.isdigit():
            raise ValueError(
                f"region code {code!r}: expected 6 digits, Kemendagri's province 2, regency 2, district 2 "
                "(e.g. 320715)"
            )
        out.append(code)
    if not out:
        raise ValueError("no region codes given")
    return out


def rfc3339_ms(t: float) -> str:
    """``t`` (epoch seconds) as RFC 3339 UTC with milliseconds."""
    ms = int(t * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def health_doc(k: SimKiosk, *, link: LinkStats, now: float, wall: float, temp_noise: float) -> dict[str, Any]:
    """The kiosk's health document, in the agent's shape (agent.health.HealthReporter.snapshot)."""
    devices = {name: {"state": "ok", "detail": OK_DETAILS[name], "hint": ""} for name in DEVICE_NAMES}
    if k.fault is not None:
        f = k.fault
        devices[f.device] = {"state": f.state, "detail": f.detail, "hint": f.hint}
    pending_bytes = sum(len(p.data) for p in k.pending.values())
    oldest = min((p.committed for p in k.pending.values()), default=None)
    held = pending_bytes + k.rejected_bytes
    stats = OutboxStats(
        pending=0,
        sent=len(k.pending),
        delivered=k.delivered,
        rejected=k.rejected,
        pending_bytes=held,
        oldest_pending_age_s=None if oldest is None else round(now - oldest, 1),
        total_committed=k.seq,
        last_seq=k.seq,
        near_full=False,
        max_bytes=MAX_BYTES,
    )
    doc: dict[str, Any] = {
        "kiosk_id": k.kiosk_id,
        "ts": rfc3339_ms(wall),
        "agent_version": AGENT_VERSION,
        "uptime_s": round(now - k.started, 1),
        "devices": devices,
        "queue": queue_json(stats),
        "store": {"path": OUTBOX_PATH, "quarantined": []},
        "link": link.to_json(),
        "host": {
            "disk_free_bytes": max(0, k.disk_free_base - held),
            "cpu_temp_c": round(k.temp_base + temp_noise, 1),
            "clock_synchronised": True,
            "clock_unsynchronised_s": None,
            "clock_unsynchronised_enrollments": 0,
            "load_1m": k.load_1m,
        },
        "enrollments": {"total": k.seq},
    }
    doc["problems"], doc["warnings"] = assess(doc, rejected_reason=k.rejected_reason or None)
    return doc


# ----------------------------------------------------------------------------- keys


def kiosk_key_path(keys_dir: Path, kiosk: str) -> Path:
    return keys_dir / f"{kiosk}.key"


def ensure_keys(keys_dir: Path, kiosks: Sequence[str]) -> dict[str, Ed25519PrivateKey]:
    """Each kiosk's signing key from ``keys_dir``, created where missing (``ID.key`` 0600 and
    ``ID.key.pub``, PEM as `ektp-agent keys init` writes them), and ``kiosks.txt``: one
    ``ID PUBLIC_KEY_FILE`` line per kiosk, for `ektp-central kiosk add ID --public-key FILE`.

    Simulated kiosks' keys guard nothing: they are written without the fsyncs of a real key.
    :raises FleetError: a key file that cannot be read or written
    """
    keys_dir.mkdir(parents=True, exist_ok=True)
    keys: dict[str, Ed25519PrivateKey] = {}
    try:
        for kiosk in kiosks:
            path = kiosk_key_path(keys_dir, kiosk)
            if path.exists():
                keys[kiosk] = load_kiosk_private(path)
                continue
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            public_path(path).write_bytes(
                key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
            keys[kiosk] = key
        listing = "".join(f"{k} {public_path(kiosk_key_path(keys_dir, k))}\n" for k in kiosks)
        (keys_dir / KIOSK_LIST).write_text(listing)
    except (OSError, ValueError) as exc:  # wire.keys.KeyFileError is one of these
        raise FleetError(f"kiosk keys in {keys_dir}: {exc}") from exc
    return keys


def read_seqs(keys_dir: Path) -> dict[str, int]:
    """The last seq each kiosk sealed in an earlier run (a new run must not reuse one)."""
    try:
        raw = json.loads((keys_dir / SEQ_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def write_seqs(keys_dir: Path, seqs: dict[str, int]) -> None:
    tmp = keys_dir / f".{SEQ_FILE}.tmp"
    tmp.write_text(json.dumps(seqs, sort_keys=True))
    tmp.replace(keys_dir / SEQ_FILE)


# ----------------------------------------------------------------------------- the connections


class PoolConnection:
    """One MQTT v5 connection carrying many kiosks. paho's callbacks only count and queue."""

    def __init__(self, n: int, host: str, port: int, events: queue.SimpleQueue[tuple[str, Any]]) -> None:
        self.n = n
        self.host, self.port = host, port
        self.events = events
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"ektp-fleet-{os.getpid()}-{n}", protocol=mqtt.MQTTv5
        )
        self.client.suppress_exceptions = True
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(MAX_INFLIGHT)
        self.client.reconnect_delay_set(1, 30)
        self.connected = threading.Event()
        self.answered = threading.Event()  # a CONNACK came, accepting or refusing
        self.connects = 0  # CONNACKs accepted (written on paho's thread)
        self.refused = ""  # why the broker refused the last connection
        self.published = 0  # publishes paho took (main thread)
        self.acked = 0  # PUBACKs with success (paho's thread)
        self.failed = 0  # PUBACKs with a failure code (paho's thread)
        self.last_failure = ""
        self.subscriptions: list[str] = []  # (re)subscribed at every CONNACK: the session is clean
        self.receive_maximum: int | None = None
        self.maximum_packet_size: int | None = None
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message

    @property
    def reconnects(self) -> int:
        return max(0, self.connects - 1)

    @property
    def awaiting(self) -> int:
        return self.published - self.acked - self.failed

    def start(self) -> None:
        """:raises BrokerUnavailable: no TCP connection, a refused CONNECT, or no CONNACK in time"""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0
        try:
            self.client.connect(self.host, self.port, KEEPALIVE_S, clean_start=True, properties=props)
        except (OSError, ValueError) as exc:
            raise BrokerUnavailable(
                f"cannot connect to the broker at {self.host}:{self.port}: {exc}"
            ) from exc
        self.client.loop_start()
        self.answered.wait(CONNECT_TIMEOUT_S)
        if not self.connected.is_set():
            why = self.refused or f"no CONNACK within {CONNECT_TIMEOUT_S:.0f} s"
            self.stop()
            raise BrokerUnavailable(
                f"the broker at {self.host}:{self.port} did not take the connection: {why}"
            )

    def stop(self) -> None:
        """Disconnect and end paho's thread (idempotent)."""
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes, *, retain: bool, props: Properties | None = None) -> bool:
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        self.published += 1
        return True

    def _on_connect(self, c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, props: Properties | None) -> None:
        if rc.is_failure:
            self.refused = str(rc)
            self.answered.set()
            return
        rm = getattr(props, "ReceiveMaximum", None) if props is not None else None
        if rm is not None and rm < MAX_INFLIGHT:
            # paho does not keep within the broker's Receive Maximum (and cannot change its own
            # limit on a connection); going over it, the broker would close the connection
            self.refused = (
                f"its Receive Maximum ({rm}) is below the {MAX_INFLIGHT} publishes this sends at once"
            )
            c.disconnect()
            self.answered.set()
            return
        self.receive_maximum = rm
        self.maximum_packet_size = getattr(props, "MaximumPacketSize", None) if props is not None else None
        for topic in self.subscriptions:
            c.subscribe(topic, qos=1)
        self.connects += 1
        self.connected.set()
        self.answered.set()
        self.events.put(("connected", self.n))

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self.connected.clear()
        self.events.put(("disconnected", (self.n, str(rc))))

    def _on_publish(self, _c: mqtt.Client, _u: Any, _mid: int, rc: ReasonCode, _p: Any) -> None:
        if rc.is_failure:
            self.failed += 1
            self.last_failure = str(rc)
        else:
            self.acked += 1

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.events.put(("message", (msg.topic, bytes(msg.payload))))


# ----------------------------------------------------------------------------- the fleet


@dataclass(frozen=True, slots=True)
class FleetOptions:
    kiosks: int
    host: str = "127.0.0.1"
    port: int = 1883
    topic_prefix: str = "ektp/v1"
    interval_s: float = 30.0
    regions: tuple[str, ...] = DEFAULT_REGIONS
    packets_per_hour: float = 0.0  # across the whole fleet
    keys_dir: Path | None = None
    central_public_key: Path | None = None
    fault_rate: float = 0.0
    duration_s: float | None = None
    seed: int = 1
    connections: int | None = None
    chunk_bytes: int = DEFAULT_CHUNK_BYTES


@dataclass
class FleetReport:
    """What a run did; ``line()`` is the one-line summary printed on stop."""

    kiosks: int = 0
    seconds: float = 0.0
    published: int = 0  # PUBACKed with success
    status: int = 0
    health: int = 0
    chunks: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    packets: int = 0
    stored: int = 0
    duplicate: int = 0
    rejected: int = 0
    unanswered: int = 0
    resent: int = 0
    bad_acks: int = 0
    faults_started: int = 0
    lag_p50_s: float = 0.0
    lag_p99_s: float = 0.0
    lag_max_s: float = 0.0
    behind: int = 0  # health publishes later than BEHIND_S against their slot

    def line(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.error_kinds.items()))
        return (
            f"fleet stopped after {self.seconds:.1f} s: {self.kiosks} kiosks, published {self.published} "
            f"(status {self.status}, health {self.health}, chunks {self.chunks}), errors {self.errors}"
            f"{f' ({kinds})' if kinds else ''}; packets {self.packets}: stored {self.stored}, duplicate "
            f"{self.duplicate}, rejected {self.rejected}, unanswered {self.unanswered}; schedule lag "
            f"p50 {self.lag_p50_s:.3f} s, p99 {self.lag_p99_s:.3f} s, max {self.lag_max_s:.3f} s"
        )

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class FleetSimulator:
    """N kiosks over a pool of connections; ``run(stop)`` until ``stop`` is set or the duration ends.

    Everything but paho's callbacks runs on the calling thread: the schedule, the kiosks'
    state, sealing and the acks (handed over through ``events``)."""

    def __init__(self, opts: FleetOptions, *, say: Callable[[str], None] = print) -> None:
        if opts.kiosks < 1:
            raise ValueError("kiosks must be at least 1")
        if opts.interval_s <= 0:
            raise ValueError("interval must be positive")
        if not 0.0 <= opts.fault_rate <= 1.0:
            raise ValueError("fault rate must be within 0..1")
        if opts.packets_per_hour and (opts.keys_dir is None or opts.central_public_key is None):
            raise ValueError("packets need --keys-dir (the kiosks' keys) and --central-public-key")
        self.opts = opts
        self.say = say
        self.rng = random.Random(opts.seed)
        ids = kiosk_ids(opts.kiosks, check_regions(opts.regions))
        n_conn = opts.connections or max(1, math.ceil(opts.kiosks / KIOSKS_PER_CONNECTION))
        self.n_connections = max(1, min(n_conn, opts.kiosks))
        self.kiosks = [
            SimKiosk(
                kiosk_id,
                i,
                i * opts.interval_s / opts.kiosks,
                i % self.n_connections,
                disk_free_base=self.rng.randrange(6_000_000_000, 28_000_000_000),
                temp_base=round(self.rng.uniform(42.0, 62.0), 1),
                load_1m=round(self.rng.uniform(0.05, 0.6), 2),
            )
            for i, kiosk_id in enumerate(ids)
        ]
        self.by_id = {k.kiosk_id: k for k in self.kiosks}
        self.events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.pool: list[PoolConnection] = []
        self.central: CentralPublicKeys | None = None
        self.records: Any = None  # agent.synthetic.SyntheticRecords, when packets are on
        self.report = FleetReport(kiosks=opts.kiosks)
        self._lags: deque[float] = deque(maxlen=LAG_SAMPLES)
        self._lag_max = 0.0
        self._last_behind_report = 0.0
        self._base_connection = int(time.time())
        self._p_fault = self._fault_start_probability(opts.fault_rate)
        self._seqs: dict[str, int] = {}
        self._errors: dict[str, int] = {}

    # ------------------------------------------------------------------ set-up

    @staticmethod
    def _fault_start_probability(rate: float) -> float:
        """Per interval, for a well kiosk: holds ``rate`` of the fleet in fault (mean fault length D)."""
        if rate <= 0:
            return 0.0
        if rate >= 1:
            return 1.0
        mean = sum(FAULT_TICKS) / 2
        return min(1.0, rate / (mean * (1 - rate)))

    def _start_fault(self, k: SimKiosk, *, remaining: int | None = None) -> None:
        k.fault = self.rng.choice(FAULTS)
        k.fault_ticks = remaining if remaining is not None else self.rng.randint(*FAULT_TICKS)
        self.report.faults_started += 1

    def prepare(self) -> None:
        """Keys, the synthetic records and the fleet's first faults (before any connection).

        :raises FleetError: keys that cannot be read or written
        """
        o = self.opts
        if o.keys_dir is not None:
            keys = ensure_keys(o.keys_dir, [k.kiosk_id for k in self.kiosks])
            for k in self.kiosks:
                k.key = keys[k.kiosk_id]
            self._seqs = read_seqs(o.keys_dir)
            for k in self.kiosks:
                k.seq = self._seqs.get(k.kiosk_id, 0)
        if o.central_public_key is not None:
            try:
                self.central = load_central_public(o.central_public_key)
            except (OSError, ValueError) as exc:
                raise FleetError(f"the centre's public key: {exc}") from exc
        if o.packets_per_hour:
            from agent.synthetic import SyntheticRecords

            self.records = SyntheticRecords(pool_size=2)
            for seed in range(2):  # rendering takes a few hundred ms: not in the schedule's time
                self.records.record(seed)
        for k in self.kiosks:
            if o.fault_rate and self.rng.random() < o.fault_rate:
                # caught part-way through: a fault seen at a random moment is a long one more often
                lengths = range(FAULT_TICKS[0], FAULT_TICKS[1] + 1)
                length = self.rng.choices(lengths, weights=lengths)[0]
                self._start_fault(k, remaining=self.rng.randint(1, length))

    def connect(self) -> None:
        """:raises BrokerUnavailable: a connection of the pool could not be made"""
        o = self.opts
        for n in range(self.n_connections):
            conn = PoolConnection(n, o.host, o.port, self.events)
            if n == 0 and self.central is not None and o.packets_per_hour:
                conn.subscriptions = [f"{o.topic_prefix}/+/ack"]  # every kiosk's acks, on one connection
            try:
                conn.start()
            except BrokerUnavailable:
                self.close()
                raise
            self.pool.append(conn)

    def close(self) -> None:
        """Disconnect every connection of the pool (idempotent); their counters stay for the report."""
        for conn in self.pool:
            conn.stop()

    # ------------------------------------------------------------------ the run

    def run(self, stop: threading.Event) -> FleetReport:
        """Publish until ``stop`` is set or the duration ends; then offline for every kiosk."""
        o = self.opts
        started = time.monotonic()
        end = started + o.duration_s if o.duration_s is not None else math.inf
        n = len(self.kiosks)
        slot, rounds = 0, 0
        rate = o.packets_per_hour / 3600.0
        next_packet = started + self.rng.expovariate(rate) if rate else math.inf
        next_resend = started + ACK_TIMEOUT_S
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now >= end:
                    break
                self._handle_events()
                due = started + rounds * o.interval_s + self.kiosks[slot].phase_s
                while due <= now and not stop.is_set():
                    self._tick(self.kiosks[slot], due)
                    slot += 1
                    if slot == n:
                        slot, rounds = 0, rounds + 1
                    due = started + rounds * o.interval_s + self.kiosks[slot].phase_s
                    now = time.monotonic()
                if now >= next_packet:
                    self._new_packet(self.kiosks[self.rng.randrange(n)])
                    next_packet = now + self.rng.expovariate(rate)
                if now >= next_resend:
                    self._resend_unanswered(now)
                    next_resend = now + ACK_TIMEOUT_S / 4
                wait = min(due, next_packet, end, now + IDLE_WAIT_S) - time.monotonic()
                if wait > 0:
                    stop.wait(wait)
            self._goodbye()
        finally:
            self.close()
        return self._finish(time.monotonic() - started)

    def _error(self, kind: str, n: int = 1) -> None:
        self._errors[kind] = self._errors.get(kind, 0) + n

    def _conn(self, k: SimKiosk) -> PoolConnection:
        return self.pool[k.connection]

    def _topic(self, k: SimKiosk, leaf: str) -> str:
        return f"{self.opts.topic_prefix}/{k.kiosk_id}/{leaf}"

    def _publish(self, k: SimKiosk, leaf: str, payload: bytes, *, retain: bool, props: Any = None) -> bool:
        conn = self._conn(k)
        if not conn.connected.is_set():
            self._error("not connected")
            return False
        if conn.awaiting >= MAX_AWAITING:
            self._error("broker behind")
            return False
        if not conn.publish(self._topic(k, leaf), payload, retain=retain, props=props):
            self._error("publish refused by paho")
            return False
        return True

    def _status_counter(self, k: SimKiosk) -> int:
        return self._base_connection + self._conn(k).reconnects

    def _tick(self, k: SimKiosk, due: float) -> None:
        """The kiosk's slot: online if it has not said so on this connection, then its health."""
        conn = self._conn(k)
        counter = self._status_counter(k)
        if (
            k.online_connection != counter
            and conn.connected.is_set()
            and self._publish(k, "status", status_payload(k.kiosk_id, "online", counter), retain=True)
        ):
            k.online_connection = counter
            self.report.status += 1
        self._age_fault(k)
        link = LinkStats(
            connected=conn.connected.is_set(),
            reconnects=conn.reconnects,
            connection=counter,
            receive_maximum=conn.receive_maximum,
            maximum_packet_size=conn.maximum_packet_size,
            in_flight=len(k.pending),
            published=k.chunks_published,
            republished=k.chunks_republished,
            refused_pubacks=k.refused_pubacks,
        )
        now = time.monotonic()
        doc = health_doc(k, link=link, now=now, wall=time.time(), temp_noise=self.rng.gauss(0.0, 0.6))
        if self._publish(k, "health", json.dumps(doc).encode(), retain=True):
            self.report.health += 1
        lag = now - due
        self._lags.append(lag)
        self._lag_max = max(self._lag_max, lag)
        if lag > BEHIND_S:
            self.report.behind += 1
            if now - self._last_behind_report >= BEHIND_REPORT_S:
                self._last_behind_report = now
                self.say(
                    f"fleet: behind schedule: a health left {lag:.1f} s after its slot ({self.opts.kiosks} "
                    f"kiosks every {self.opts.interval_s:g} s is more than this process keeps up with)"
                )

    def _age_fault(self, k: SimKiosk) -> None:
        if k.fault is not None:
            k.fault_ticks -= 1
            if k.fault_ticks <= 0:
                k.fault = None
        elif self._p_fault and self.rng.random() < self._p_fault:
            self._start_fault(k)

    # ------------------------------------------------------------------ packets

    def _new_packet(self, k: SimKiosk) -> None:
        assert self.central is not None and self.records is not None and k.key is not None
        k.seq += 1
        sealed = seal(
            self.records.record(k.index * 1_000_003 + k.seq),
            kiosk_id=k.kiosk_id,
            seq=k.seq,
            kiosk_key=k.key,
            central_public=self.central.encryption,
            clock_synced=True,
            synthetic=True,
        )
        self._seqs[k.kiosk_id] = k.seq
        assert self.opts.keys_dir is not None
        try:
            write_seqs(self.opts.keys_dir, self._seqs)
        except OSError as exc:
            self._error("seq file")
            log.warning("cannot record the seqs in %s: %s", self.opts.keys_dir, exc)
        p = PendingPacket(
            sealed.packet_id, sealed.seq, sealed.data, packet_sha256(sealed.data), time.monotonic()
        )
        k.pending[p.packet_id] = p
        self.report.packets += 1
        self._send_packet(k, p)

    def _chunk_size(self, k: SimKiosk) -> int:
        limit = self._conn(k).maximum_packet_size
        size = self.opts.chunk_bytes
        if limit is not None:
            size = min(size, max(1024, limit - MQTT_OVERHEAD - HEAD_LEN))
        return size

    def _send_packet(self, k: SimKiosk, p: PendingPacket) -> None:
        """Every chunk of the packet, with the user properties the agent's link sets."""
        again = p.attempts > 0
        p.attempts += 1
        p.sent = time.monotonic()
        size = self._chunk_size(k)
        for offset in range(0, len(p.data), size):
            chunk = Chunk(p.packet_id, p.sha256, len(p.data), offset, p.data[offset : offset + size])
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.UserProperty = [
                ("packet-id", p.packet_id),
                ("seq", str(p.seq)),
                ("kiosk", k.kiosk_id),
                ("offset", str(offset)),
                ("total", str(len(p.data))),
            ]
            if self._publish(k, "enrollment", chunk.to_bytes(), retain=False, props=props):
                self.report.chunks += 1
                k.chunks_published += 1
                k.chunks_republished += int(again)

    def _resend_unanswered(self, now: float) -> None:
        for k in self.kiosks:
            for p in list(k.pending.values()):
                if now - p.sent >= ACK_TIMEOUT_S:
                    self.report.resent += 1
                    self._send_packet(k, p)

    def _handle_events(self) -> None:
        while True:
            try:
                kind, value = self.events.get_nowait()
            except queue.Empty:
                return
            if kind == "message":
                self._on_ack(*value)
            elif kind == "disconnected":
                n, reason = value
                self.say(f"fleet: connection {n} to the broker lost ({reason}); paho reconnects it")
            elif kind == "connected" and self.pool and self.pool[value].reconnects:
                self.say(f"fleet: connection {value} to the broker is back; its kiosks say online again")

    def _on_ack(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        k = self.by_id.get(parts[-2]) if len(parts) >= 2 else None
        if k is None or self.central is None:
            return  # another kiosk's ack (a real one on this broker)
        try:
            ack = verify_ack(payload, key=self.central.signing, kiosk=k.kiosk_id)
        except AckError as exc:
            self.report.bad_acks += 1
            log.warning("ignored an ack for kiosk %s: %s", k.kiosk_id, exc)
            return
        for r in ack.results:
            p = k.pending.get(r.packet_id)
            if p is None or p.sha256 != r.sha256:
                continue
            if r.status.delivered:
                del k.pending[r.packet_id]
                k.delivered += 1
                if r.status is AckStatus.STORED:
                    self.report.stored += 1
                else:
                    self.report.duplicate += 1
            elif r.status.refused:
                del k.pending[r.packet_id]
                k.rejected += 1
                k.rejected_bytes += len(p.data)
                k.rejected_reason = f"{r.status}: {r.reason}"
                self.report.rejected += 1
            elif r.status is AckStatus.DAMAGED:
                self._send_packet(k, p)

    # ------------------------------------------------------------------ the end

    def _goodbye(self) -> None:
        """A clean stop: offline for every kiosk that said online, and their PUBACKs awaited."""
        for k in self.kiosks:
            if k.online_connection is None:
                continue
            counter = self._status_counter(k)
            if self._publish(k, "status", status_payload(k.kiosk_id, "offline", counter), retain=True):
                self.report.status += 1
        deadline = time.monotonic() + STOP_WAIT_S
        while any(c.awaiting for c in self.pool) and time.monotonic() < deadline:
            self._handle_events()
            time.sleep(0.02)
        self._handle_events()

    def _finish(self, seconds: float) -> FleetReport:
        r = self.report
        r.seconds = seconds
        r.published = sum(c.acked for c in self.pool)
        failed = sum(c.failed for c in self.pool)
        unacked = sum(max(0, c.awaiting) for c in self.pool)
        if failed:
            self._error("refused by the broker", failed)
        if unacked:
            self._error("no PUBACK", unacked)
        r.unanswered = sum(len(k.pending) for k in self.kiosks)
        r.error_kinds = dict(self._errors)
        r.errors = sum(self._errors.values())
        lags = sorted(self._lags)
        if lags:
            r.lag_p50_s = round(lags[len(lags) // 2], 4)
            r.lag_p99_s = round(lags[min(len(lags) - 1, int(len(lags) * 0.99))], 4)
            r.lag_max_s = round(self._lag_max, 4)
        return r
