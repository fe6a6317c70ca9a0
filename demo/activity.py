"""The demo's two threads while it runs: the enroller (one synthetic resident every few
seconds, as an operator would, through `ektp-agent enroll --synthetic`) and the watcher
(the kiosk's status, the centre's packets and the centre's log, into ``DemoState``)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any

from demo.stack import Cli
from demo.state import DemoState
from demo.view import human_bytes
from demo.workdir import KIOSK_ID

ENROLL_TIMEOUT_S = 120.0
POLL_S = 1.0  # between two readings (each also takes a second or so: two short commands)


def centre_rows(cli: Cli) -> list[dict[str, Any]] | None:
    """The centre's packets of the demo's kiosk; None when it did not answer."""
    rows = cli.central("packets", "--kiosk", KIOSK_ID, "--json").json()
    return rows if isinstance(rows, list) else None


class Enroller:
    """One synthetic resident every ``every_s`` seconds, seeds 1, 2, 3, ..."""

    def __init__(self, state: DemoState, cli: Cli, every_s: float) -> None:
        self.state = state
        self.cli = cli
        self.every_s = every_s
        self.stopping = threading.Event()

    def run(self) -> None:
        st = self.state
        seed = 1
        next_at = time.monotonic() + min(1.0, self.every_s)
        while True:
            st.set(next_enroll_at=next_at)
            if self.stopping.wait(max(0.0, next_at - time.monotonic())):
                break
            next_at = time.monotonic() + self.every_s
            st.set(next_enroll_at=None)
            r = self.cli.agent(
                "enroll", "--synthetic", "--count", "1", "--seed", str(seed), timeout=ENROLL_TIMEOUT_S
            )
            seed += 1
            receipts = []
            for line in r.out.splitlines():
                with contextlib.suppress(ValueError):
                    doc = json.loads(line)
                    if isinstance(doc, dict) and "packet_id" in doc:
                        receipts.append(doc)
            with st.lock:
                st.receipts.extend(receipts)
                if r.code != 0:
                    st.enroll_failures += 1
                offline = st.broker_state == "cut"
            for doc in receipts:
                where = ": kept on the kiosk, the broker is cut" if offline else ""
                st.event(f"enrolled seq {doc.get('seq')} ({human_bytes(doc.get('bytes'))}){where}")
            if r.code != 0 and not self.stopping.is_set():
                st.event(f"enrollment failed: {r.why}", "red")
        st.set(next_enroll_at=None)


class Watcher:
    """Takes a reading every ``POLL_S``: the receipts, then the kiosk's status, then the
    centre's packets (``demo.state`` says why in that order); and follows the centre's log."""

    def __init__(self, state: DemoState, cli: Cli, centre_log: Path) -> None:
        self.state = state
        self.cli = cli
        self.centre_log = centre_log
        self.centre_log_offset = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.read_centre_log()
                self.take_reading()
            except Exception as exc:  # keep polling: the view says what it can
                self.state.event(f"poll failed: {exc!r}", "red")
            self.stopping.wait(POLL_S)

    def take_reading(self) -> bool:
        """One consistent reading; False when the kiosk or the centre did not answer."""
        receipts = self.state.receipts_now()
        status = self.poll_status()
        if status is None:
            return False
        rows = centre_rows(self.cli)
        if rows is None:
            return False
        self.state.take_reading(receipts, status, rows)
        return True

    def poll_status(self) -> dict[str, Any] | None:
        """The running kiosk's status (events for what changed); None when it is not running."""
        doc = self.cli.agent("status", "--json").json()  # exit 1 (a device in fault) still prints it
        if not isinstance(doc, dict) or doc.get("service") != "running":
            return None
        self.state.apply_status(doc)
        return doc

    def read_centre_log(self) -> None:
        """The centre's own link state, from its log lines (it has no status command)."""
        st = self.state
        try:
            with open(self.centre_log, "rb") as f:
                f.seek(self.centre_log_offset)
                chunk = f.read()
        except OSError:
            return
        end = chunk.rfind(b"\n") + 1  # whole lines only
        self.centre_log_offset += end
        for line in chunk[:end].decode(errors="replace").splitlines():
            if "ektp.central: connected to" in line:
                again = st.centre_connected is False
                st.set(centre_connected=True)
                st.event(
                    "centre reconnected to the broker" if again else "centre connected to the broker",
                    "green" if again else "",
                )
            elif "ektp.central: disconnected from" in line and st.centre_connected:
                st.set(centre_connected=False)
                st.event("centre lost the broker; it retries with backoff", "red")
