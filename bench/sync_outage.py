"""After an outage: how long `ektp-agent sync --wait`, asked the moment the broker returns,
takes to bring the backlog to the centre.

The kiosk (`ektp-agent run --simulate`, the default reconnect backoff of 1 .. 120 s) and
the centre (`ektp-central run`) on a Mosquitto of the bench's own; the broker is stopped,
N synthetic enrollments (~250 KB each) are committed through the local API while it is
down, the outage lasts ``--outage`` seconds (the kiosk's backoff climbs meanwhile), then
the broker starts and `ektp-agent sync --wait` runs at once. Under protocol 1 the kiosk
slept out its backoff first (46 s for 50 packets after a one-minute outage); `sync` now
cuts the backoff short. Goal: 50 packets in <= 10 s. The last line is a JSON object.

    .venv/bin/python bench/sync_outage.py               # 50 packets, a 60 s outage
    .venv/bin/python bench/sync_outage.py --outage 20   # quicker
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.api import call, request
from tests.agentkit import Kit
from tests.netkit import Broker

GOAL_S = 10.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50, help="enrollments committed during the outage (default 50)")
    ap.add_argument("--outage", type=float, default=60.0, help="seconds the broker stays down (default 60)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ektp-sync-outage-"))
    broker = Broker(work / "broker")
    broker.start()
    kit = Kit(work / "kit", broker.port, health_s=5.0)
    conf = kit.agent_conf.read_text()
    # the agent's own defaults for the backoff, not the tests' quick ones
    kit.agent_conf.write_text(conf.replace("reconnect_min_s = 0.2\nreconnect_max_s = 1\n", ""))
    try:
        kit.setup_keys()
        kit.start_central()
        kit.start_agent()
        broker.stop()
        outage_started = time.monotonic()
        api = kit.data_dir / "api.sock"
        got = sum(
            1 for _ in request(api, "enroll", synthetic=True, direct=True, count=args.n, seed=1, timeout=600)
        )
        assert got == args.n, f"{got} receipts for {args.n}"
        print(f"committed {args.n} during the outage; waiting {args.outage:.0f} s", file=sys.stderr)
        time.sleep(max(0.0, args.outage - (time.monotonic() - outage_started)))
        connected = bool(call(api, "status")[0].get("link", {}).get("connected"))
        broker.start()
        started = time.monotonic()
        p = kit.agent_cli("sync", "--wait", "--timeout", "120", timeout=180)
        took = time.monotonic() - started
        stored = [r for r in kit.central_packets() if r["kiosk"] == kit.kiosk_id]
        figure = {
            "n": args.n,
            "outage_s": args.outage,
            "connected_when_broker_returned": connected,
            "sync_wait_s": round(took, 2),
            "sync_exit": p.returncode,
            "central_packets": len(stored),
            "goal_s": GOAL_S,
            "goal_met": p.returncode == 0 and took <= GOAL_S,
        }
        print(json.dumps(figure))
        return 0 if p.returncode == 0 and len(stored) == args.n else 1
    finally:
        kit.close()
        broker.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
