"""The Debian packaging of issue 16 checked without building it (seconds, any user): debian/
agrees with systemd/, pyproject.toml and the Makefile, the conffiles come from commands that
work, and the maintainer scripts, run in a scratch root with dpkg's tools stubbed, say and do
what a technician must meet: the first install names the missing config and keys, a remove
with undelivered packets names `ektp-agent export`, a purge warns and then deletes.

The full cycle (`make deb` builds both packages with dh-virtualenv, lintian passes them, each
is installed with `dpkg -i`, upgraded with a packet pending, removed and purged, as root)
takes minutes, so it is not part of `make test`: `make deb-test` runs it
(tests/deb_cycle/test_deb_cycle.py), and `make bench` calls `make deb-test`.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import pytest

from agent.outbox import Outbox
from tests.agentkit import BIN
from tests.outbox_child import key_from_hex, seal

REPO = Path(__file__).resolve().parent.parent
DEBIAN = REPO / "debian"
SYSTEMD = REPO / "systemd"
PACKAGES = ("ektp-agent", "ektp-central")
KEY = key_from_hex("11" * 32)
# what the rules run (the venv's python) becomes this venv's python here
VENV_PYTHON = re.compile(r"debian/ektp-(?:agent|central)/opt/ektp-(?:agent|central)/\.venv/bin/python")


def _paragraphs(path: Path) -> list[dict[str, str]]:
    """deb822 paragraphs of ``path``: field -> value, continuation lines joined by newlines."""
    out: list[dict[str, str]] = []
    for block in re.split(r"\n\s*\n", path.read_text().strip()):
        fields: dict[str, str] = {}
        name = ""
        for line in block.splitlines():
            if line.startswith("#"):
                continue
            if line[:1] in (" ", "\t"):
                fields[name] += "\n" + line.strip()
            else:
                name, _, value = line.partition(":")
                fields[name] = value.strip()
        out.append(fields)
    return out


def _relations(value: str) -> list[str]:
    """The package names of a Depends-like field (versions and alternatives' others dropped)."""
    return [re.split(r"[\s(|]", item.strip(), maxsplit=1)[0] for item in value.split(",") if item.strip()]


def _rules() -> str:
    return (DEBIAN / "rules").read_text().replace("\\\n", " ")


def _make_variable(name: str) -> list[str]:
    m = re.search(rf"(?m)^{name}\s*:?=(.*)$", (REPO / "Makefile").read_text())
    assert m, f"the Makefile sets {name}"
    return m.group(1).split()


def _scripts() -> dict[str, str]:
    scripts: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    return scripts


def test_control_builds_two_packages_with_the_tools_make_deb_installs() -> None:
    source, *binaries = _paragraphs(DEBIAN / "control")
    assert source["Source"] == "ektp-agent"
    assert [b["Package"] for b in binaries] == list(PACKAGES)
    # `make deb` writes the changelog with this maintainer (sed on debian/control)
    assert re.fullmatch(r".+ <[^@\s]+@[^@\s]+>", source["Maintainer"]), source["Maintainer"]
    # every build dependency is one `make deb-packages` installs (debhelper-compat is debhelper's)
    tools = set(_make_variable("DEB_PACKAGES"))
    for dep in _relations(source["Build-Depends"]):
        assert {"debhelper-compat": "debhelper"}.get(dep, dep) in tools | {"python3"}, dep
    substvars = set(re.findall(r"-V(\S+?)=", _rules()))
    for binary in binaries:
        assert binary["Architecture"] == "any"  # a virtualenv with compiled wheels
        depends = _relations(binary["Depends"])
        assert "systemd" in depends
        # each substitution variable is debhelper's own or one the rules set
        for var in re.findall(r"\$\{([^}]+)\}", binary["Depends"] + binary["Pre-Depends"]):
            assert var in ("misc:Depends", "misc:Pre-Depends", "shlibs:Depends") or var in substvars, var
    assert "venv:Python" in substvars


def test_rules_ship_every_systemd_file_under_the_name_debhelper_looks_for() -> None:
    rules = _rules()
    listed = set(re.search(r"SYSTEMD_FILES := ([^\n]*?)\n\n", rules + "\n\n").group(1).split())  # type: ignore[union-attr]
    prep = re.search(r"execute_after_dh_prep:\n((?:\t.*\n)+)", rules).group(1)  # type: ignore[union-attr]
    made: set[str] = set()
    used: set[str] = set()
    for line in prep.splitlines():
        words = shlex.split(line)
        if words[0] == "cp":
            *sources, dest = words[1:]
            made |= {Path(s).name for s in sources} if dest == "debian/" else {Path(dest).name}
        else:  # sed '...' SOURCE > DEST
            assert words[0] == "sed" and words[-2] == ">", line
            made.add(Path(words[-1]).name)
            sources = [words[-3]]
        used |= {Path(s).name for s in sources}
        assert all(s.startswith("systemd/") and (REPO / s).is_file() for s in sources), line
    assert made == listed, "execute_after_dh_prep makes what SYSTEMD_FILES names (and dh_clean removes)"
    assert used == {p.name for p in SYSTEMD.iterdir()}, "every file of systemd/ goes into a package"
    # dh_installsystemd -p PKG [--name=NAME] UNIT reads debian/PKG.service or debian/PKG.NAME.service
    for pkg, name, unit in re.findall(
        r"dh_installsystemd -p (\S+) (?:--name=(\S+) )?.*?(\S+\.service)\n", rules
    ):
        expect = f"{pkg}.service" if name == "" else f"{pkg}.{name}.service"
        assert unit == f"{name or pkg}.service" and expect in listed, (pkg, name, unit)
    for pkg, name in re.findall(r"dh_installudev -p (\S+) --name=(\S+)", rules):
        assert f"{pkg}.{name}.udev" in listed
    for pkg in PACKAGES:
        assert {f"{pkg}.sysusers", f"{pkg}.tmpfiles"} <= listed


def _packaged_units() -> dict[str, dict[str, str]]:
    """package -> unit name -> the unit file's text as the rules put it in that package."""
    units: dict[str, dict[str, str]] = {p: {} for p in PACKAGES}
    for path in SYSTEMD.glob("*.service"):
        text = path.read_text()
        if path.name.startswith("ektp-central"):
            units["ektp-central"][path.name] = text.replace("/opt/ektp-agent/", "/opt/ektp-central/")
        else:
            units["ektp-agent"][path.name] = text
    return units


def _links(pkg: str) -> dict[str, str]:
    """link -> target, both absolute, of debian/PKG.links."""
    pairs = [line.split() for line in (DEBIAN / f"{pkg}.links").read_text().splitlines() if line.strip()]
    return {"/" + link: "/" + target for target, link in pairs}


def test_each_package_puts_its_own_console_scripts_on_the_path_and_its_units_run_them() -> None:
    scripts = _scripts()
    owners = {"ektp-agent": {"ektp-agent", "ektp-sim"}, "ektp-central": {"ektp-central"}}
    assert set(scripts) == set().union(*owners.values())
    for pkg, units in _packaged_units().items():
        links = _links(pkg)
        bins = {Path(link).name: target for link, target in links.items() if link.startswith("/usr/bin/")}
        assert bins == {name: f"/opt/{pkg}/.venv/bin/{name}" for name in owners[pkg]}
        assert links[f"/opt/{pkg}/docs"] == f"/usr/share/doc/{pkg}"
        for unit, text in units.items():
            (command,) = re.findall(r"(?m)^ExecStart=(\S+)", text)
            assert command.removeprefix(f"/opt/{pkg}/.venv/bin/") in owners[pkg], (unit, command)


def _shipped_docs(pkg: str) -> set[str]:
    """Paths under /usr/share/doc/PKG that dh_installdocs installs from debian/PKG.docs."""
    shipped: set[str] = set()
    for entry in (DEBIAN / f"{pkg}.docs").read_text().split():
        matches = glob.glob(str(REPO / entry))
        assert matches, f"debian/{pkg}.docs: {entry} matches nothing"
        for match in map(Path, matches):
            files = [match] if match.is_file() else [f for f in match.rglob("*") if f.is_file()]
            shipped |= {
                str(Path(match.name) / f.relative_to(match)) if f != match else match.name for f in files
            }
    return shipped


def test_the_documentation_each_packaged_unit_names_is_in_its_package() -> None:
    """Documentation=file:///opt/PKG/docs/X resolves through the docs link to /usr/share/doc/PKG/X."""
    for pkg, units in _packaged_units().items():
        shipped = _shipped_docs(pkg)
        assert {"README.md", "operations.md", "central.md", "img/kiosk.png"} <= shipped
        for unit, text in units.items():
            pages = " ".join(re.findall(r"(?m)^Documentation=(.*)$", text)).split()
            assert pages, unit
            for page in pages:
                prefix = f"file:///opt/{pkg}/docs/"
                assert page.startswith(prefix) and page.removeprefix(prefix) in shipped, (pkg, unit, page)


def test_the_conffiles_come_from_config_init_commands_that_work() -> None:
    commands = re.findall(r"(debian/\S+/\.venv/bin/python (?:-m \w+|-c '[^']*')\s+config init)", _rules())
    assert len(commands) == 2, commands  # the agent's and the centre's
    for command in commands:
        argv = shlex.split(VENV_PYTHON.sub(shlex.quote(sys.executable), command))
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO)
        assert p.returncode == 0, f"{command}: {p.stderr}"
        tomllib.loads(p.stdout)  # a config, every key commented out at its default
        assert "[mqtt]" in p.stdout.replace("# ", "")


