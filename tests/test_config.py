"""The agent's config: defaults, every bad value named by key, unknown keys refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config, parse_config

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
