"""The simulated kit behind `ektp-agent run --simulate`: attach to the simulator already
serving ``{data_dir}/sim``, or start one as a child process (in the agent's process
group, so a supervisor that kills the group kills it too; after a crash of the agent
alone, the next start attaches to the survivor)."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

from hw_sim.control import SimControl, SimControlError, SimNotRunning
from hw_sim.residents import Resident, synthetic_resident

log = logging.getLogger("ektp.simulator")

START_TIMEOUT_S = 20.0


class SimulatorError(RuntimeError):
    pass


class Simulator:
    def __init__(self, sim_dir: Path) -> None:
        self.sim_dir = sim_dir
        self.control = SimControl(sim_dir)
        self.child: subprocess.Popen[bytes] | None = None

    def running(self) -> bool:
        try:
            self.control.status()
        except (SimNotRunning, SimControlError):
            return False
        return True

    def attach_or_start(self) -> None:
        """:raises SimulatorError: the simulator did not come up"""
        if self.running():
            log.info("attached to the simulator already running at %s", self.sim_dir)
            return
        self.sim_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(self.sim_dir / "sim.log", "ab")  # noqa: SIM115 - the child owns it
        try:
            self.child = subprocess.Popen(
                [sys.executable, "-m", "hw_sim.cli", "--dir", str(self.sim_dir), "run"],
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
            time.sleep(0.1)
        self.stop()
        raise SimulatorError(f"the simulator at {self.sim_dir} did not answer within {START_TIMEOUT_S:.0f} s")

    def present(self, seed: int) -> Resident:
        """Put synthetic resident ``seed`` in front of the simulated devices; their identity."""
        self.control.present(seed)
        return synthetic_resident(seed)

    def stop(self) -> None:
        """Stop the simulator if this agent started it (one it attached to keeps running)."""
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
