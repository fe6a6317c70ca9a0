"""Packet overhead over the raw biometric bytes, and seal/open times, for synthetic residents.

Run from the repository root: ``.venv/bin/python bench/packet_overhead.py [--count N]``.
The last line printed is a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from hw_sim.residents import synthetic_resident
from tests.factories import record_from_resident
from wire.packet import open_packet, packet_overhead, seal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10, help="residents per finger depth")
    args = parser.parse_args()
    kiosk, centre = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    figures: dict[str, float] = {}
    for bits in (4, 8):
        sizes, overheads, seal_ms, open_ms = [], [], [], []
        for seed in range(1, args.count + 1):
            record = record_from_resident(synthetic_resident(seed), finger_bits=bits)
            t0 = time.perf_counter()
            sealed = seal(
                record, kiosk_id="320715-01", seq=seed, kiosk_key=kiosk,
                central_public=centre.public_key(), clock_synced=True,
            )  # fmt: skip
            t1 = time.perf_counter()
            open_packet(sealed.data, kiosk_public=kiosk.public_key(), central_private=centre)
            t2 = time.perf_counter()
            sizes.append(record.biometric_bytes())
            overheads.append(packet_overhead(sealed, record))
            seal_ms.append((t1 - t0) * 1000)
            open_ms.append((t2 - t1) * 1000)
        pct = [100 * o / s for o, s in zip(overheads, sizes, strict=True)]
        print(
            f"{bits}-bit fingers: biometrics median {statistics.median(sizes) / 1000:.1f} KB, "
            f"overhead median {statistics.median(overheads)} B = {statistics.median(pct):.3f} % "
            f"(max {max(pct):.3f} %), seal {statistics.median(seal_ms):.2f} ms, "
            f"open {statistics.median(open_ms):.2f} ms"
        )
        figures[f"biometric_bytes_{bits}bit"] = statistics.median(sizes)
        figures[f"overhead_bytes_{bits}bit"] = statistics.median(overheads)
        figures[f"overhead_pct_{bits}bit"] = round(statistics.median(pct), 4)
        figures[f"overhead_pct_max_{bits}bit"] = round(max(pct), 4)
        figures[f"seal_ms_{bits}bit"] = round(statistics.median(seal_ms), 3)
        figures[f"open_ms_{bits}bit"] = round(statistics.median(open_ms), 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
