"""The full chaos runs of issue 6: the tests of tests/chaos/ at full scale.

`EKTP_CHAOS=full` makes them run 100 SIGKILLs (R1), 20 broker restarts (R2), 10 minutes
of link flaps (R3), and the rest as in `make test`. Each test prints its figure; this
script collects them, prints them, and ends with one JSON object.

    .venv/bin/python bench/chaos.py            # about 20 minutes
    .venv/bin/python bench/chaos.py -k r1      # one of them
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    extra = sys.argv[1:]
    env = {**os.environ, "EKTP_CHAOS": "full"}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-s",
        "-q",
        "-p",
        "no:cacheprovider",
        "--timeout",
        "3600",
        "tests/chaos",
        *extra,
    ]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    figures: dict[str, dict[str, object]] = {}
    for line in p.stdout.splitlines():
        # a figure line may follow the previous test's progress mark (".", "F", "E") on its line
        m = re.match(r"^[.FEsx]*(R\d|S\d) (.*)$", line.strip())
        if m:
            print(line.strip().lstrip(".FEsx"))
            fields = dict(re.findall(r"(\w+)=([\w./]+)", m.group(2)))
            figures[m.group(1)] = {k: (int(v) if v.isdigit() else v) for k, v in fields.items()}
    failed = [x for x in p.stdout.splitlines() if x.startswith(("FAILED", "ERROR"))]
    for line in failed:  # which test failed, and the first line of why
        print(line)
    tail = [x for x in p.stdout.splitlines() if x.strip()][-1:] or [""]
    print(tail[0])
    print(json.dumps({"ok": p.returncode == 0, "figures": figures}))
    return p.returncode


if __name__ == "__main__":
    sys.exit(main())
