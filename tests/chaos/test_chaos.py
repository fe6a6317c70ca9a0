"""Bounded chaos on the whole kit (console scripts, real Mosquitto, simulator, centre).

The full runs with their figures are in bench/chaos.py; these are the short, seeded
versions that run in `make test`. Each prints its figure (``pytest -s`` shows it).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

from tests.agentkit import Kit, script
from tests.netkit import Broker

KIOSK = "320715-01"
FULL = os.environ.get("EKTP_CHAOS") == "full"  # bench/chaos.py: the full runs of issue 6


def enroll_direct(k: Kit, count: int, seed: int) -> subprocess.Popen[str]:
    """A loader that commits through the service's API and prints each receipt as it comes."""
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from agent.api import request\n"
        f"for item in request(Path({str(k.data_dir / 'api.sock')!r}), 'enroll', synthetic=True, direct=True,"
        f" count={count}, seed={seed}, timeout=120):\n"
        "    print(json.dumps(item['receipt']), flush=True)\n"
    )
    return subprocess.Popen(
        [str(Path(script("ektp-agent")).parent / "python"), "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def collect(
    loader: subprocess.Popen[str], timeout: float = 60, first: list[dict[str, object]] | None = None
) -> list[dict[str, object]]:
    out, _err = loader.communicate(timeout=timeout)
    return (first or []) + [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def check_exactly_once(k: Kit, receipts: list[dict[str, object]]) -> dict[str, int]:
    rows = k.central_packets()
    ids = [r["packet_id"] for r in rows]
    want = {r["packet_id"] for r in receipts}
    return {"receipts": len(want), "lost": len(want - set(ids)), "duplicated": len(ids) - len(set(ids))}


def test_r1_sigkill_at_random_moments_loses_nothing(kit: tuple[Kit, Broker]) -> None:
    k, _broker = kit
    rnd = random.Random(1)
    k.start_central()
    receipts: list[dict[str, object]] = []
    kills = 100 if FULL else 5
    for i in range(kills):
        k.start_agent()
        loader = enroll_direct(k, 200, seed=1000 * (i + 1))
        assert loader.stdout is not None
        first = [json.loads(loader.stdout.readline()) for _ in range(3)]  # committing, and draining
        time.sleep(rnd.uniform(0.0, 0.6))
        assert k.agent is not None
        os.kill(k.agent.pid, signal.SIGKILL)
        k.agent.wait(10)
        receipts += collect(loader, first=first)
        p = k.agent_cli("queue", "--json")  # the store reads clean after every crash
        assert p.returncode == 0, p.stderr
    k.start_agent()
    assert k.agent_cli("sync", "--wait", "--timeout", "120").returncode == 0
    figure = check_exactly_once(k, receipts)
    print(f"R1 kills={kills} {' '.join(f'{a}={b}' for a, b in figure.items())}")
    assert figure["receipts"] > 0 and figure["lost"] == 0 and figure["duplicated"] == 0
    seqs = sorted(int(r["seq"]) for r in k.central_packets())  # type: ignore[call-overload]
    assert seqs == list(range(1, len(seqs) + 1)), "a gap in the kiosk's sequence"


def test_r4_store_bound_refuses_cleanly_and_recovers(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    k = Kit(tmp_path / "kit", broker.port, extra_agent="[store]\nmax_bytes = 1000000\n")  # ~4 packets
    try:
        k.setup_keys()
        k.start_agent()  # the broker is down: nothing drains
        loader = enroll_direct(k, 10, seed=1)
        receipts = collect(loader)
        assert loader.returncode != 0
        assert 2 <= len(receipts) < 10
        p = k.agent_cli("enroll", "--synthetic")
        assert p.returncode == 1
        assert "store.max_bytes" in p.stderr or "full" in p.stderr, p.stderr
        doc = k.status()
        assert doc["queue"]["pending"] == len(receipts) and doc["queue"]["near_full"] is True
        broker.start()
        k.start_central()
        assert k.agent_cli("sync", "--wait", "--timeout", "60").returncode == 0
        assert check_exactly_once(k, receipts)["lost"] == 0
        assert len(k.enroll(1)) == 1  # room again once the centre has them
        print(f"R4 refused_at={len(receipts)} lost=0")
    finally:
        k.close()
        broker.stop()


def test_r8_corrupt_outbox_is_quarantined_salvaged_and_reported(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    k = Kit(tmp_path / "kit", broker.port)
    try:
        k.setup_keys()
        k.start_agent()
        receipts = collect(enroll_direct(k, 40, seed=1))
        assert len(receipts) == 40
        assert k.agent is not None
        k.agent.send_signal(signal.SIGTERM)
        assert k.agent.wait(30) == 0
        db = k.data_dir / "outbox.db"
        size = db.stat().st_size
        with open(db, "r+b") as f:  # scribble over a few pages in the middle
            for offset in (size // 3, size // 2, 2 * size // 3):
                f.seek(offset - offset % 4096)
                f.write(os.urandom(4096))
        k.start_agent()
        doc = k.status()
        quarantined = doc["store"]["quarantined"]
        assert len(quarantined) == 1 and Path(quarantined[0]).exists()
        assert "salvaged" in k.log("agent")
        assert k.agent_cli("status").returncode == 1  # the technician is told
        salvaged = json.loads(k.agent_cli("queue", "--json").stdout)
        assert 0 < len(salvaged) <= 40
        broker.start()
        k.start_central()
        assert k.agent_cli("sync", "--wait", "--timeout", "60").returncode == 0
        stored = {r["packet_id"] for r in k.central_packets()}
        assert {r["packet_id"] for r in salvaged} <= stored
        print(f"R8 committed=40 salvaged={len(salvaged)} quarantined=1")
    finally:
        k.close()
        broker.stop()


KEY_RE = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")
MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")


def test_s1_no_biometrics_or_keys_in_logs_or_cli_output(kit: tuple[Kit, Broker]) -> None:
    k, _broker = kit
    k.start_central()
    k.start_agent()
    outputs = [k.agent_cli("enroll", "--synthetic", "--count", "2")]
    outputs += [
        k.agent_cli(*args)
        for args in (
            ["status"],
            ["status", "--json"],
            ["queue"],
            ["queue", "--json"],
            ["diag"],
            ["keys", "show"],
        )
    ]
    outputs += [k.agent_cli("sync", "--wait", "--timeout", "60")]
    outputs += [
        k.central_cli(*args) for args in (["packets", "--json"], ["fleet", "--json"], ["kiosks", "--json"])
    ]
    os.environ.setdefault("EKTP_LOG_LEVEL", "INFO")
    blobs = [p.stdout.encode() + p.stderr.encode() for p in outputs]
    blobs += [path.read_bytes() for path in k.root.glob("*.log")]
    blobs += [path.read_bytes() for path in (k.data_dir / "sim").glob("*.log")]
    private_keys = [
        (k.data_dir / "kiosk.key").read_bytes(),
        (k.root / "central" / "central.key").read_bytes(),
    ]
    secrets = [
        line for key in private_keys for line in key.splitlines() if line and not line.startswith(b"-----")
    ]
    found = []
    for blob in blobs:
        found += [m.decode() for m in MAGIC if m in blob]
        found += ["private key PEM" for _ in KEY_RE.finditer(blob)]
        found += ["private key material" for s in secrets if s in blob]
        found += ["a NIK" for _ in re.finditer(rb"\b\d{16}\b", blob)]
    print(f"S1 outputs={len(blobs)} findings={len(found)}")
    assert found == []
    assert k.agent_cli("keys", "show").stdout.count("PUBLIC KEY") == 2  # the public key is shown, only it
