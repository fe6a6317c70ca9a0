"""systemd units of the centre: ektp-central.service (`run`) and ektp-central-web.service (`web`)
verify, are hardened (exposure <= 2.0), agree with the centre's default paths and exit codes, and
their sysusers and tmpfiles entries make the user and the directories with the modes the unit
expects."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from central.cli import EXIT_USAGE
from central.config import DEFAULT_PRIVATE_KEY, DEFAULT_STORE_URL
from tests.agentkit import BIN
from tests.test_systemd import UNITS, _local_copy, _unit_settings, needs_analyze

CENTRAL_UNITS = ["ektp-central.service", "ektp-central-web.service"]
STATE_DIR = Path("/var/lib/ektp-central")


@needs_analyze
@pytest.mark.parametrize("unit", CENTRAL_UNITS)
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
@pytest.mark.parametrize("unit", CENTRAL_UNITS)
def test_unit_exposure_is_at_most_2(unit: str, tmp_path: Path) -> None:
    p = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(_local_copy(unit, tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", p.stdout + p.stderr)
    assert m, p.stdout + p.stderr
    assert float(m.group(1)) <= 2.0, p.stdout


@pytest.mark.parametrize(
    ("unit", "command"), [("ektp-central.service", "run"), ("ektp-central-web.service", "web")]
)
def test_unit_runs_the_centre_as_its_own_user_without_devices(unit: str, command: str) -> None:
    s = _unit_settings(unit)
    (exec_start,) = s["ExecStart"]
    assert shlex.split(exec_start) == [
        "/opt/ektp-agent/.venv/bin/ektp-central",
        "--config",
        "/etc/ektp-central/config.toml",
        command,
    ]
    assert s["User"] == ["ektp-central"] and s["Group"] == ["ektp-central"]
    assert s["PrivateDevices"] == ["yes"] and s["DevicePolicy"] == ["closed"] and "DeviceAllow" not in s
    assert "SupplementaryGroups" not in s
    # MQTT, PostgreSQL and the web view's listen: the network, and nothing but these families
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert s["CapabilityBoundingSet"] == [""]
    assert s["UMask"] == ["0077"]
    assert s["StateDirectory"] == ["ektp-central"] and s["StateDirectoryMode"] == ["0700"]
    assert s["ConfigurationDirectoryMode"] == ["0750"]
    # a config that cannot work exits 2: restarting it every 2 s would only fill the journal
    assert s["RestartPreventExitStatus"] == [str(EXIT_USAGE)]
    assert s["Restart"] == ["on-failure"]


def test_the_centres_default_files_are_in_its_state_directory() -> None:
    """The store and the keys by default live where StateDirectory= lets the service write."""
    assert Path(DEFAULT_STORE_URL).parent == STATE_DIR
    assert DEFAULT_PRIVATE_KEY.parent == STATE_DIR
    assert _unit_settings("ektp-central.service")["StateDirectory"] == [STATE_DIR.name]


@pytest.mark.parametrize("command", ["run", "web"])
def test_the_command_a_unit_starts_exists(command: str) -> None:
    p = subprocess.run(
        [str(BIN / "ektp-central"), command, "--help"], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("unit", CENTRAL_UNITS)
def test_unit_documentation_is_a_file_the_install_has(unit: str) -> None:
    pages = " ".join(_unit_settings(unit)["Documentation"]).split()
    assert pages
    prefix = "file:///opt/ektp-agent/"
    for page in pages:
        assert page.startswith(prefix), page
        assert (UNITS.parent / page.removeprefix(prefix)).is_file(), page


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers is not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-tmpfiles chowns the directories it makes: needs root")
def test_sysusers_and_tmpfiles_make_the_user_and_private_directories(tmp_path: Path) -> None:
    """Both files applied to an empty root directory, as a package install applies them to /."""
    root = tmp_path / "root"
    for kind, suffix in (("sysusers.d", "sysusers"), ("tmpfiles.d", "tmpfiles")):
        (root / "etc" / kind).mkdir(parents=True)
        shutil.copy(UNITS / f"ektp-central.{suffix}", root / "etc" / kind / "ektp-central.conf")
    for tool in (["systemd-sysusers"], ["systemd-tmpfiles", "--create"]):
        p = subprocess.run(
            [*tool, f"--root={root}", "ektp-central.conf"], capture_output=True, text=True, timeout=60
        )
        assert p.returncode == 0, p.stdout + p.stderr
    users = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    user = users["ektp-central"]
    assert user[5] == str(STATE_DIR) and user[6].endswith("nologin")
    uid, gid = int(user[2]), int(user[3])
    state, config = (root / str(STATE_DIR).lstrip("/")).stat(), (root / "etc/ektp-central").stat()
    assert (state.st_mode & 0o7777, state.st_uid, state.st_gid) == (0o700, uid, gid)
    assert (config.st_mode & 0o7777, config.st_uid, config.st_gid) == (0o750, 0, gid)