@pytest.mark.parametrize("pkg", PACKAGES)
@pytest.mark.parametrize("script", ["postinst", "prerm", "postrm"])
def test_maintainer_scripts_are_posix_sh_with_debhelpers_place(pkg: str, script: str) -> None:
    path = DEBIAN / f"{pkg}.{script}"
    text = path.read_text()
    assert text.startswith("#!/bin/sh\n") and "\nset -e\n" in text
    assert text.count("\n#DEBHELPER#\n") == 1  # where debhelper puts the units', users' and dirs' steps
    for shell in ("sh", "dash"):
        if shutil.which(shell):
            p = subprocess.run([shell, "-n", str(path)], capture_output=True, text=True, timeout=30)
            assert p.returncode == 0, p.stderr


class ScratchRoot:
    """Maintainer scripts run with their paths moved under ``root``, the package's venv being
    this one, and dpkg-statoverride and deb-systemd-invoke stubs that write down their calls."""

    def __init__(self, root: Path, pkg: str) -> None:
        self.root, self.pkg = root, pkg
        self.stubs = root / "stubs"
        self.stubs.mkdir(parents=True)
        self.calls = root / "calls.log"
        for tool, status in (
            ("dpkg-statoverride", 'case "$1" in --list) exit 1;; esac'),
            ("deb-systemd-invoke", ""),
        ):
            stub = self.stubs / tool
            stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> {self.calls}\n{status}\nexit 0\n')
            stub.chmod(0o755)
        self.var = root / "var/lib" / pkg
        self.etc = root / "etc" / pkg

    def run(self, script: str, *args: str) -> subprocess.CompletedProcess[str]:
        text = (DEBIAN / f"{self.pkg}.{script}").read_text()
        text = text.replace(f"/opt/{self.pkg}/.venv/bin/", f"{BIN}/")
        text = text.replace(f"/var/lib/{self.pkg}", str(self.var)).replace(f"/etc/{self.pkg}", str(self.etc))
        # nothing left that would touch this machine's /etc, /var or /opt (as root, a purge would)
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert not re.findall(r"(?<![\w./-])/(?:etc|var|opt)/\S*", code), script
        path = self.root / f"{self.pkg}.{script}"
        path.write_text(text)
        env = {**os.environ, "PATH": f"{self.stubs}:{os.environ['PATH']}"}
        return subprocess.run(["sh", str(path), *args], capture_output=True, text=True, timeout=60, env=env)

    def called(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []


def _outbox(path: Path, pending: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with Outbox(path) as ob:
        for _ in range(pending):
            packet_id = str(uuid.uuid4())
            ob.commit(lambda seq, pid=packet_id: seal(KEY, seq, pid, b"enrollment" * 300))  # type: ignore[misc]


@pytest.mark.parametrize("pkg", PACKAGES)
def test_a_first_install_says_what_is_missing_and_an_upgrade_says_nothing(pkg: str, tmp_path: Path) -> None:
    s = ScratchRoot(tmp_path, pkg)
    s.etc.mkdir(parents=True)
    config = s.etc / "config.toml"
    p = subprocess.run([BIN / pkg, "config", "init"], capture_output=True, text=True, timeout=60)
    config.write_text(p.stdout)  # the conffile as the package ships it
    p = s.run("postinst", "configure", "")
    assert p.returncode == 0, p.stderr
    assert (
        f"{pkg}: installed and enabled at boot, not started: it needs a config and its keys first" in p.stdout
    )
    assert f"{pkg} config init" in p.stdout and "keys init" in p.stdout
    user = "ektp" if pkg == "ektp-agent" else "ektp-central"
    assert f"dpkg-statoverride --update --add root {user} 0640 {config}" in s.called()
    assert not any(c.startswith("deb-systemd-invoke start") for c in s.called())  # not ready: not started
    p = s.run("postinst", "configure", "0.1.0")  # an upgrade: try-restart is debhelper's part
    assert p.returncode == 0 and p.stdout == "", p.stdout + p.stderr


@pytest.mark.parametrize("pending", [1, 0], ids=["undelivered", "all-delivered"])
def test_agent_remove_keeps_the_outbox_and_purge_warns_then_deletes(pending: int, tmp_path: Path) -> None:
    s = ScratchRoot(tmp_path, "ektp-agent")
    _outbox(s.var / "outbox.db", pending)
    (s.var / "kiosk.key").write_text("key")
    s.etc.mkdir(parents=True)
    (s.etc / "config.toml").write_text("")

    p = s.run("prerm", "remove")
    assert p.returncode == 0, p.stderr
    if pending:
        assert f"the outbox keeps {pending} enrollment packet(s) the centre has not acknowledged" in p.stderr
        assert "ektp-agent export --to DIR --include-rejected --include-damaged" in p.stderr
    else:
        assert p.stderr == ""
    p = s.run("postrm", "remove")
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert (s.var / "outbox.db").exists() and (s.var / "kiosk.key").exists() and s.etc.exists()

    p = s.run("postrm", "purge")
    assert p.returncode == 0, p.stderr
    warning = f"WARNING: purge deletes {s.var}, whose outbox holds {pending} enrollment"
    assert (warning in p.stderr) == bool(pending), p.stderr
    if pending:
        assert "ektp-agent export --to DIR" in p.stderr
    assert not s.var.exists() and not s.etc.exists()
    assert f"dpkg-statoverride --list {s.etc}/config.toml" in s.called()


def test_central_purge_warns_before_it_deletes_the_store_and_keys(tmp_path: Path) -> None:
    s = ScratchRoot(tmp_path, "ektp-central")
    s.var.mkdir(parents=True)
    (s.var / "central.key").write_text("key")
    s.etc.mkdir(parents=True)
    for script in ("prerm", "postrm"):
        p = s.run(script, "remove")
        assert p.returncode == 0 and p.stderr == "", p.stderr
    assert (s.var / "central.key").exists()
    p = s.run("postrm", "purge")
    assert p.returncode == 0, p.stderr
    assert f"ektp-central: WARNING: purge deletes {s.var}: the centre's SQLite store" in p.stderr
    assert not s.var.exists() and not s.etc.exists()
