"""The agent's config: defaults, every bad value named by key, unknown keys refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.config import MAX_STORE_BYTES, ConfigError, load_config, parse_config
from tests.agentkit import script

GOOD = """
[kiosk]
id = "320715-01"
data_dir = "/var/lib/ektp-agent"
[mqtt]
host = "broker.example"
port = 8883
topic_prefix = "ektp/v1"
tls = true
[keys]
central_public_key = "/etc/ektp-agent/central.pub"
[store]
max_bytes = 8000000000
[health]
interval_s = 30
"""


def test_good_config_loads_typed_values() -> None:
    c = parse_config(GOOD)
    assert c.kiosk.id == "320715-01"
    assert c.mqtt.port == 8883 and c.mqtt.tls is True
    assert c.store.max_bytes == 8_000_000_000
    assert c.health.interval_s == 30.0 and isinstance(c.health.interval_s, float)
    assert c.kiosk_private_key == Path("/var/lib/ektp-agent/kiosk.key")
    assert c.outbox_path == Path("/var/lib/ektp-agent/outbox.db")


def test_empty_config_gives_the_defaults() -> None:
    c = parse_config("")
    assert c.mqtt.host == "localhost" and c.mqtt.port == 1883 and c.mqtt.topic_prefix == "ektp/v1"
    assert c.store.max_bytes == 8_000_000_000
    assert c.devices.fingerprint.baud == 57600


def test_config_is_frozen() -> None:
    c = parse_config(GOOD)
    with pytest.raises(AttributeError):
        c.kiosk.id = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('[kiosk]\nid = "bad id with spaces!"', "kiosk.id", "A-Z"),
        ('[kiosk]\nid = ""', "kiosk.id", "1-64"),
        ("[kiosk]\nid = " + '"' + "x" * 65 + '"', "kiosk.id", "1-64"),
        ("[kiosk]\nid = 42", "kiosk.id", "a string"),
        ('[mqtt]\nport = "1883"', "mqtt.port", "whole number"),
        ("[mqtt]\nport = 70000", "mqtt.port", "1-65535"),
        ('[mqtt]\ntopic_prefix = "ektp/#"', "mqtt.topic_prefix", "wildcards"),
        ('[mqtt]\ntls = "yes"', "mqtt.tls", "true or false"),
        ("[store]\nmax_bytes = -5", "store.max_bytes", "at least"),
        ("[store]\nmax_bytes = true", "store.max_bytes", "whole number"),
        ("[health]\ninterval_s = 0", "health.interval_s", "0.5-86400"),
        ("[devices.fingerprint]\nbaud = 1234", "devices.fingerprint.baud", "9600"),
        ("[devices.signature]\nbaud = 9600", "devices.signature.baud", "19200 or 38400"),
        ('[kiosk]\nidd = "x"', "kiosk.idd", "known key"),
        ("[kiosks]\nid = 1", "kiosks", "known key"),
        ('kiosk = "x"', "kiosk", "table"),
        ("[kiosk\n", "(syntax)", "TOML"),
        ("[mqtt]\nack_timeout_s = inf", "mqtt.ack_timeout_s", "finite number"),
        ("[mqtt]\nack_timeout_s = nan", "mqtt.ack_timeout_s", "finite number"),
        ("[mqtt]\nack_timeout_s = 1e300", "mqtt.ack_timeout_s", "at most 86400"),
        ("[mqtt]\nreconnect_max_s = -inf", "mqtt.reconnect_max_s", "finite number"),
        ("[health]\ninterval_s = inf", "health.interval_s", "finite number"),
        ("[devices.signature]\npen_up_quiet_s = nan", "devices.signature.pen_up_quiet_s", "finite number"),
        (
            "[mqtt]\nreconnect_min_s = 10\nreconnect_max_s = 2",
            "mqtt.reconnect_min_s",
            "mqtt.reconnect_max_s (2)",
        ),
        (f"[store]\nmax_bytes = {MAX_STORE_BYTES + 1}", "store.max_bytes", "largest outbox SQLite can keep"),
        ("[store]\nmax_bytes = 9223372036854775807", "store.max_bytes", "at most"),
        ("[store]\nmax_bytes = 999999", "store.max_bytes", "at least 1000000"),
        ("[api]\nmax_connections = 0", "api.max_connections", "1-1024"),
        ("[api]\nidle_timeout_s = inf", "api.idle_timeout_s", "finite number"),
    ],
)
def test_bad_values_name_key_value_and_expectation(text: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, path=Path("/etc/ektp-agent/config.toml"))
    assert err.value.key == key
    assert words in str(err.value)
    assert "/etc/ektp-agent/config.toml" in str(err.value)


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    f = tmp_path / "agent.toml"
    f.write_text('[kiosk]\ndata_dir = "data"\n[keys]\ncentral_public_key = "keys/central.pub"\n')
    c = load_config(f)
    assert c.kiosk.data_dir == tmp_path / "data"
    assert c.keys.central_public_key == tmp_path / "keys/central.pub"


def test_missing_file_is_an_error_only_when_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="existing TOML file"):
        load_config(tmp_path / "nope.toml")
    assert load_config(tmp_path / "nope.toml", required=False).source is None


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60)


def test_config_check_cli_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    p = _cli("--config", str(good), "config", "check")
    assert p.returncode == 0, p.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("port = 8883", "port = 0"))
    p = _cli("--config", str(bad), "config", "check")
    assert p.returncode == 2
    assert "mqtt.port" in p.stderr and "1-65535" in p.stderr
    assert p.stdout == ""


# ----------------------------------------------------------------------------- values that cannot work


def _agent(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [script("ektp-agent"), "--config", str(config), *args], capture_output=True, text=True, timeout=60
    )


def _unworkable_cases(tmp_path: Path) -> list[tuple[str, str, str]]:
    """(config text, the key the error must name, words of the reason): each printed "config OK" once."""
    st = os.statvfs(tmp_path)
    disk = st.f_blocks * st.f_frsize
    base = f'[kiosk]\nid = "320715-01"\ndata_dir = "{tmp_path / "data"}"\n'
    return [
        (base + "[mqtt]\nreconnect_min_s = 30\nreconnect_max_s = 5\n", "mqtt.reconnect_min_s", "at most"),
        (base + "[mqtt]\nack_timeout_s = inf\n", "mqtt.ack_timeout_s", "finite number"),
        (base + "[store]\nmax_bytes = 9000000000000000000\n", "store.max_bytes", "SQLite"),
        (base + f"[store]\nmax_bytes = {disk + 1}\n", "store.max_bytes", "file system"),
        (
            base + f'[mqtt]\nusername = "k"\npassword_file = "{tmp_path / "no-such-password"}"\n',
            "mqtt.password_file",
            "does not exist",
        ),
        (base + f'[mqtt]\nca_file = "{tmp_path}"\n', "mqtt.ca_file", "not a regular file"),
    ]


def test_config_check_and_run_refuse_values_that_cannot_work(tmp_path: Path) -> None:
    for i, (text, key, words) in enumerate(_unworkable_cases(tmp_path)):
        conf = tmp_path / f"case{i}.toml"
        conf.write_text(text)
        for args in (("config", "check"), ("config", "check", "--json"), ("run",)):
            p = _agent(conf, *args)
            assert p.returncode == 2, (args, text, p.stdout, p.stderr)
            assert key in p.stderr and words in p.stderr, (args, p.stderr)
            assert str(conf) in p.stderr and "Traceback" not in p.stderr
            assert "config OK" not in p.stdout
    assert not (tmp_path / "data").exists(), "run started before its config was checked"


def test_an_explicit_store_bound_the_disk_can_hold_is_fine(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    password = tmp_path / "password"
    password.write_text("secret\n")
    conf.write_text(
        f'[kiosk]\ndata_dir = "{tmp_path / "data"}"\n[store]\nmax_bytes = 2000000\n'
        f'[mqtt]\nusername = "k"\npassword_file = "{password}"\nreconnect_min_s = 5\nreconnect_max_s = 5\n'
    )
    p = _agent(conf, "config", "check")
    assert p.returncode == 0, p.stderr
    assert "config OK" in p.stdout


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    data = '[kiosk]\nid = "320715-01"\n# catatan: kecamatan Ç\n'.encode("latin-1")
    conf.write_bytes(data)
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(conf)
    for args in (("config", "check"), ("status",), ("run",)):
        p = _agent(conf, *args)
        assert p.returncode == 2, (args, p.stderr)
        assert f"config {conf}" in p.stderr and "UTF-8" in p.stderr, p.stderr
        assert f"byte {data.index(0xC7)} (line 3)" in p.stderr
        assert "Traceback" not in p.stderr


# ----------------------------------------------------------------------------- without a config file


@pytest.fixture
def no_default_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The default config path is somewhere with nothing; no $EKTP_CONFIG; the umask kept."""
    from agent import config as agent_config

    missing = tmp_path / "etc" / "config.toml"
    monkeypatch.setattr(agent_config, "DEFAULT_CONFIG_PATH", missing)
    monkeypatch.delenv("EKTP_CONFIG", raising=False)
    umask = os.umask(0o022)
    os.umask(umask)
    yield missing
    os.umask(umask)


