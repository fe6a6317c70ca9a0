"""The surface every simulated device offers to the simulator process.

A device is started with the simulator's directory (where it exposes its endpoint:
a pty symlink, a Unix socket, a frame directory), the shared fault board and the
resident currently presenting themselves at the kiosk.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import ClassVar

from hw_sim.faults import FaultBoard
from hw_sim.residents import ResidentDesk


class SimDevice(abc.ABC):
    """One simulated peripheral. Subclasses answer as the real firmware does."""

    name: ClassVar[str]

    def __init__(self, sim_dir: Path, faults: FaultBoard, desk: ResidentDesk) -> None:
        self.sim_dir = sim_dir
        self.faults = faults
        self.desk = desk

    @abc.abstractmethod
    def start(self) -> None:
        """Create the endpoint in ``sim_dir`` and start answering (threads are daemonic and owned here)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop answering, join threads, remove the endpoint."""

    @abc.abstractmethod
    def status(self) -> dict[str, object]:
        """A JSON-able view: endpoint path, settings, request counters."""
