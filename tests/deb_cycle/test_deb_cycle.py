"""The Debian packages of issue 16 as a technician meets them: `make deb` builds
ektp-agent_VERSION_ARCH.deb and ektp-central_VERSION_ARCH.deb (debhelper and dh-virtualenv)
and lintian passes them; each is installed into this machine with `dpkg -i`, checked (its
console scripts, `config check`, `systemd-analyze verify` of the installed units), upgraded to
a newer version with a packet pending in the outbox (nothing lost), removed (everything the
kiosk made stays) and purged (deleted, after a warning that names `ektp-agent export`).

Root only, as CI runs (dpkg), and only where nothing of the kit is installed already: a purge
deletes /etc/ektp-agent and /var/lib/ektp-agent. The machine is left as it was, even when a
step fails: both packages purged, the users and groups their sysusers files made deleted.
This machine has no systemd as PID 1, so the maintainer scripts' start and try-restart are
skipped here (deb-systemd-invoke does nothing without it); enabling is checked by its symlink.

The build is the slow part (two virtualenvs, about 3 minutes without lintian, 4.5 with): it
runs once per session, and the newer version is that build repacked with a higher version by
dpkg-deb, which is what an upgrade exercises: the maintainer scripts and dpkg's handling of
conffiles and of the data it does not own.

Where it runs: `make deb-test` (which `make bench` calls), with lintian unless LINTIAN=0, not
`make test`: tests/conftest.py's collect_ignore keeps this folder out of a plain `pytest`
run, and naming it (`pytest tests/deb_cycle`) runs it. `make test` checks the packaging without
building it in tests/test_deb.py: debian/ against systemd/, pyproject.toml and the Makefile,
and the maintainer scripts run in a scratch root.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.export import file_name
from agent.outbox import Outbox
from tests.agentkit import BIN
from tests.outbox_child import key_from_hex, seal

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("ektp-agent", "ektp-central")
# what a purge of the packages deletes, and what a hand install (operations.md's appendix) has
MACHINE_PATHS = tuple(
    Path(p)
    for p in (
        "/etc/ektp-agent",
        "/var/lib/ektp-agent",
        "/opt/ektp-agent",
        "/etc/ektp-central",
        "/var/lib/ektp-central",
        "/opt/ektp-central",
    )
)
NEWER = "+upgradetest1"  # appended to the built version: a newer version to dpkg
KEY = key_from_hex("11" * 32)
BUILD_TIMEOUT_S = 900


def _installed(package: str) -> str:
    """dpkg's status of ``package`` ('' when dpkg does not know it)."""
    p = subprocess.run(
        ["dpkg-query", "-W", "-f", "${db:Status-Abbrev}", package], capture_output=True, text=True
    )
    return p.stdout.strip() if p.returncode == 0 else ""


def _why_not_here() -> str | None:
    if shutil.which("dpkg") is None:
        return "not a Debian system (no dpkg)"
    if os.geteuid() != 0:
        return "installs packages into this machine with dpkg: needs root (as CI runs)"
    for package in PACKAGES:
        if _installed(package) not in ("", "un"):
            return (
                f"{package} is installed on this machine ({_installed(package)}): the test would replace it"
            )
    for path in MACHINE_PATHS:
        if path.exists():
            return f"{path} exists (an install by hand?): the test's purge would delete it"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_why_not_here() is not None, reason=str(_why_not_here()))]


def run(*args: str | Path, timeout: float = 120, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload, no-any-return]


