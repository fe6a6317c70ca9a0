"""The centre's config: a stable MQTT client id (so a restart resumes the broker's session),
[mqtt] instance, and [store] partial_expiry_s, each checked with a message naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from central.config import (
    DEFAULT_PARTIAL_EXPIRY_S,
    CentralConfig,
    CentralMqtt,
    ConfigError,
    default_client_id,
    load_central_config,
)
from wire.names import KIOSK_ID_RE


def load(tmp_path: Path, text: str) -> CentralConfig:
    path = tmp_path / "central.toml"
    path.write_text(text)
    return load_central_config(path)


def test_defaults(tmp_path: Path) -> None:
    config = load_central_config(tmp_path / "absent.toml", required=False)
    assert config.partial_expiry_s == DEFAULT_PARTIAL_EXPIRY_S == 604800
    assert config.mqtt.instance == "main"
    assert config.mqtt.client_id == default_client_id("main")
    assert config.mqtt.client_id.startswith("ektp-central-") and config.mqtt.client_id.endswith("-main")


def test_the_client_id_is_the_same_across_restarts_and_names_the_instance(tmp_path: Path) -> None:
    """Derived from host and instance, never from the process: a restart resumes the same MQTT session."""
    first = load(tmp_path, '[mqtt]\ninstance = "b-2"\n')
    argv = [
        sys.executable,
        "-c",
        "import sys; from pathlib import Path; from central.config import load_central_config as l;"
        " print(l(Path(sys.argv[1])).mqtt.client_id)",
        str(tmp_path / "central.toml"),
    ]
    other_process = subprocess.run(
        argv, capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert first.mqtt.client_id == other_process == default_client_id("b-2")
    assert first.mqtt.client_id.endswith("-b-2")
    assert default_client_id("main") != default_client_id("b-2")


def test_an_explicit_client_id_is_kept(tmp_path: Path) -> None:
    config = load(tmp_path, '[mqtt]\nclient_id = "centre-a"\ninstance = "x"\n')
    assert config.mqtt.client_id == "centre-a"
    assert CentralMqtt(client_id="centre-b").client_id == "centre-b"
    assert CentralMqtt(instance="two").client_id == default_client_id("two")


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        ("centre1", "ektp-central-centre1-main"),
        ("centre.example.org", "ektp-central-centre-example-org-main"),
        ("weird host!@#name", "ektp-central-weird-host-name-main"),
        ("...", "ektp-central-host-main"),
    ],
)
def test_the_hostname_is_reduced_to_the_client_id_charset(hostname: str, expected: str) -> None:
    assert default_client_id("main", hostname) == expected


def test_a_long_hostname_is_cut_to_64_characters_and_stays_distinct() -> None:
    a = default_client_id("main", "a" * 200 + ".dc1.example.org")
    b = default_client_id("main", "a" * 200 + ".dc2.example.org")
    assert len(a) == len(b) == 64 and a != b
    assert a.startswith("ektp-central-aaaa") and a.endswith("-main")
    assert KIOSK_ID_RE.fullmatch(a)
    long_instance = default_client_id("i" * 64, "h" * 100)
    assert long_instance.endswith("-" + "i" * 64), "the instance is never cut"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[mqtt]\ninstance = "two words"\n', "mqtt.instance"),
        ('[mqtt]\ninstance = ""\n', "mqtt.instance"),
        (f'[mqtt]\ninstance = "{"x" * 65}"\n', "mqtt.instance"),
        ("[mqtt]\ninstance = 3\n", "mqtt.instance"),
        ('[mqtt]\nclient_id = "  "\n', "mqtt.client_id"),
        ("[store]\npartial_expiry_s = 0\n", "store.partial_expiry_s"),
        ("[store]\npartial_expiry_s = -5\n", "store.partial_expiry_s"),
        ("[store]\npartial_expiry_s = nan\n", "store.partial_expiry_s"),
        ("[store]\npartial_expiry_s = inf\n", "store.partial_expiry_s"),
        ('[store]\npartial_expiry_s = "7d"\n', "store.partial_expiry_s"),
        ("[store]\npartial_expiry_s = true\n", "store.partial_expiry_s"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert info.value.key == key and key in str(info.value)


@pytest.mark.parametrize(("value", "expected"), [("3600", 3600.0), ("90.5", 90.5)])
def test_partial_expiry_takes_whole_and_fractional_seconds(
    tmp_path: Path, value: str, expected: float
) -> None:
    assert load(tmp_path, f"[store]\npartial_expiry_s = {value}\n").partial_expiry_s == expected
