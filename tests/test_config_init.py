"""`config init` on both ends: the commented file holds every key the loader declares, with
defaults that are the loader's own; the shipped examples and docs/configuration.md's tables
are that output; the file is written 0640, never over anything without --force, never
through a symlink."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import typing
from pathlib import Path
from types import ModuleType

import pytest
from click.testing import CliRunner

from agent import cli as agent_cli
from agent.config import KIOSK_ID_WORDS, AgentConfig, load_config, parse_config
from agent.devices import build_drivers
from central import cli as central_cli
from central.config import _KEYS, CentralConfig, load_central_config, parse_central_config
from tests.agentkit import script

ROOT = Path(__file__).resolve().parent.parent
REGENERATE = "run: .venv/bin/python examples/regenerate.py"


@pytest.fixture(autouse=True)
def keep_umask() -> typing.Iterator[None]:
    """`ektp-agent` sets the process's umask to 077; in-process runs must not leave it so."""
    umask = os.umask(0o022)
    os.umask(umask)
    yield
    os.umask(umask)


def regenerate_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("regenerate", ROOT / "examples" / "regenerate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def agent_init(*args: str) -> str:
    done = CliRunner().invoke(agent_cli.main, ["config", "init", *args])
    assert done.exit_code == 0, done.output
    return done.stdout


def central_init(*args: str) -> str:
    done = CliRunner().invoke(central_cli.main, ["config", "init", *args])
    assert done.exit_code == 0, done.output
    return done.stdout


def declared_agent_keys(cls: type = AgentConfig, prefix: str = "") -> list[tuple[str, str]]:
    """(section, key) of every field the agent's loader builds, walked from its dataclasses."""
    out: list[tuple[str, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in ("source", "explicit"):
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            out += declared_agent_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append((prefix.rstrip("."), f.name))
    return out


def declared_central_keys() -> list[tuple[str, str]]:
    return [(section, key) for section, keys in _KEYS.items() for key in keys]


KEY_LINE = re.compile(r"^(# )?([a-z_]+) = (.+)$")


def key_lines(text: str) -> dict[tuple[str, str], tuple[int, bool]]:
    """(section, key) -> (line number, commented out) for each key line of a generated file."""
    found: dict[tuple[str, str], tuple[int, bool]] = {}
    section = ""
    for n, line in enumerate(text.splitlines()):
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif m := KEY_LINE.match(line):
            assert (section, m.group(2)) not in found, f"[{section}] {m.group(2)} twice"
            found[(section, m.group(2))] = (n, m.group(1) is not None)
    return found


AGENT_CASES = [(), ("--kiosk-id", "320715-01", "--broker", "mqtt.example:8883", "--simulate")]


@pytest.mark.parametrize("args", AGENT_CASES, ids=["plain", "all-options"])
def test_the_agent_file_has_every_declared_key_and_loads(tmp_path: Path, args: tuple[str, ...]) -> None:
    text = agent_init(*args)
    path = tmp_path / "agent.toml"
    path.write_text(text)
    config = load_config(path)  # the real loader
    lines = key_lines(text)
    assert set(lines) == set(declared_agent_keys())
    active = {key for key, (_, commented) in lines.items() if not commented}
    declared = {f"{s}.{k}" for s, k in declared_agent_keys()}
    assert {f"{s}.{k}" for s, k in active} == set(config.explicit) & declared, "the loader reads what is set"
    if not args:
        assert active == set() and config == AgentConfig(), "a file left as written is the defaults"


def test_the_central_file_has_every_declared_key_and_loads(tmp_path: Path) -> None:
    for args in ((), ("--broker", "[2001:db8::1]:8883")):
        text = central_init(*args)
        path = tmp_path / "central.toml"
        path.write_text(text)
        config = load_central_config(path)
        lines = key_lines(text)
        assert set(lines) == set(declared_central_keys())
        if args:
            assert (config.mqtt.host, config.mqtt.port) == ("2001:db8::1", 8883)
            assert not lines[("mqtt", "host")][1] and not lines[("mqtt", "port")][1]
        else:
            assert all(commented for _, commented in lines.values())
            assert config == CentralConfig(source=path)


def _uncommented(text: str, line: int) -> str:
    lines = text.splitlines()
    lines[line] = lines[line].removeprefix("# ")
    return "\n".join(lines) + "\n"


def test_each_commented_default_is_the_agent_loaders_default(tmp_path: Path) -> None:
    """Uncommenting a key's line, alone, changes nothing (its value is the real default); an
    example line (a key without a fixed default) loads."""
    from agent.config import key_docs

    text = agent_init()
    base = tmp_path / "config.toml"
    fixed = {(d.section, d.name) for d in key_docs() if d.default is not None and not d.default_text}
    assert ("mqtt", "port") in fixed and ("kiosk", "id") not in fixed
    for key, (line, _) in key_lines(text).items():
        changed = parse_config(_uncommented(text, line), path=base)
        if key in fixed:
            assert changed == AgentConfig(), key


def test_each_commented_default_is_the_central_loaders_default(tmp_path: Path) -> None:
    from central.config import key_docs

    text = central_init()
    base = tmp_path / "central.toml"
    fixed = {(d.section, d.name) for d in key_docs() if d.default is not None and not d.default_text}
    assert ("store", "url") in fixed and ("mqtt", "client_id") not in fixed
    for key, (line, _) in key_lines(text).items():
        if key in fixed:
            assert parse_central_config(_uncommented(text, line), base) == CentralConfig(source=base), key


def test_every_key_has_a_meaning() -> None:
    from agent.config import key_docs as agent_docs
    from central.config import key_docs as central_docs

    for doc in [*agent_docs(), *central_docs()]:
        assert len(doc.meaning) > 20 and doc.meaning.endswith("."), doc.key


def test_the_shipped_examples_are_config_init_output() -> None:
    for name, text in (("agent.toml", agent_init()), ("central.toml", central_init())):
        shipped = (ROOT / "examples" / name).read_text()
        assert shipped == text, f"examples/{name} is not what `config init` writes; {REGENERATE}"


def test_docs_list_every_key_as_declared() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text()
    assert regenerate_module().with_tables(docs) == docs, (
        f"docs/configuration.md's key tables are stale; {REGENERATE}"
    )
    for section, key in [*declared_agent_keys(), *declared_central_keys()]:
        assert f"| `[{section}] {key}` |" in docs, (section, key)


def test_simulate_sets_the_ports_run_simulate_uses(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(agent_init("--simulate", "--kiosk-id", "sim-01"))
    config = load_config(path)
    drivers = build_drivers(config, simulate=True)  # what `ektp-agent run --simulate` opens
    for name in ("fingerprint", "signature"):
        port = getattr(config.devices, name).port
        assert port == str(config.sim_dir / name) == drivers[name].port  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--kiosk-id", "bad id"), f"--kiosk-id 'bad id': expected {KIOSK_ID_WORDS}"),
        (("--kiosk-id", "x" * 65), "--kiosk-id"),
        (("--broker", "mqtt.example:port"), "the port 'port' is not a number"),
        (("--broker", "mqtt.example:70000"), "--broker 'mqtt.example:70000': expected a TCP port, 1-65535"),
        (("--broker", ":1883"), "the host is missing"),
    ],
)
def test_bad_options_name_the_option_and_write_nothing(
    tmp_path: Path, args: tuple[str, ...], words: str
) -> None:
    to = tmp_path / "agent.toml"
    done = CliRunner().invoke(agent_cli.main, ["config", "init", *args, "--to", str(to)])
    assert done.exit_code == 2 and words in done.stderr, done.stderr
    assert not to.exists()


def test_the_centre_refuses_a_bad_broker(tmp_path: Path) -> None:
    to = tmp_path / "central.toml"
    done = CliRunner().invoke(central_cli.main, ["config", "init", "--broker", "mqtt://x", "--to", str(to)])
    assert done.exit_code == 2 and "--broker 'mqtt://x'" in done.stderr, done.stderr
    assert not to.exists()


# ----------------------------------------------------------------------------- writing the file


@pytest.mark.parametrize("tool", ["ektp-agent", "ektp-central"])
def test_config_init_writes_0640_and_never_over_anything_without_force(tmp_path: Path, tool: str) -> None:
    """As a technician runs it (the console script; the agent's own umask is 077)."""

    def init(to: Path, *more: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [script(tool), "config", "init", "--to", str(to), *more],
            capture_output=True,
            text=True,
            timeout=60,
        )

    to = tmp_path / "config.toml"
    done = init(to)
    assert done.returncode == 0, done.stderr
    assert to.stat().st_mode & 0o777 == 0o640
    assert str(to) in done.stdout and "config check" in done.stdout
    written = to.read_text()

    to.write_text("# edited by hand\n")
    done = init(to)
    assert done.returncode == 2 and f"{to} already exists" in done.stderr and "--force" in done.stderr
    assert to.read_text() == "# edited by hand\n"

    target = tmp_path / "elsewhere"
    target.write_text("not to be touched\n")
    link = tmp_path / "link.toml"
    link.symlink_to(target)
    done = init(link)
    assert done.returncode == 2 and "a symbolic link" in done.stderr, done.stderr
    dangling = tmp_path / "dangling.toml"
    dangling.symlink_to(tmp_path / "nothing-here")
    assert init(dangling).returncode == 2 and not (tmp_path / "nothing-here").exists()

    assert init(link, "--force").returncode == 0
    assert not link.is_symlink() and link.read_text() == written and link.stat().st_mode & 0o777 == 0o640
    assert target.read_text() == "not to be touched\n"
    assert init(to, "--force").returncode == 0 and to.read_text() == written
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.toml",
        "dangling.toml",
        "elsewhere",
        "link.toml",
    ], "no temporary file is left behind"

    done = init(tmp_path / "no-such-dir" / "config.toml")
    assert done.returncode == 1 and "no-such-dir does not exist" in done.stderr


def test_config_init_gives_the_file_its_directorys_group(tmp_path: Path) -> None:
    """Under /etc/ektp-agent (root:ektp 0750) the service's group must be able to read it."""
    groups = [g for g in os.getgroups() if g != os.getegid()]
    if os.geteuid() != 0 and not groups:
        pytest.skip("needs root, or a second group of this user")
    group = groups[0] if groups else 65534
    directory = tmp_path / "etc"
    directory.mkdir()
    os.chown(directory, -1, group)
    done = CliRunner().invoke(central_cli.main, ["config", "init", "--to", str(directory / "config.toml")])
    assert done.exit_code == 0, done.output
    assert (directory / "config.toml").stat().st_gid == group
