"""systemd integration: the unit files verify and are hardened; the service speaks the
notify protocol (READY, WATCHDOG, STOPPING in order) to a real datagram socket."""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from agent.config import ConfigError, parse_config
from tests.agentkit import BIN, Kit
from tests.netkit import free_port

UNITS = Path(__file__).resolve().parent.parent / "systemd"
needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def _local_copy(unit: str, tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv (verify checks the binary exists)."""
    text = (UNITS / unit).read_text().replace("/opt/ektp-agent/.venv/bin", str(BIN))
    out = tmp_path / unit
    out.write_text(text)
    return out


@needs_analyze
@pytest.mark.parametrize("unit", ["ektp-agent.service", "ektp-sim.service"])
def test_unit_verifies(unit: str, tmp_path: Path) -> None:
    p = subprocess.run(
        ["systemd-analyze", "verify", str(_local_copy(unit, tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "ektp" not in p.stderr, p.stderr  # no warnings about our unit


@needs_analyze
@pytest.mark.parametrize("unit", ["ektp-agent.service", "ektp-sim.service"])
def test_unit_exposure_is_at_most_2(unit: str, tmp_path: Path) -> None:
    p = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(_local_copy(unit, tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", p.stdout + p.stderr)
    assert m, p.stdout + p.stderr
    assert float(m.group(1)) <= 2.0


def test_agent_unit_is_type_notify_with_watchdog() -> None:
    text = (UNITS / "ektp-agent.service").read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "User=ektp",
        "StateDirectory=ektp-agent",
    ):
        assert line in text


def test_notify_protocol_ready_watchdog_stopping(tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.5)
    kit = Kit(tmp_path, free_port())  # no broker there: READY must not wait for the network
    try:
        kit.setup_keys()
        agent = kit.spawn(
            "ektp-agent",
            "run",
            "--simulate",
            name="agent",
            env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"},
        )
        seen: list[str] = []
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not (
            any("READY=1" in m for m in seen) and seen.count("WATCHDOG=1") >= 2
        ):
            try:
                seen.append(sock.recv(4096).decode())
            except TimeoutError:
                assert agent.poll() is None, kit.log("agent")
        agent.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any("STOPPING=1" in m for m in seen):
            with contextlib.suppress(TimeoutError):
                seen.append(sock.recv(4096).decode())
        assert agent.wait(20) == 0, kit.log("agent")
        ready = next(i for i, m in enumerate(seen) if "READY=1" in m)
        watchdog = next(i for i, m in enumerate(seen) if m == "WATCHDOG=1")
        stopping = next(i for i, m in enumerate(seen) if "STOPPING=1" in m)
        assert ready < watchdog < stopping, seen
        assert any(m.startswith("STATUS=") or "\nSTATUS=" in m for m in seen), seen
    finally:
        kit.close()
        sock.close()


def _unit_settings(unit: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (UNITS / unit).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_agent_unit_keeps_files_private_and_descriptors_sufficient() -> None:
    s = _unit_settings("ektp-agent.service")
    assert s["UMask"] == ["0077"]
    assert s["StateDirectoryMode"] == ["0700"]
    # the config directory as the tmpfiles entry makes it: root:ektp 0750, no world access
    assert s["ConfigurationDirectoryMode"] == ["0750"]
    assert "d /etc/ektp-agent     0750 root ektp -" in (UNITS / "ektp-agent.tmpfiles").read_text()
    # enough descriptors for the largest api.max_connections and the rest of the service
    largest = 1024
    assert parse_config(f"[api]\nmax_connections = {largest}").api.max_connections == largest
    with pytest.raises(ConfigError, match=r"api\.max_connections"):
        parse_config(f"[api]\nmax_connections = {largest + 1}")
    (nofile,) = s["LimitNOFILE"]
    assert int(nofile) >= largest + 1024


def test_broker_address_is_documented_not_pinned_in_the_unit() -> None:
    """[mqtt] host is a config value (often a DNS name): an IPAddressAllow= in the shipped unit
    would drift from it and cut the link silently. operations.md shows the drop-in instead."""
    s = _unit_settings("ektp-agent.service")
    assert "IPAddressAllow" not in s
    ops = (UNITS.parent / "docs" / "operations.md").read_text()
    assert "IPAddressAllow=" in ops and "IPAddressDeny=any" in ops


@pytest.mark.parametrize("unit", ["ektp-agent.service", "ektp-sim.service"])
def test_unit_documentation_is_a_file_the_install_has(unit: str) -> None:
    """Section 2 of operations.md checks the project out at /opt/ektp-agent, the units' own
    ExecStart directory: each file:// page a unit names is there, in the checkout."""
    s = _unit_settings(unit)
    pages = " ".join(s["Documentation"]).split()
    assert pages, "the unit names its documentation"
    prefix = "file:///opt/ektp-agent/"
    assert s["ExecStart"][0].startswith("/opt/ektp-agent/")
    for page in pages:
        assert page.startswith(prefix), page
        assert (UNITS.parent / page.removeprefix(prefix)).is_file(), page
