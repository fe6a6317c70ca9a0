"""The sync over a thin link that is cut every half minute: how much of the link's capacity
ends up as whole packets in the central store.

The kiosk (the real ``Link`` over a real outbox, in this process, holding sealed packets of
synthetic residents) reaches a Mosquitto of the bench's own (free loopback port) through a
userspace TCP proxy: a token bucket per direction at ``--rate-kbit``, a small buffer (the
proxy reads from the kiosk no faster than the rate, so the kiosk's TCP send buffer backs
up), and every ``--cut-every`` seconds both sides of every connection closed and new ones
refused for ``--down`` seconds. The centre is a real ``ektp-central run`` process of this
tree with its SQLite store, connected straight to the broker. The run lasts ``--duration``
seconds; the centre's store is then read.

Figures: ``goodput_fraction`` = bytes of whole packets the centre holds / (rate x time the
link was up); ``goodput_fraction_wall`` the same over rate x wall time;
``enrollments_per_hour`` = whole packets in the centre's store per hour of the run's wall time
(``enrollments_per_hour_up`` per hour of the time the link was up). Lost (freed on the
kiosk, not at the centre), duplicated and unknown packets must be 0: exit 1 otherwise.

The packets are sealed synthetic residents of ``agent.synthetic``: record version 2 (about
90 KB with 4-bit fingers, JPEG 2000 fingers and irises). ``--record-version 1`` seals the
records as version 1 sent them instead (PNG fingers and irises, the camera's JPEG: about
250 KB), for the figure before the compression; the centre still reads version 1. Without
``--packets`` the kiosk gets enough packets of the size one of them seals to never run out.

Goals (a measurement: a missed goal does not change the exit status):
>= 0.6 at 64 kbit/s with a cut every 30 s; >= 0.85 at 128 kbit/s with a cut every 60 s.

    .venv/bin/python bench/thin_link.py                                   # 64 kbit/s, cut every 30 s, 4 min
    .venv/bin/python bench/thin_link.py --rate-kbit 128 --cut-every 60    # the second goal
    .venv/bin/python bench/thin_link.py --rate-kbit 1000 --cut-every 20 --duration 60   # a quick check
    .venv/bin/python bench/thin_link.py --record-version 1                # before the compression

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tests.thinkit
from agent.config import AgentConfig
from agent.synthetic import SyntheticRecords, record_from_resident
from hw_sim.residents import synthetic_resident
from tests.netkit import mosquitto_binary
from tests.record_v1 import as_version_1
from tests.thinkit import ThinRun, ThinSettings
from wire.packet import seal
from wire.record import EnrollmentRecord

# (rate kbit/s, cut every s) -> the goodput fraction the resumable sync must reach there
GOALS = {(64.0, 30.0): 0.6, (128.0, 60.0): 0.85}


def goal_for(rate_kbit: float, cut_every_s: float) -> float | None:
    return GOALS.get((float(rate_kbit), float(cut_every_s)))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate-kbit", type=float, default=64.0, help="the link's rate each way (default 64)")
    p.add_argument("--cut-every", type=float, default=30.0, help="seconds between cuts; 0: none (default 30)")
    p.add_argument("--down", type=float, default=2.0, help="seconds the link stays down at a cut (default 2)")
    p.add_argument("--duration", type=float, default=240.0, help="seconds the run lasts (default 240)")
    p.add_argument(
        "--packets",
        type=int,
        default=None,
        help="packets committed before the run (default: the capacity over the run in packets of the measured size x 1.25, plus a window)",
    )
    p.add_argument("--chunk-bytes", type=int, default=None, help="the kiosk's [mqtt] chunk_bytes")
    p.add_argument(
        "--window", type=int, default=None, help="the kiosk's [mqtt] window (default: the agent's)"
    )
    p.add_argument(
        "--mqtt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another [mqtt] key of the kiosk, e.g. reconnect_max_s=2 (repeatable; default: the agent's)",
    )
    p.add_argument("--seed", type=int, default=1, help="first synthetic resident (default 1)")
    p.add_argument(
        "--record-version",
        type=int,
        choices=(1, 2),
        default=2,
        help="2: the kiosk's records (compressed, ~90 KB); 1: as version 1 sent them (~250 KB) (default 2)",
    )
    p.add_argument("--dir", default=None, help="where to put the run's temp dir (default: the system's)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, stores) and print its path")
    p.add_argument("--json-only", action="store_true", help="print only the JSON object on stdout")
    args = p.parse_args(argv)
    if args.rate_kbit <= 0 or args.duration <= 0 or args.down < 0 or args.cut_every < 0:
        p.error("--rate-kbit and --duration must be positive, --down and --cut-every not negative")
    if args.cut_every and args.down >= args.cut_every:
        p.error("--down must be shorter than --cut-every")
    if args.packets is not None and args.packets < 1:
        p.error("--packets must be positive")
    try:
        args.mqtt = dict(_key_value(item) for item in args.mqtt)
    except ValueError as exc:
        p.error(str(exc))
    return args


def _key_value(item: str) -> tuple[str, object]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--mqtt takes KEY=VALUE, not {item!r}")
    value: object = raw.strip()
    for kind in (int, float):
        try:
            value = kind(raw)
            break
        except ValueError:
            pass
    if raw.strip() in ("true", "false"):
        value = raw.strip() == "true"
    return key.strip(), value


class _SyntheticRecordsV1(SyntheticRecords):
    """``agent.synthetic.SyntheticRecords`` with uncompressed images sealed as record version 1."""

    def record(self, seed: int) -> EnrollmentRecord:
        slot = seed % self.pool_size
        if slot not in self._pool:
            plain = record_from_resident(synthetic_resident(slot + 1_000_000), compressed=False)
            self._pool[slot] = as_version_1(plain)
        return super().record(seed)


def _packet_bytes(record_version: int, seed: int) -> int:
    """The size of one sealed packet of the records the run commits (throwaway keys)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    records = _SyntheticRecordsV1(pool_size=1) if record_version == 1 else SyntheticRecords(pool_size=1)
    sealed = seal(
        records.record(seed), kiosk_id="320715-01", seq=1, kiosk_key=Ed25519PrivateKey.generate(),
        central_public=X25519PrivateKey.generate().public_key(), clock_synced=True,
    )  # fmt: skip
    return len(sealed.data)


