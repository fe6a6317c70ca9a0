"""The demo's directory: what is where, the configs of the kiosk and the centre, and the
wipe at the start of every run (only of a directory the demo made itself)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from demo.stack import DemoError, reap_group

KIOSK_ID = "320715-01"
MARKER = ".ektp-demo"  # a directory with this file is the demo's own: safe to wipe
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes on Linux; keep a margin


class DirError(DemoError):
    """--dir cannot be used (a usage error: exit 2)."""


@dataclass(frozen=True, slots=True)
class Paths:
    root: Path

    @property
    def kiosk(self) -> Path:
        return self.root / "kiosk"

    @property
    def data(self) -> Path:
        return self.kiosk / "data"

    @property
    def central(self) -> Path:
        return self.root / "central"

    @property
    def broker(self) -> Path:
        return self.root / "broker"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def agent_conf(self) -> Path:
        return self.kiosk / "agent.toml"

    @property
    def central_conf(self) -> Path:
        return self.central / "central.toml"

    @property
    def broker_conf(self) -> Path:
        return self.broker / "mosquitto.conf"

    @property
    def children(self) -> Path:
        return self.root / "children.json"

    @property
    def longest_socket(self) -> Path:
        return self.data / "sim" / "control.sock"


def toml_str(value: object) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(str(value))


def write_configs(paths: Paths, port: int) -> None:
    c = paths.central
    paths.agent_conf.write_text(
        "# the demo's kiosk: simulated peripherals, the local broker, quick reconnects\n"
        f"[kiosk]\nid = {toml_str(KIOSK_ID)}\ndata_dir = {toml_str(paths.data)}\n"
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nkeepalive_s = 5\nack_timeout_s = 5\n'
        "reconnect_min_s = 0.5\nreconnect_max_s = 2\n"
        f"[keys]\ncentral_public_key = {toml_str(c / 'central.key.pub')}\n"
        "[health]\ninterval_s = 2\n"
        f"[api]\nsocket = {toml_str(paths.data / 'api.sock')}\n"
    )
    paths.central_conf.write_text(
        "# the demo's centre: the local broker, a SQLite store\n"
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n'
        f"[store]\nurl = {toml_str(c / 'central.db')}\n"
        f"[keys]\ncentral_private_key = {toml_str(c / 'central.key')}\n"
    )


def record_children(paths: Paths, groups: dict[str, int]) -> None:
    """The children's process groups, for a later run to reap if this one is killed outright."""
    with contextlib.suppress(OSError):  # only a later run's clean-up is at stake
        paths.children.write_text(json.dumps(groups))


def reap_leftovers(paths: Paths) -> int:
    """Stop what a previous run that was killed outright left running in this directory:
    processes of the recorded process groups whose command line names the directory."""
    try:
        recorded = json.loads(paths.children.read_text())
        pgids = {int(p) for p in recorded.values()}
    except (OSError, ValueError, TypeError, AttributeError):
        return 0
    needle = str(paths.root).encode()
    reaped = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            pgid = os.getpgid(pid)
            if pgid in pgids and needle in (entry / "cmdline").read_bytes():
                reaped.add(pid)
                reap_group(pgid)
        except OSError:
            continue
    return len(reaped)


def prepare_dir(paths: Paths) -> int:
    """An empty demo directory: wipe the previous run's (marked) one; never wipe anything else.
    Returns how many processes a killed previous run had left running there (now stopped).

    :raises DirError: --dir is too long, not a directory, or not the demo's own
    :raises OSError: it cannot be wiped or made
    """
    root = paths.root
    if len(str(paths.longest_socket).encode()) > SOCKET_PATH_MAX:
        raise DirError(
            f"--dir {root} is too long for the Unix sockets under it ({paths.longest_socket}): "
            "pick a shorter path"
        )
    if root.exists():
        if not root.is_dir():
            raise DirError(f"{root} exists and is not a directory: pick another --dir")
        if any(root.iterdir()) and not (root / MARKER).exists():
            raise DirError(
                f"{root} is not empty and is not a demo directory (no {MARKER} in it): "
                "refusing to wipe it; pick another --dir or empty it yourself"
            )
        reaped = reap_leftovers(paths)
        shutil.rmtree(root)
    else:
        reaped = 0
    for d in (paths.data, paths.central, paths.broker, paths.logs):
        d.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("made by `python -m demo`; wiped at the start of every demo run\n")
    return reaped


def shown_path(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it."""
    try:
        rel = path.relative_to(Path.cwd())
    except ValueError:
        return str(path)
    return f"./{rel}" if str(rel) != "." else "."