@pytest.mark.parametrize("command", [["run"], ["keys", "init"], ["keys", "rotate"], ["config", "check"]])
def test_commands_that_make_state_refuse_to_run_without_a_config_file(
    no_default_config: Path, command: list[str]
) -> None:
    done = CliRunner().invoke(main, command)
    assert done.exit_code == 2, done.output
    assert f"no config file at {no_default_config}: `ektp-agent {' '.join(command)}` needs one" in done.stderr
    assert f"ektp-agent config init --to {no_default_config}" in done.stderr
    assert done.stdout == ""


def test_other_commands_say_they_use_the_built_in_defaults(no_default_config: Path, tmp_path: Path) -> None:
    done = CliRunner().invoke(main, ["keys", "show"])
    first = done.stderr.splitlines()[0]
    assert first == (
        f"ektp-agent: no config file at {no_default_config} (pass --config PATH, or write one with:"
        f" ektp-agent config init --to {no_default_config}); using built-in defaults"
    )


def test_a_named_config_file_that_is_missing_is_an_error(no_default_config: Path, tmp_path: Path) -> None:
    named = tmp_path / "typo.toml"
    for args, env in ((["--config", str(named), "status"], {}), (["status"], {"EKTP_CONFIG": str(named)})):
        done = CliRunner().invoke(main, args, env=env)
        assert done.exit_code == 2 and f"no config file at {named}" in done.stderr, done.stderr
        assert "--config or $EKTP_CONFIG" in done.stderr


