"""The centre's config: a stable MQTT client id (so a restart resumes the broker's session),
[mqtt] instance, and every key checked for a value that cannot work, with a message naming the
key and the file; `ektp-central run` stops at start (exit 2) on each."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from central.cli import main
from central.config import (
    _KEYS,
    DEFAULT_PARTIAL_EXPIRY_S,
    DEFAULT_STORE_URL,
    CentralConfig,
    CentralMqtt,
    ConfigError,
    default_client_id,
    load_central_config,
)
from wire.names import KIOSK_ID_RE

CENTRAL = Path(sys.executable).parent / "ektp-central"


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


# One case per value that cannot work: each must name its key (and the file), in the loader and
# at `ektp-central run`, which must stop at once with exit 2 instead of running on it.
BAD_VALUES = [
    ('[mqtt]\ninstance = "two words"\n', "mqtt.instance"),
    ('[mqtt]\ninstance = ""\n', "mqtt.instance"),
    (f'[mqtt]\ninstance = "{"x" * 65}"\n', "mqtt.instance"),
    ("[mqtt]\ninstance = 3\n", "mqtt.instance"),
    ('[mqtt]\nclient_id = "  "\n', "mqtt.client_id"),
    ('[mqtt]\nclient_id = "centre\\u0000a"\n', "mqtt.client_id"),  # MQTT forbids U+0000
    ('[mqtt]\nhost = ""\n', "mqtt.host"),
    ('[mqtt]\nhost = "broker.example:1883"\n', "mqtt.host"),  # the port is [mqtt] port
    ('[mqtt]\nhost = "mqtt://broker.example"\n', "mqtt.host"),
    ('[mqtt]\nhost = "two words"\n', "mqtt.host"),
    ("[mqtt]\nport = 0\n", "mqtt.port"),
    ("[mqtt]\nport = 65536\n", "mqtt.port"),
    ("[mqtt]\nport = inf\n", "mqtt.port"),
    ("[mqtt]\nport = nan\n", "mqtt.port"),
    ('[mqtt]\nport = "1883"\n', "mqtt.port"),
    ('[mqtt]\ntopic_prefix = "ektp/+"\n', "mqtt.topic_prefix"),
    ('[mqtt]\ntopic_prefix = "/ektp/v1"\n', "mqtt.topic_prefix"),
    ('[mqtt]\ntopic_prefix = ""\n', "mqtt.topic_prefix"),
    ('[mqtt]\nshare_group = "a/b#"\n', "mqtt.share_group"),  # would subscribe to nothing, silently
    ('[mqtt]\nshare_group = "a+b"\n', "mqtt.share_group"),
    ('[mqtt]\nshare_group = ""\n', "mqtt.share_group"),
    ('[mqtt]\nshare_group = "g\\u0007"\n', "mqtt.share_group"),
    ('[mqtt]\ntls = "yes"\n', "mqtt.tls"),
    ('[mqtt]\nusername = ""\n', "mqtt.username"),
    ("[mqtt]\nsession_expiry_s = -5\n", "mqtt.session_expiry_s"),  # paho's network thread would die
    ("[mqtt]\nsession_expiry_s = 4294967296\n", "mqtt.session_expiry_s"),
    ("[mqtt]\nsession_expiry_s = inf\n", "mqtt.session_expiry_s"),
    ("[mqtt]\nsession_expiry_s = 1.5\n", "mqtt.session_expiry_s"),
    ("[mqtt]\nreconnect_min_s = 0\n", "mqtt.reconnect_min_s"),  # reconnect in a tight loop
    ("[mqtt]\nreconnect_min_s = -1\n", "mqtt.reconnect_min_s"),
    ("[mqtt]\nreconnect_min_s = nan\n", "mqtt.reconnect_min_s"),
    ("[mqtt]\nreconnect_max_s = 0\n", "mqtt.reconnect_max_s"),
    ("[mqtt]\nreconnect_max_s = 86401\n", "mqtt.reconnect_max_s"),
    ("[mqtt]\nreconnect_min_s = 10\nreconnect_max_s = 5\n", "mqtt.reconnect_max_s"),
    ('[mqtt]\nca_file = "ca.crt"\n', "mqtt.ca_file"),  # without tls = true the link is plain TCP
    ('[mqtt]\ntls = true\nkey_file = "c.key"\n', "mqtt.key_file"),  # ignored without cert_file
    ('[mqtt]\npassword_file = "pw"\n', "mqtt.password_file"),  # ignored without username
    ('[mqtt]\ntls = true\nca_file = ""\n', "mqtt.ca_file"),
    ('[mqtt]\ntls = true\nca_file = "ca\\u0000.crt"\n', "mqtt.ca_file"),
    ('[mqtt]\nhots = "typo"\n', "mqtt.hots"),
    ('[store]\nurl = ""\n', "store.url"),
    ('[store]\nurl = "mysql://db/ektp"\n', "store.url"),
    ('[store]\nurl = "POSTGRESQL://db/ektp"\n', "store.url"),  # the store would take it for a file name
    ('[store]\nurl = "central\\u0000.db"\n', "store.url"),
    ("[store]\nurl = 5\n", "store.url"),
    ("[store]\nquarantine_dir = 5\n", "store.quarantine_dir"),
    ("[store]\npartial_expiry_s = 0\n", "store.partial_expiry_s"),
    ("[store]\npartial_expiry_s = -5\n", "store.partial_expiry_s"),
    ("[store]\npartial_expiry_s = nan\n", "store.partial_expiry_s"),
    ("[store]\npartial_expiry_s = inf\n", "store.partial_expiry_s"),
    ("[store]\npartial_expiry_s = -inf\n", "store.partial_expiry_s"),
    ("[store]\npartial_expiry_s = 1e300\n", "store.partial_expiry_s"),  # the date arithmetic overflows
    ('[store]\npartial_expiry_s = "7d"\n', "store.partial_expiry_s"),
    ("[store]\npartial_expiry_s = true\n", "store.partial_expiry_s"),
    ("[store]\nquarantine_cap_bytes = 0\n", "store.quarantine_cap_bytes"),
    ("[store]\nquarantine_cap_bytes = inf\n", "store.quarantine_cap_bytes"),
    ('[keys]\ncentral_private_key = ""\n', "keys.central_private_key"),
    ('[keys]\ncentral_private_key = "k\\u0000"\n', "keys.central_private_key"),
    ('[mqqt]\nhost = "typo"\n', "mqqt"),  # a misspelt section
]


@pytest.mark.parametrize(("text", "key"), BAD_VALUES)
def test_a_bad_value_names_the_key_and_run_stops_with_exit_2(tmp_path: Path, text: str, key: str) -> None:
    """The loader names the key and the file; `run` (in-process through click's runner: milliseconds
    a case) exits 2 with that message. Its key file is absent, so a value that slipped through ends
    the run with another message instead of consuming forever."""
    config = tmp_path / "central.toml"
    config.write_text(text if "[keys]" in text else f'{text}[keys]\ncentral_private_key = "absent.key"\n')
    with pytest.raises(ConfigError) as info:
        load_central_config(config)
    assert info.value.key == key and key in str(info.value) and str(config) in str(info.value)

    done = CliRunner().invoke(main, ["--config", str(config), "run"])
    assert done.exit_code == 2, done.output
    assert key in done.stderr and str(config) in done.stderr and done.stdout == ""
    assert done.exception is None or isinstance(done.exception, SystemExit)


def write_bytes_config(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "central.toml"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[mqtt]\nhost = ""\n', "mqtt.host"),
        ("[mqtt]\nsession_expiry_s = -5\n", "mqtt.session_expiry_s"),
        ('[mqtt]\nshare_group = "a/b#"\n', "mqtt.share_group"),
        ("[store]\npartial_expiry_s = inf\n", "store.partial_expiry_s"),
    ],
)
def test_the_console_script_run_exits_2_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    config = tmp_path / "central.toml"
    config.write_text(text)
    done = subprocess.run(
        [str(CENTRAL), "--config", str(config), "run"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and key in done.stderr and str(config) in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (
            lambda d: write_bytes_config(d, b'[mqtt]\nhost = "caf\xe9"\n'),
            "UTF-8 text (line 2, byte 18 is 0xe9)",
        ),
        (
            lambda d: write_bytes_config(d, b"\xff\xfe[\x00m\x00"),
            "UTF-8 text (line 1, byte 0 is 0xff)",
        ),  # UTF-16
        (lambda d: d, "a readable file (Is a directory)"),
        (lambda d: write_bytes_config(d, b"[mqtt\n"), "valid TOML"),
    ],
    ids=["latin-1", "utf-16", "a-directory", "bad-toml"],
)
def test_a_config_file_that_cannot_be_read_is_a_config_error(
    tmp_path: Path, make: Callable[[Path], Path], expected: str
) -> None:
    config = make(tmp_path)
    done = subprocess.run(
        [str(CENTRAL), "--config", str(config), "run"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and expected in done.stderr and str(config) in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("text", "check"),
    [
        ('[mqtt]\nhost = "::1"\n', lambda c: c.mqtt.host == "::1"),
        ('[mqtt]\nhost = "fe80::1%eth0"\n', lambda c: c.mqtt.host == "fe80::1%eth0"),
        ('[mqtt]\nhost = "10.0.0.7"\n', lambda c: c.mqtt.host == "10.0.0.7"),
        ('[mqtt]\nshare_group = "centre group.2"\n', lambda c: c.mqtt.share_group == "centre group.2"),
        ("[mqtt]\nsession_expiry_s = 0\n", lambda c: c.mqtt.session_expiry_s == 0),
        ("[mqtt]\nsession_expiry_s = 4294967295\n", lambda c: c.mqtt.session_expiry_s == 4294967295),
        ("[mqtt]\nreconnect_min_s = 5\nreconnect_max_s = 5\n", lambda c: c.mqtt.reconnect_max_s == 5),
        (
            '[mqtt]\ntls = true\ncert_file = "c.crt"\nkey_file = "c.key"\n',
            lambda c: c.mqtt.key_file is not None and c.mqtt.key_file.name == "c.key",
        ),
        ('[mqtt]\nusername = "centre"\npassword_file = "pw"\n', lambda c: c.mqtt.username == "centre"),
        ('[store]\nurl = "sqlite://data/c.db"\n', lambda c: c.store_url.endswith("/data/c.db")),
        (
            '[store]\nurl = "postgresql://ektp@db/ektp"\n',
            lambda c: c.store_url == "postgresql://ektp@db/ektp",
        ),
    ],
)
def test_values_at_the_edges_are_taken(
    tmp_path: Path, text: str, check: Callable[[CentralConfig], bool]
) -> None:
    config = load(tmp_path, text)
    assert check(config), config


@pytest.mark.parametrize(("value", "expected"), [("3600", 3600.0), ("90.5", 90.5)])
def test_partial_expiry_takes_whole_and_fractional_seconds(
    tmp_path: Path, value: str, expected: float
) -> None:
    assert load(tmp_path, f"[store]\npartial_expiry_s = {value}\n").partial_expiry_s == expected


# ----------------------------------------------------------------------------- without a config file


@pytest.fixture
def no_default_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from central import cli as central_cli

    missing = tmp_path / "etc" / "config.toml"
    monkeypatch.setattr(central_cli, "DEFAULT_CENTRAL_CONFIG", missing)
    monkeypatch.delenv("EKTP_CENTRAL_CONFIG", raising=False)
    return missing


@pytest.mark.parametrize(
    "command",
    [["fleet"], ["packets"], ["kiosks"], ["quarantine"], ["keys", "init"], ["config", "check"], ["run"]],
)
def test_without_a_config_file_the_centre_refuses_and_creates_nothing(
    no_default_config: Path, command: list[str]
) -> None:
    """`fleet` used to create /var/lib/ektp-central/central.db and show an empty fleet."""
    store = Path(DEFAULT_STORE_URL)
    existed = store.exists()
    done = CliRunner().invoke(main, command)
    assert done.exit_code == 2, done.output
    assert (
        f"no config file at {no_default_config}: the centre does not run on built-in defaults" in done.stderr
    )
    assert f"ektp-central config init --to {no_default_config}" in done.stderr
    assert done.stdout == ""
    assert store.exists() == existed


def test_without_a_config_file_config_init_and_help_work(no_default_config: Path) -> None:
    assert CliRunner().invoke(main, ["--help"]).exit_code == 0
    assert CliRunner().invoke(main, ["fleet", "--help"]).exit_code == 0
    done = CliRunner().invoke(main, ["config", "init"])
    assert done.exit_code == 0 and "[mqtt]" in done.stdout


def test_a_named_config_file_that_is_missing_is_an_error(no_default_config: Path, tmp_path: Path) -> None:
    named = tmp_path / "typo.toml"
    done = CliRunner().invoke(main, ["fleet"], env={"EKTP_CENTRAL_CONFIG": str(named)})
    assert done.exit_code == 2 and f"no config file at {named}" in done.stderr, done.stderr


# ----------------------------------------------------------------------------- config check


def test_config_check_names_a_missing_tls_file_and_run_stops_on_it(tmp_path: Path) -> None:
    config = tmp_path / "central.toml"
    ca = tmp_path / "tls" / "ca.crt"
    config.write_text(f'[mqtt]\ntls = true\nca_file = "{ca}"\n[store]\nurl = "{tmp_path / "c.db"}"\n')
    for command in (["config", "check"], ["config", "check", "--json"], ["run"]):
        done = CliRunner().invoke(main, ["--config", str(config), *command])
        assert done.exit_code == 2, (command, done.output)
        assert "mqtt.ca_file" in done.stderr and f"{ca} does not exist" in done.stderr, done.stderr
        assert done.stdout == ""
    assert not (tmp_path / "c.db").exists(), "run stopped before it opened the store"


def test_config_check_lists_the_missing_centre_key_then_checks_it(tmp_path: Path) -> None:
    from wire.keys import create_central_keys

    config = tmp_path / "central.toml"
    config.write_text('[keys]\ncentral_private_key = "keys/central.key"\n')
    key = tmp_path / "keys" / "central.key"
    done = CliRunner().invoke(main, ["--config", str(config), "config", "check"])
    assert done.exit_code == 0, done.output
    assert done.stdout.splitlines()[0].startswith(f"config OK: {config}")
    assert "before `ektp-central run`:" in done.stdout
    assert f"keys.central_private_key: the centre's private key {key} does not exist" in done.stdout
    assert "create it with `ektp-central keys init`" in done.stdout
    create_central_keys(key)
    done = CliRunner().invoke(main, ["--config", str(config), "config", "check", "--json"])
    doc = json.loads(done.stdout)
    assert doc["ok"] is True and doc["ready"] is True and doc["missing"] == []
    assert doc["config"]["keys"]["central_private_key"] == str(key)
    key.chmod(0o644)
    done = CliRunner().invoke(main, ["--config", str(config), "config", "check"])
    assert done.exit_code == 2 and "keys.central_private_key" in done.stderr and "chmod 600" in done.stderr


def test_config_check_json_has_every_key_and_hides_a_store_password(tmp_path: Path) -> None:
    config = tmp_path / "central.toml"
    config.write_text('[store]\nurl = "postgresql://ektp:s3cr3t-pw@db.example/ektp"\n')
    done = CliRunner().invoke(main, ["--config", str(config), "config", "check", "--json"])
    assert done.exit_code == 0, done.output
    assert "s3cr3t-pw" not in done.output
    doc = json.loads(done.stdout)
    assert doc["config"]["store"]["url"] == "postgresql://ektp:***@db.example/ektp"
    assert {(s, k) for s, keys in doc["config"].items() for k in keys} == {
        (s, k) for s, keys in _KEYS.items() for k in keys
    }


def test_kiosk_add_names_a_missing_public_key_and_where_it_comes_from(tmp_path: Path) -> None:
    config = tmp_path / "central.toml"
    config.write_text(f'[store]\nurl = "{tmp_path / "c.db"}"\n')
    missing = tmp_path / "320715-01.key.pub"
    done = CliRunner().invoke(
        main, ["--config", str(config), "kiosk", "add", "320715-01", "--public-key", str(missing)]
    )
    assert done.exit_code == 2, done.output
    assert f"the kiosk's public key {missing} does not exist" in done.stderr
    assert (
        "the `.pub` file whose path `ektp-agent keys init` (or `ektp-agent keys show`) printed" in done.stderr
    )