def ok(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    p = run(*args, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(map(str, args))}: exit {p.returncode}\n{p.stdout}{p.stderr}"
    return p


@dataclass(frozen=True)
class Debs:
    version: str
    arch: str
    agent: Path
    central: Path
    agent_newer: Path
    central_newer: Path
    make_output: str
    build_s: float


def _repack(deb: Path, version: str, out: Path) -> Path:
    """The same package with ``version``: its files unchanged, its control file bumped."""
    tree = out / f"{deb.stem}-tree"
    ok("dpkg-deb", "-R", deb, tree)
    control = tree / "DEBIAN" / "control"
    control.write_text(re.sub(r"(?m)^Version: .*$", f"Version: {version}", control.read_text()))
    package = deb.name.split("_")[0]
    newer = out / f"{package}_{version}_{deb.name.rsplit('_', 1)[1]}"
    ok("dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "-b", tree, newer, timeout=300)
    shutil.rmtree(tree)
    return newer


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Debs:
    out = tmp_path_factory.mktemp("deb")
    started = time.monotonic()
    # lintian (1.5 of the build's 4 minutes) runs in `make deb` and `make bench`; here only when asked
    lintian = os.environ.get("EKTP_DEB_LINTIAN", "0")
    p = run(
        "make",
        "--no-print-directory",
        "-C",
        REPO,
        "deb",
        f"DEB_DIR={out}",
        f"LINTIAN={lintian}",
        timeout=BUILD_TIMEOUT_S,
    )
    build_s = time.monotonic() - started
    assert p.returncode == 0, f"make deb failed\n{p.stdout}{p.stderr}"
    version = re.search(r"building ektp-agent and ektp-central (\S+) for (\S+)", p.stdout)
    assert version, p.stdout
    v, arch = version.groups()
    agent, central = (out / f"{name}_{v}_{arch}.deb" for name in PACKAGES)
    return Debs(
        v,
        arch,
        agent,
        central,
        _repack(agent, v + NEWER, out),
        _repack(central, v + NEWER, out),
        p.stdout + p.stderr,
        build_s,
    )


@pytest.fixture
def machine() -> Iterator[None]:
    """Purge whatever the test installed and delete the users and groups it made, whatever happened."""
    users, groups = {u.pw_name for u in pwd.getpwall()}, {g.gr_name for g in grp.getgrall()}
    try:
        yield
    finally:
        for package in PACKAGES:
            if _installed(package) not in ("", "un"):
                run("dpkg", "--purge", package)
        for user in sorted({u.pw_name for u in pwd.getpwall()} - users):
            run("userdel", user)
        for group in sorted({g.gr_name for g in grp.getgrall()} - groups):
            run("groupdel", group)
        for path in MACHINE_PATHS:
            shutil.rmtree(path, ignore_errors=True)
        left = [p for p in MACHINE_PATHS if p.exists()] + [
            p for p in PACKAGES if _installed(p) not in ("", "un")
        ]
        assert not left, f"left on the machine: {left}"


def _contents(deb: Path) -> dict[str, str]:
    """path -> the listing's line, for each entry of ``deb``."""
    listing = ok("dpkg-deb", "-c", deb).stdout.splitlines()
    return {line.split(None, 5)[5].split(" -> ")[0].removeprefix("."): line for line in listing}


def _control_file(deb: Path, name: str, tmp_path: Path) -> str:
    dest = tmp_path / deb.stem
    ok("dpkg-deb", "-e", deb, dest)
    return (dest / name).read_text()


def _unit_path(files: dict[str, str], unit: str) -> str:
    (path,) = [p for p in files if p.endswith(f"/systemd/system/{unit}")]
    assert path.startswith(("/lib/systemd/system/", "/usr/lib/systemd/system/")), path
    return path


@pytest.mark.timeout(BUILD_TIMEOUT_S + 120)
def test_packages_hold_their_files_in_debian_places(debs: Debs, tmp_path: Path) -> None:
    assert ("lintian not run" not in debs.make_output) == (os.environ.get("EKTP_DEB_LINTIAN", "0") == "1")
    agent = _contents(debs.agent)
    for path in (
        "/opt/ektp-agent/.venv/bin/ektp-agent",
        "/opt/ektp-agent/.venv/bin/ektp-sim",
        "/usr/bin/ektp-agent",
        "/usr/bin/ektp-sim",
        "/usr/lib/sysusers.d/ektp-agent.conf",
        "/usr/lib/tmpfiles.d/ektp-agent.conf",
        "/usr/share/doc/ektp-agent/operations.md",
        "/usr/share/doc/ektp-agent/img/kiosk.png",
        "/opt/ektp-agent/docs",
        "/etc/ektp-agent/config.toml",
    ):
        assert path in agent, path
    assert any(p.endswith("/udev/rules.d/60-ektp-iris.rules") for p in agent)
    _unit_path(agent, "ektp-agent.service")
    _unit_path(agent, "ektp-sim.service")
    assert "/usr/bin/ektp-central" not in agent
    conffiles = _control_file(debs.agent, "conffiles", tmp_path).split()
    assert conffiles == ["/etc/ektp-agent/config.toml"]

    central = _contents(debs.central)
    for path in (
        "/opt/ektp-central/.venv/bin/ektp-central",
        "/usr/bin/ektp-central",
        "/usr/lib/sysusers.d/ektp-central.conf",
        "/usr/lib/tmpfiles.d/ektp-central.conf",
        "/usr/share/doc/ektp-central/central.md",
        "/etc/ektp-central/config.toml",
    ):
        assert path in central, path
    _unit_path(central, "ektp-central.service")
    _unit_path(central, "ektp-central-web.service")
    assert _control_file(debs.central, "conffiles", tmp_path).split() == ["/etc/ektp-central/config.toml"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _verify_installed_unit(package: str, unit: str) -> None:
    """systemd-analyze verify on the installed file; every Documentation= file is there."""
    listed = ok("dpkg", "-L", package).stdout.splitlines()
    (path,) = {Path(p).resolve() for p in listed if p.endswith(f"/systemd/system/{unit}")}
    p = run("systemd-analyze", "verify", path, timeout=60)
    assert p.returncode == 0 and "ektp" not in p.stderr, p.stdout + p.stderr
    text = path.read_text()
    docs = " ".join(re.findall(r"(?m)^Documentation=(.*)$", text)).split()
    assert docs
    for page in docs:
        assert page.startswith("file:///") and Path(page.removeprefix("file://")).is_file(), page


@pytest.mark.timeout(BUILD_TIMEOUT_S + 300)
def test_agent_installs_upgrades_removes_and_purges(debs: Debs, machine: None, tmp_path: Path) -> None:
    # install: the user, its directories, the conffile, the unit enabled; not started without keys
    p = ok("dpkg", "-i", debs.agent)
    assert "not started: it needs a config and its keys first" in p.stdout, p.stdout
    agent = Path("/usr/bin/ektp-agent")
    assert agent.resolve() == Path("/opt/ektp-agent/.venv/bin/ektp-agent")
    assert debs.version.split("+")[0] in ok(agent, "--version").stdout
    ok("/usr/bin/ektp-sim", "--help")
    user = pwd.getpwnam("ektp")
    assert {g.gr_name for g in grp.getgrall() if "ektp" in g.gr_mem} >= {"dialout", "plugdev", "video"}
    for path, mode, owner in (
        ("/etc/ektp-agent", 0o750, (0, user.pw_gid)),
        ("/etc/ektp-agent/config.toml", 0o640, (0, user.pw_gid)),
        ("/var/lib/ektp-agent", 0o700, (user.pw_uid, user.pw_gid)),
    ):
        st = os.stat(path)
        assert (st.st_mode & 0o7777, (st.st_uid, st.st_gid)) == (mode, owner), path
    assert Path("/etc/systemd/system/multi-user.target.wants/ektp-agent.service").is_symlink()
    assert not Path("/etc/systemd/system/multi-user.target.wants/ektp-sim.service").exists()
    # the venv sees Raspberry Pi OS's python3-picamera2 (the centre's has no need to)
    assert "include-system-site-packages = true" in Path("/opt/ektp-agent/.venv/pyvenv.cfg").read_text()
    # the conffile is `config init`'s, and it checks: valid, the two key files named as next steps
    shipped = Path("/etc/ektp-agent/config.toml").read_text()
    assert shipped == ok(BIN / "ektp-agent", "config", "init").stdout
    p = ok(agent, "config", "check")
    assert "config OK: /etc/ektp-agent/config.toml" in p.stdout and "before `ektp-agent run`:" in p.stdout
    for unit in ("ektp-agent.service", "ektp-sim.service"):
        _verify_installed_unit("ektp-agent", unit)

    # made ready as operations.md section 2 says: a config, the centre's public key, the kiosk's key
    centre = tmp_path / "centre"
    centre.mkdir()
    (centre / "central.toml").write_text(f'[keys]\ncentral_private_key = "{centre / "central.key"}"\n')
    ok(BIN / "ektp-central", "--config", centre / "central.toml", "keys", "init")
    conf = ("--kiosk-id", "320715-01", "--broker", "127.0.0.1:1883", "--to", "/etc/ektp-agent/config.toml")
    ok(agent, "config", "init", *conf, "--force")
    shutil.copyfile(centre / "central.key.pub", "/etc/ektp-agent/central.pub")
    os.chmod("/etc/ektp-agent/central.pub", 0o644)
    ok("runuser", "-u", "ektp", "--", agent, "keys", "init")
    assert json.loads(ok(agent, "config", "check", "--json").stdout)["ready"] is True
    # a packet recorded and not yet delivered
    packet_id = str(uuid.uuid4())
    with Outbox(Path("/var/lib/ektp-agent/outbox.db")) as ob:
        receipt = ob.commit(lambda seq: seal(KEY, seq, packet_id, b"enrollment" * 300))
        packet = ob.get(packet_id)
    for f in Path("/var/lib/ektp-agent").iterdir():
        os.chown(f, user.pw_uid, user.pw_gid)
    kept = {f: _sha(f) for f in (Path("/etc/ektp-agent/config.toml"), Path("/var/lib/ektp-agent/kiosk.key"))}

    # upgrade: nothing lost, the edited config kept
    p = ok("dpkg", "-i", debs.agent_newer)
    assert _installed("ektp-agent") == "ii"
    assert ok("dpkg-query", "-W", "-f", "${Version}", "ektp-agent").stdout == debs.version + NEWER
    queue = json.loads(ok(agent, "queue", "--json").stdout)
    assert [(q["packet_id"], q["state"]) for q in queue] == [(packet_id, "pending")], queue
    assert {f: _sha(f) for f in kept} == kept
    export = tmp_path / "stick"
    ok(agent, "export", "--to", export)
    assert (export / file_name(receipt.seq, packet_id)).read_bytes() == packet

    # remove: the service's data and config stay; a warning says what a purge would delete
    p = ok("dpkg", "-r", "ektp-agent")
    assert "keeps 1 enrollment packet(s)" in p.stderr and "ektp-agent export --to DIR" in p.stderr, p.stderr
    assert not agent.exists() and not Path("/opt/ektp-agent/.venv").exists()
    assert {f: _sha(f) for f in kept} == kept
    assert Path("/var/lib/ektp-agent/outbox.db").exists() and Path("/etc/ektp-agent/central.pub").exists()
    assert _installed("ektp-agent") == "rc"

    # purge: the warning names the undelivered packet and the export, then all is deleted
    p = ok("dpkg", "--purge", "ektp-agent")
    assert "WARNING: purge deletes /var/lib/ektp-agent, whose outbox holds 1 enrollment" in p.stderr, p.stderr
    assert "ektp-agent export --to DIR" in p.stderr
    for path in ("/var/lib/ektp-agent", "/etc/ektp-agent", "/opt/ektp-agent"):
        assert not Path(path).exists(), path
    assert run("dpkg-statoverride", "--list", "/etc/ektp-agent/config.toml").stdout == ""
    assert _installed("ektp-agent") in ("", "un")


@pytest.mark.timeout(BUILD_TIMEOUT_S + 300)
def test_central_installs_upgrades_removes_and_purges(debs: Debs, machine: None) -> None:
    p = ok("dpkg", "-i", debs.central)
    assert "not started: it needs a config and its keys first" in p.stdout, p.stdout
    central = Path("/usr/bin/ektp-central")
    assert central.resolve() == Path("/opt/ektp-central/.venv/bin/ektp-central")
    assert debs.version.split("+")[0] in ok(central, "--version").stdout
    user = pwd.getpwnam("ektp-central")
    for path, mode, owner in (
        ("/etc/ektp-central", 0o750, (0, user.pw_gid)),
        ("/etc/ektp-central/config.toml", 0o640, (0, user.pw_gid)),
        ("/var/lib/ektp-central", 0o700, (user.pw_uid, user.pw_gid)),
    ):
        st = os.stat(path)
        assert (st.st_mode & 0o7777, (st.st_uid, st.st_gid)) == (mode, owner), path
    assert Path("/etc/systemd/system/multi-user.target.wants/ektp-central.service").is_symlink()
    assert not Path("/etc/systemd/system/multi-user.target.wants/ektp-central-web.service").exists()
    p = ok(central, "config", "check")
    assert "config OK: /etc/ektp-central/config.toml" in p.stdout
    for unit in ("ektp-central.service", "ektp-central-web.service"):
        _verify_installed_unit("ektp-central", unit)
    ok("runuser", "-u", "ektp-central", "--", central, "keys", "init")
    assert json.loads(ok(central, "config", "check", "--json").stdout)["ready"] is True
    key = Path("/var/lib/ektp-central/central.key")
    kept = _sha(key)

    ok("dpkg", "-i", debs.central_newer)
    assert ok("dpkg-query", "-W", "-f", "${Version}", "ektp-central").stdout == debs.version + NEWER
    assert _sha(key) == kept

    ok("dpkg", "-r", "ektp-central")
    assert _sha(key) == kept and Path("/etc/ektp-central/config.toml").exists()
    assert not central.exists()

    p = ok("dpkg", "--purge", "ektp-central")
    assert "WARNING: purge deletes /var/lib/ektp-central" in p.stderr, p.stderr
    for path in ("/var/lib/ektp-central", "/etc/ektp-central", "/opt/ektp-central"):
        assert not Path(path).exists(), path
