"""The simulated kit behind `ektp-agent run --simulate`: attach to a simulator started
by hand (`ektp-sim --dir {data_dir}/sim run`), or start one as a child process that
belongs to this service.

Who owns a simulator: the one a service starts is that service's. It runs with
``--owner-pid`` and stops when the service is gone, however it went (SIGKILL included),
and a clean stop of the service stops it. One started by hand belongs to whoever started
it: the service uses it and leaves it running. A simulator of a service that just died
may still answer for a moment when the next service starts; that one waits for it to go
and starts its own rather than adopting what it could not stop.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hw_sim.control import SimControl, SimControlError, SimNotRunning
from hw_sim.residents import Resident, synthetic_resident

log = logging.getLogger("ektp.simulator")

START_TIMEOUT_S = 20.0
ORPHAN_GONE_TIMEOUT_S = 10.0  # a dead service's simulator looks at its parent every 0.2 s
POLL_S = 0.1


class SimulatorError(RuntimeError):
    pass


class Simulator:
    def __init__(self, sim_dir: Path) -> None:
        self.sim_dir = sim_dir
        self.control = SimControl(sim_dir)
        self.child: subprocess.Popen[bytes] | None = None

    def running(self) -> bool:
        return self._status() is not None

    def _status(self) -> dict[str, Any] | None:
        try:
            return self.control.status()
        except (SimNotRunning, SimControlError):
            return None

    def attach_or_start(self) -> None:
        """:raises SimulatorError: the simulator did not come up, or another service's still runs"""
        status = self._status()
        if status is not None:
            owner = status.get("owner_pid")
            if owner is None:
                log.info(
                    "attached to the simulator already running at %s (pid %s), started by hand: "
                    "it keeps running when this service stops",
                    self.sim_dir,
                    status.get("pid"),
                )
                return
            self._wait_gone(owner, status.get("pid"))
        self._start()

    def _wait_gone(self, owner: object, pid: object) -> None:
        """A simulator that another service started: it goes by itself once that service is gone.

        Waited for until its process has exited, not only its control socket: a simulator
        still stopping removes its files, and ours must not be made before that ends."""
        log.info("the simulator at %s belongs to service pid %s: waiting for it to stop", self.sim_dir, owner)
        deadline = time.monotonic() + ORPHAN_GONE_TIMEOUT_S
        while self.running() or _alive(pid):
            if time.monotonic() > deadline:
                raise SimulatorError(
                    f"the simulator at {self.sim_dir} belongs to another running service (pid {owner}): "
                    "stop that service first, or give this one its own data_dir"
                )
            time.sleep(POLL_S)

    def _start(self) -> None:
        self.sim_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(self.sim_dir / "sim.log", "ab")  # noqa: SIM115 - the child owns it
        try:
            self.child = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hw_sim.cli",
                    "--dir",
                    str(self.sim_dir),
                    "run",
                    "--owner-pid",
                    str(os.getpid()),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
            )
        finally:
            log_file.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.child.poll() is not None:
                raise SimulatorError(
                    f"the simulator exited with code {self.child.returncode}; see {self.sim_dir / 'sim.log'}"
                )
            if self.running():
                log.info("started the simulator at %s (pid %d)", self.sim_dir, self.child.pid)
                return
            time.sleep(POLL_S)
        self.stop()
        raise SimulatorError(f"the simulator at {self.sim_dir} did not answer within {START_TIMEOUT_S:.0f} s")

    def present(self, seed: int) -> Resident:
        """Put synthetic resident ``seed`` in front of the simulated devices; their identity."""
        self.control.present(seed)
        return synthetic_resident(seed)

    def stop(self) -> None:
        """Stop the simulator if this service started it (one started by hand keeps running)."""
        if self.child is None:
            return
        if self.child.poll() is None:
            self.child.terminate()
            try:
                self.child.wait(10)
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait(5)
        self.child = None


def _alive(pid: object) -> bool:
    """Whether process ``pid`` still runs (a zombie has finished; None or junk: no)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
