"""Client of a running simulator's control socket (``DIR/control.sock``, JSON lines)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from hw_sim.server import CONTROL_SOCKET

CONTROL_TIMEOUT_S = 5.0


class SimNotRunning(RuntimeError):
    """No simulator answers at the directory."""


class SimControlError(RuntimeError):
    """The simulator refused a request (unknown device or kind, bad argument)."""


class SimControl:
    """Talks to the simulator serving ``sim_dir``."""

    def __init__(self, sim_dir: Path | str, *, timeout_s: float = CONTROL_TIMEOUT_S) -> None:
        self.sim_dir = Path(sim_dir)
        self.timeout_s = timeout_s

    def request(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Send one request and return the reply. :raises SimNotRunning: :raises SimControlError:"""
        path = self.sim_dir / CONTROL_SOCKET
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout_s)
            try:
                sock.connect(str(path))
            except OSError as exc:
                raise SimNotRunning(
                    f"no simulator running at {self.sim_dir}: start it with `ektp-sim --dir {self.sim_dir} run`"
                ) from exc
            try:
                sock.sendall(json.dumps(payload).encode() + b"\n")
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
            except OSError as exc:
                raise SimNotRunning(f"the simulator at {self.sim_dir} did not answer: {exc}") from exc
        try:
            reply: dict[str, Any] = json.loads(buf)
        except ValueError as exc:
            raise SimControlError(
                f"unreadable reply from the simulator at {self.sim_dir}: {buf[:200]!r}"
            ) from exc
        if not reply.get("ok"):
            raise SimControlError(str(reply.get("error", "the simulator refused the request")))
        return reply

    def status(self) -> dict[str, Any]:
        return self.request({"op": "status"})

    def fault(self, device: str, kind: str, for_s: float | None = None) -> dict[str, Any]:
        return self.request({"op": "fault", "device": device, "kind": kind, "for": for_s})

    def clear(self, device: str | None = None) -> dict[str, Any]:
        return self.request({"op": "clear", "device": device})

    def present(
        self, seed: int, finger: int | None = None, repeat: list[tuple[int, int]] | None = None
    ) -> dict[str, Any]:
        request: dict[str, Any] = {"op": "present", "seed": seed, "finger": finger}
        if repeat:
            request["repeat"] = [list(p) for p in repeat]
        return self.request(request)