def _default_packets(args: argparse.Namespace, packet_bytes: int) -> int:
    """Enough packets never to run out: the link's capacity over the run x 1.25, plus a window."""
    window = args.window or AgentConfig().mqtt.window
    return math.ceil(args.rate_kbit * 1000 / 8 * args.duration / packet_bytes * 1.25) + window


def _raise_on_sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _summary(fig: dict[str, Any]) -> list[str]:
    goal = fig["goal"]
    spread = fig["reconnect_after_outage_s"]
    reconnect = (
        f"the kiosk back {spread['median']} s after an outage (median; max {spread['max']} s)"
        if spread
        else "no reconnect after an outage"
    )
    lines = [
        f"thin link {fig['rate_kbit']:g} kbit/s, cut every {fig['cut_every_s']:g} s for {fig['down_s']:g} s, "
        f"{fig['elapsed_s']} s ({fig['up_s']} s up, {fig['cuts']} cuts)",
        f"  centre holds {fig['packets_stored']} of {fig['packets_committed']} packets, "
        f"{fig['stored_bytes'] / 1e3:.1f} KB; link capacity {fig['capacity_bytes'] / 1e3:.1f} KB up-time, "
        f"{fig['capacity_bytes_wall'] / 1e3:.1f} KB wall",
        f"  {fig['enrollments_per_hour']} enrollments per hour of wall time "
        f"({fig['enrollments_per_hour_up']} per hour of link-up time), record version {fig['record_version']}",
        f"  goodput {fig['goodput_fraction']} of the up-time capacity, {fig['goodput_fraction_wall']} of wall"
        + (
            f" (goal >= {goal}: {'met' if fig['goal_met'] else 'NOT met'})"
            if goal is not None
            else " (no goal at these settings)"
        ),
        f"  proxy carried {fig['proxy_up_bytes'] / 1e3:.1f} KB up, {fig['proxy_down_bytes'] / 1e3:.1f} KB down; "
        f"{fig['connections']} connections, {fig['refused_connects']} refused; kiosk reconnects "
        f"{fig['link_reconnects']}, {reconnect}",
        f"  lost {fig['lost']}, duplicated {fig['duplicated']}, unknown at the centre {fig['unknown_at_centre']}",
    ]
    if fig["ran_out"]:
        lines.append("  the kiosk ran out of packets: the figure is bounded by --packets, not by the link")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    mosquitto_binary()  # fail early, with the install hint, when there is no broker binary
    packet_bytes = _packet_bytes(args.record_version, args.seed)
    if args.packets is None:
        args.packets = _default_packets(args, packet_bytes)
    if args.record_version == 1:
        tests.thinkit.SyntheticRecords = _SyntheticRecordsV1  # type: ignore[misc]  # the kiosk's commit
    settings = ThinSettings(
        rate_kbit=args.rate_kbit,
        cut_every_s=args.cut_every,
        down_s=args.down,
        duration_s=args.duration,
        packets=args.packets,
        chunk_bytes=args.chunk_bytes,
        window=args.window,
        mqtt=args.mqtt,
        seed=args.seed,
    )
    work = Path(tempfile.mkdtemp(prefix="ektp-thin-", dir=args.dir))

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        with ThinRun(work, settings, say) as run:
            run.prepare()
            fig = run.run(args.duration)
    except KeyboardInterrupt:
        say("interrupted; cleaning up")
        return 130
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    fig["record_version"] = args.record_version
    hours, up_hours = fig["elapsed_s"] / 3600, fig["up_s"] / 3600
    fig["enrollments_per_hour"] = round(fig["packets_stored"] / hours, 1) if hours else None
    fig["enrollments_per_hour_up"] = round(fig["packets_stored"] / up_hours, 1) if up_hours else None
    goal = goal_for(args.rate_kbit, args.cut_every)
    fig["goal"] = goal
    fig["goal_met"] = (
        None if goal is None or fig["goodput_fraction"] is None else fig["goodput_fraction"] >= goal
    )
    fig["goals"] = {f"{r:g}kbit_cut{c:g}s": g for (r, c), g in GOALS.items()}
    bad = fig["lost"] or fig["duplicated"] or fig["unknown_at_centre"] or fig["centre_died"]
    if not args.json_only:
        print("\n".join(_summary(fig)))
        if bad:
            print("  FAILED: a packet was lost, duplicated or unknown at the centre, or the centre died")
    print(json.dumps(fig))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