# ----------------------------------------------------------------------------- key files before `run`


def test_config_check_lists_the_key_files_run_needs_with_the_right_advice(tmp_path: Path) -> None:
    """The kiosk makes its own key; the centre's public key is copied from the centre."""
    from wire.keys import create_central_keys

    conf = tmp_path / "agent.toml"
    conf.write_text(
        f'[kiosk]\ndata_dir = "{tmp_path / "data"}"\n[keys]\ncentral_public_key = "central.key.pub"\n'
    )
    kiosk_key, central_pub = tmp_path / "data" / "kiosk.key", tmp_path / "central.key.pub"
    p = _agent(conf, "config", "check")
    assert p.returncode == 0, p.stderr
    assert "before `ektp-agent run`:" in p.stdout
    kiosk_line, central_line = p.stdout.splitlines()[2:4]
    assert kiosk_line.strip().startswith(
        f"keys.kiosk_private_key: the kiosk's private key {kiosk_key} does not"
    )
    assert "create it with `ektp-agent keys init`" in kiosk_line
    assert central_line.strip().startswith(f"keys.central_public_key: the centre's public key {central_pub}")
    assert (
        "copy it here from the centre" in central_line and "`ektp-central keys init` printed" in central_line
    )
    assert "create it with" not in central_line
    doc = json.loads(_agent(conf, "config", "check", "--json").stdout)
    assert doc["ready"] is False
    assert [(m["key"], m["file"]) for m in doc["missing"]] == [
        ("keys.kiosk_private_key", str(kiosk_key)),
        ("keys.central_public_key", str(central_pub)),
    ]

    assert _agent(conf, "keys", "init").returncode == 0
    create_central_keys(tmp_path / "central.key")
    p = _agent(conf, "config", "check")
    assert p.returncode == 0 and "before" not in p.stdout, p.stdout
    assert json.loads(_agent(conf, "config", "check", "--json").stdout)["ready"] is True

    os.chmod(kiosk_key, 0o644)  # as run would: refused, named, with the fix
    p = _agent(conf, "config", "check")
    assert p.returncode == 2 and "keys.kiosk_private_key" in p.stderr and f"chmod 600 {kiosk_key}" in p.stderr
    os.chmod(kiosk_key, 0o600)
    central_pub.write_text(kiosk_key.with_name("kiosk.key.pub").read_text())  # the wrong .pub
    p = _agent(conf, "config", "check")
    assert p.returncode == 2 and "keys.central_public_key" in p.stderr and str(central_pub) in p.stderr
    assert "Traceback" not in p.stderr


def test_run_names_a_missing_centre_key_with_the_right_advice(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text(
        f'[kiosk]\ndata_dir = "{tmp_path / "data"}"\n[keys]\ncentral_public_key = "central.pub"\n'
    )
    assert _agent(conf, "keys", "init").returncode == 0
    p = _agent(conf, "run")
    assert p.returncode == 2, p.stderr
    assert (
        f"the centre's public key {tmp_path / 'central.pub'} does not exist; copy it here from the centre"
        in p.stderr
    )
