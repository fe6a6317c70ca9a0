"""The central consumer's TOML configuration: [mqtt], [store], [keys].

Each key is declared once in ``_KEYS`` with its type, check and meaning; its default is the
field's in CentralConfig or CentralMqtt. The loader checks those declarations and `config
init` writes its commented file from them (:func:`config_template`), so neither drifts.
"""

from __future__ import annotations

import hashlib
import math
import re
import socket
import tomllib
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from wire.config_file import KeyDoc, missing_mqtt_file, render
from wire.keys import KeyFileError, KeyFileMissing, load_central_private
from wire.names import KIOSK_ID_RE, TOPIC_PREFIX_RE

DEFAULT_CENTRAL_CONFIG = Path("/etc/ektp-central/config.toml")
DEFAULT_STORE_URL = "/var/lib/ektp-central/central.db"
DEFAULT_PRIVATE_KEY = Path("/var/lib/ektp-central/central.key")
DEFAULT_INSTANCE = "main"
DEFAULT_PARTIAL_EXPIRY_S = 7 * 24 * 3600.0  # a transfer idle this long is dropped (the kiosk starts it again)
QUARANTINE_CAP_BYTES = 256 * 1024 * 1024  # per kiosk (central.store)
MIN_QUARANTINE_CAP, MAX_QUARANTINE_CAP = 1024 * 1024, 1024**4
MAX_CLIENT_ID = 64  # what any broker takes (MQTT 5 allows more; 3.1.1 servers need only take 23)
MAX_SESSION_EXPIRY_S = 0xFFFF_FFFF  # MQTT 5's four-byte session expiry interval; paho's thread dies past it
MAX_PARTIAL_EXPIRY_S = 36525 * 86400  # 100 years (some 2000 years would overflow the date arithmetic)
DAY_S = 86400
DEFAULT_WEB_LISTEN = "127.0.0.1:8080"  # `ektp-central web` without [web] listen
DEFAULT_HEALTH_DETAIL_HOURS = 24  # health history kept in 5-minute buckets this long, then hourly
DEFAULT_HEALTH_RETENTION_DAYS = 31
DEFAULT_BACKLOG_PROBLEM_HOURS = 24.0  # a kiosk whose oldest undelivered packet is older is a problem
LISTEN_RE = re.compile(r"(\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>[0-9]{1,5})")
HOSTNAME_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252}[A-Za-z0-9_.])?")  # a name or an IPv4 address
IPV6_RE = re.compile(r"[0-9A-Fa-f:.]{2,45}(%[A-Za-z0-9_.-]{1,64})?")  # with an optional zone (fe80::1%eth0)
URL_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


class ConfigError(Exception):
    """A central config value that cannot be used: names the file, the key, the value and what is expected."""

    def __init__(self, key: str, value: object, expected: str, *, path: Path | None = None) -> None:
        where = f"config {path}: " if path else "config: "
        shown = repr(value)
        shown = shown if len(shown) <= 120 else f"{shown[:100]}... ({len(shown)} characters)"
        super().__init__(f"{where}{key} = {shown} is invalid: expected {expected}")
        self.key, self.value, self.expected, self.path = key, value, expected, path


@dataclass(frozen=True, slots=True)
class CentralMqtt:
    host: str = "localhost"
    port: int = 1883
    topic_prefix: str = "ektp/v1"
    instance: str = DEFAULT_INSTANCE  # tells apart consumers on one host
    client_id: str = ""  # "": ektp-central-{hostname}-{instance}, the same across restarts
    share_group: str = "ektp-central"
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    session_expiry_s: int = 300  # the broker keeps our session (and queues for it) across a short disconnect
    reconnect_min_s: int = 1
    reconnect_max_s: int = 5  # a few consumers, not a fleet: come back quickly after a broker restart

    def __post_init__(self) -> None:
        if not self.client_id:  # a stable id: a restart resumes the broker's session of this consumer
            object.__setattr__(self, "client_id", default_client_id(self.instance))


def default_client_id(instance: str, hostname: str | None = None) -> str:
    """``ektp-central-{hostname}-{instance}``: the hostname reduced to [A-Za-z0-9_-] and, when the id
    would pass 64 characters, cut and followed by a short hash of the whole name (two long names
    stay apart). The instance is never cut; only a very long one makes the id longer than 64."""
    host = re.sub(r"[^A-Za-z0-9_-]+", "-", socket.gethostname() if hostname is None else hostname)
    host = host.strip("-") or "host"
    room = MAX_CLIENT_ID - len("ektp-central--") - len(instance)
    tag = hashlib.sha256(host.encode()).hexdigest()[:8]
    if len(host) > max(room, len(tag)):
        head = host[: room - len(tag) - 1].rstrip("-") if room > len(tag) + 1 else ""
        host = f"{head}-{tag}" if head else tag
    return f"ektp-central-{host}-{instance}"


@dataclass(frozen=True, slots=True)
class CentralWeb:
    """[web]: the fleet view and /metrics (central.web)."""

    listen: str = ""  # "": `run` serves no web view; `ektp-central web` then uses DEFAULT_WEB_LISTEN
    users_file: Path | None = None  # HTTP basic users with scrypt hashes (`ektp-central web passwd`)
    refresh_s: int = 15
    backlog_problem_hours: float = DEFAULT_BACKLOG_PROBLEM_HOURS

    def address(self) -> tuple[str, int]:
        """(host, port) of listen, or of DEFAULT_WEB_LISTEN when it is empty."""
        return parse_listen(self.listen or DEFAULT_WEB_LISTEN)


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port). :raises ValueError: neither"""
    m = LISTEN_RE.fullmatch(text)
    if m is None or not 1 <= int(m.group("port")) <= 65535:
        raise ValueError(f"{text!r} is not host:port")
    return (m.group("v6") or m.group("host")), int(m.group("port"))


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class CentralConfig:
    mqtt: CentralMqtt = field(default_factory=CentralMqtt)
    store_url: str = DEFAULT_STORE_URL
    central_private_key: Path = DEFAULT_PRIVATE_KEY
    quarantine_dir: Path | None = None  # default: beside the SQLite store, or ./quarantine
    partial_expiry_s: float = DEFAULT_PARTIAL_EXPIRY_S
    quarantine_cap_bytes: int = QUARANTINE_CAP_BYTES
    health_detail_hours: int = DEFAULT_HEALTH_DETAIL_HOURS
    health_retention_days: int = DEFAULT_HEALTH_RETENTION_DAYS
    web: CentralWeb = field(default_factory=CentralWeb)
    source: Path | None = None


@dataclass(frozen=True, slots=True)
class _Key:
    """One config key: its TOML type, where the type is not enough what else it must be, and its
    meaning for the technician (`config init` writes it above the key; the default is the field's
    in CentralConfig or CentralMqtt, see :func:`default_value`)."""

    kind: type
    check: Callable[[Any], bool] | None = None
    expected: str = ""
    meaning: str = ""
    default_text: str = ""  # a default that is not a fixed value, in words
    example: object = None  # shown, commented out, for a key without a fixed default


def _no_controls(text: str) -> bool:
    """No control characters (MQTT forbids U+0000 in its strings and advises against the rest)."""
    return not any(unicodedata.category(c) == "Cc" for c in text)


def _mqtt_string(text: str) -> bool:
    """A non-empty MQTT UTF-8 string: the client id, the user name."""
    return bool(text.strip()) and _no_controls(text) and len(text.encode()) <= 65535


def _host(text: str) -> bool:
    if HOSTNAME_RE.fullmatch(text):
        return True
    return text.count(":") >= 2 and IPV6_RE.fullmatch(text) is not None  # host:port has one colon


def _share_group(text: str) -> bool:
    """MQTT 5, 4.8.2: a ShareName is at least one character and contains none of / + #."""
    return 1 <= len(text) <= 128 and not any(c in "/+#" for c in text) and _no_controls(text)


def _listen(text: str) -> bool:
    try:
        parse_listen(text)
    except ValueError:
        return False
    return True


def _store_url(text: str) -> bool:
    if not text or "\x00" in text:
        return False
    scheme = URL_SCHEME_RE.match(text)
    return scheme is None or scheme.group(1) in ("postgresql", "postgres", "sqlite")


_RECONNECT = "whole seconds, 1-86400"
_KEYS: dict[str, dict[str, _Key]] = {
    "mqtt": {
        "host": _Key(
            str,
            _host,
            'a host name or IP address without a scheme or a port (e.g. "broker.example")',
            meaning="The MQTT broker the kiosks publish to.",
        ),
        "port": _Key(
            int,
            lambda v: 1 <= v <= 65535,
            "a TCP port, 1-65535",
            meaning="The broker's TCP port: 1883 for plain MQTT, usually 8883 with TLS.",
        ),
        "topic_prefix": _Key(
            str,
            lambda v: (
                TOPIC_PREFIX_RE.fullmatch(v) is not None and not v.startswith("/") and not v.endswith("/")
            ),
            'a topic prefix of A-Z a-z 0-9 _ . - / without wildcards or a leading or trailing "/"'
            ' (e.g. "ektp/v1", as the kiosks\' [mqtt] topic_prefix)',
            meaning="The first levels of every topic; every kiosk's [mqtt] topic_prefix must be the same.",
        ),
        "instance": _Key(
            str,
            lambda v: KIOSK_ID_RE.fullmatch(v) is not None,
            '1-64 characters from A-Z a-z 0-9 _ - (e.g. "main")',
            meaning="This consumer's name among those on one host; the MQTT client id is made from it.",
        ),
        "client_id": _Key(
            str,
            _mqtt_string,
            "a non-empty MQTT client id without control characters (or leave it out)",
            meaning="The MQTT client id. The default is the same at every start, so a restarted consumer"
            " resumes its broker session (and what the broker queued for it); two consumers on one host"
            " need two instance names.",
            default_text="ektp-central-{hostname}-{instance}",
            example="ektp-central-centre1-main",
        ),
        "share_group": _Key(
            str,
            _share_group,
            "a shared-subscription group name: 1-128 characters, none of / + # or control characters"
            ' (e.g. "ektp-central")',
            meaning="The shared-subscription group: the consumers in one group split the kiosks' packets"
            " between them.",
        ),
        "tls": _Key(
            bool,
            meaning="Connect with TLS; the broker's certificate is checked against ca_file (or the system's"
            " CAs). ca_file, cert_file and key_file are refused without it.",
        ),
        "ca_file": _Key(
            Path,
            meaning="The CA certificate (PEM) that signed the broker's certificate (needs tls = true).",
            default_text="none (the system's CAs are used)",
            example="/etc/ektp-central/mqtt-ca.crt",
        ),
        "cert_file": _Key(
            Path,
            meaning="The centre's TLS client certificate (PEM), when the broker asks for one (needs"
            " tls = true).",
            example="/etc/ektp-central/mqtt-client.crt",
        ),
        "key_file": _Key(
            Path,
            meaning="The private key (PEM) of cert_file.",
            example="/etc/ektp-central/mqtt-client.key",
        ),
        "username": _Key(
            str,
            _mqtt_string,
            "a non-empty MQTT user name without control characters",
            meaning="The MQTT user name, when the broker asks for a password.",
            example="ektp-central",
        ),
        "password_file": _Key(
            Path,
            meaning="A file whose first line is the MQTT password (needs username; mode 0640 or tighter);"
            " the password itself never goes in this file.",
            example="/etc/ektp-central/mqtt-password",
        ),
        "session_expiry_s": _Key(
            int,
            lambda v: 0 <= v <= MAX_SESSION_EXPIRY_S,
            f"whole seconds, 0-{MAX_SESSION_EXPIRY_S} (MQTT's session expiry interval)",
            meaning="How long the broker keeps this consumer's session, and queues its messages, across a"
            " disconnect.",
        ),
        "reconnect_min_s": _Key(
            int,
            lambda v: 1 <= v <= DAY_S,
            _RECONNECT,
            meaning="The first wait before reconnecting after the link drops; it grows up to reconnect_max_s.",
        ),
        "reconnect_max_s": _Key(
            int,
            lambda v: 1 <= v <= DAY_S,
            _RECONNECT,
            meaning="The longest wait between two reconnection attempts (at least reconnect_min_s).",
        ),
    },
    "store": {
        "url": _Key(
            str,
            _store_url,
            "a SQLite file path or a postgresql:// URL",
            meaning="The store: a SQLite file (made on first use, with its directory), or a postgresql://"
            " URL at scale (its password is never printed).",
        ),
        "quarantine_dir": _Key(
            Path,
            meaning="Not used: the quarantine is kept in the store. Still accepted so that older config"
            " files load.",
            example="/var/lib/ektp-central/quarantine",
        ),
        "partial_expiry_s": _Key(
            float,
            lambda v: math.isfinite(v) and 0 < v <= MAX_PARTIAL_EXPIRY_S,
            f"a number of seconds above 0 and at most {MAX_PARTIAL_EXPIRY_S} (100 years)",
            meaning="A packet in transfer whose newest chunk is older than this is dropped (604800 is 7"
            " days); the kiosk then sends it again from its start.",
        ),
        "quarantine_cap_bytes": _Key(
            int,
            lambda v: MIN_QUARANTINE_CAP <= v <= MAX_QUARANTINE_CAP,
            f"bytes, {MIN_QUARANTINE_CAP} (1 MiB) to {MAX_QUARANTINE_CAP} (1 TiB)",
            meaning="What the quarantine may hold per kiosk (268435456 is 256 MiB); beyond it an input is"
            " counted, not kept.",
        ),
        "health_detail_hours": _Key(
            int,
            lambda v: 1 <= v <= 24 * 366,
            "whole hours, 1-8784",
            meaning="Each kiosk's health history is kept in 5-minute steps this long, then in hourly steps"
            " (the highest backlog and the worst device state of each hour).",
        ),
        "health_retention_days": _Key(
            int,
            lambda v: 1 <= v <= 3660,
            "whole days, 1-3660",
            meaning="Health history older than this is deleted (at 10,000 kiosks one day of hourly steps is"
            " 240,000 rows).",
        ),
    },
    "web": {
        "listen": _Key(
            str,
            lambda v: v == "" or _listen(v),
            'host:port or [IPv6]:port (e.g. "127.0.0.1:8080"), or "" for none',
            meaning="Where the fleet web view and /metrics listen. Set, `ektp-central run` serves them too;"
            " `ektp-central web` uses 127.0.0.1:8080 without it. Any address other than loopback needs"
            " users_file.",
            example="127.0.0.1:8080",
        ),
        "users_file": _Key(
            Path,
            meaning="The web view's users, one `name:scrypt-hash` line each, written by `ektp-central web"
            " passwd NAME` (mode 0640 or tighter). With it every page asks for HTTP basic login.",
            example="/etc/ektp-central/web-users",
        ),
        "refresh_s": _Key(
            int,
            lambda v: 2 <= v <= 3600,
            "whole seconds, 2-3600",
            meaning="How often the fleet and kiosk pages reload themselves.",
        ),
        "backlog_problem_hours": _Key(
            float,
            lambda v: math.isfinite(v) and 0 < v <= 24 * 366,
            "hours above 0, at most 8784",
            meaning="A kiosk whose oldest undelivered packet is older than this is listed as a problem"
            " (`fleet` exits 1, the fleet page marks it).",
        ),
    },
    "keys": {
        "central_private_key": _Key(
            Path,
            meaning="The centre's private keys (mode 0600), made by `ektp-central keys init`. The public"
            " file beside it, this path with .pub added, goes to every kiosk as its"
            " keys.central_public_key.",
        )
    },
}
_SECTIONS = {
    "mqtt": "The broker: the kiosks' packets and health arrive through it, acknowledgements leave.",
    "store": "Where the centre keeps packets, the fleet's health, the quarantine and the kiosks' keys.",
    "keys": "The centre's own key pairs: packets are encrypted to one, acknowledgements signed with the other.",
    "web": "The fleet web view and the Prometheus metrics (`ektp-central web`, or inside `run`).",
}


def load_central_config(path: Path, *, required: bool = True) -> CentralConfig:
    """:raises ConfigError: naming the file, the key, the value and what is expected"""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ConfigError(
                "(file)", str(path), "an existing TOML file (pass --config PATH)", path=path
            ) from None
        return CentralConfig()
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(
            "(file)",
            str(path),
            f"UTF-8 text (line {line}, byte {exc.start} is {exc.object[exc.start]:#04x})",
            path=path,
        ) from exc
    except OSError as exc:
        raise ConfigError("(file)", str(path), f"a readable file ({exc.strerror})", path=path) from exc
    return parse_central_config(text, path)


def parse_central_config(text: str, path: Path) -> CentralConfig:
    """Validate TOML text as the file at ``path`` (relative paths are taken from its directory).

    :raises ConfigError: naming the file, the key, the value and what is expected
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(syntax)", str(exc), "valid TOML", path=path) from exc
    values = _typed_values(doc, path)
    mqtt = values.get("mqtt", {})
    _check_combinations(mqtt, path)
    _check_web(values.get("web", {}), path)
    store = values.get("store", {})
    url = store.get("url", DEFAULT_STORE_URL)
    if not url.startswith(("postgresql://", "postgres://")):
        url = url.removeprefix("sqlite://")
        if not Path(url).is_absolute():
            url = str(path.parent / url)
    return CentralConfig(
        mqtt=CentralMqtt(**mqtt),
        store_url=url,
        central_private_key=values.get("keys", {}).get("central_private_key", DEFAULT_PRIVATE_KEY),
        quarantine_dir=store.get("quarantine_dir"),
        partial_expiry_s=store.get("partial_expiry_s", DEFAULT_PARTIAL_EXPIRY_S),
        quarantine_cap_bytes=store.get("quarantine_cap_bytes", QUARANTINE_CAP_BYTES),
        health_detail_hours=store.get("health_detail_hours", DEFAULT_HEALTH_DETAIL_HOURS),
        health_retention_days=store.get("health_retention_days", DEFAULT_HEALTH_RETENTION_DAYS),
        web=CentralWeb(**values.get("web", {})),
        source=path,
    )


def _typed_values(doc: dict[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    """Each key's value, of its type and passing its check; relative paths resolved from the file's directory."""
    values: dict[str, dict[str, Any]] = {}
    for section, table in doc.items():
        if section not in _KEYS or not isinstance(table, dict):
            raise ConfigError(section, table, f"a table, one of [{'], ['.join(_KEYS)}]", path=path)
        for key, raw in table.items():
            spec = _KEYS[section].get(key)
            name = f"{section}.{key}"
            if spec is None:
                raise ConfigError(name, raw, f"a known key: {', '.join(_KEYS[section])}", path=path)
            value = _typed(name, raw, spec.kind, path)
            if spec.check is not None and not spec.check(value):
                raise ConfigError(name, raw, spec.expected, path=path)
            values.setdefault(section, {})[key] = value
    return values


def _typed(name: str, raw: Any, kind: type, path: Path) -> Any:
    if kind is Path:
        if not isinstance(raw, str) or not raw or "\x00" in raw:
            raise ConfigError(name, raw, "a path (a non-empty string without NUL characters)", path=path)
        p = Path(raw).expanduser()
        return p if p.is_absolute() else path.parent / p
    if kind is int:
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise ConfigError(name, raw, "a whole number", path=path)
        return raw
    if kind is float:
        if not isinstance(raw, int | float) or isinstance(raw, bool):
            raise ConfigError(name, raw, "a number", path=path)
        return float(raw)
    if kind is bool:
        if not isinstance(raw, bool):
            raise ConfigError(name, raw, "true or false", path=path)
        return raw
    if not isinstance(raw, str):
        raise ConfigError(name, raw, "a string", path=path)
    return raw


def _check_web(web: dict[str, Any], path: Path) -> None:
    """A web view on anything but loopback shows the fleet to the network: it must ask for a login."""
    listen = web.get("listen")
    if listen and not is_loopback(parse_listen(listen)[0]) and "users_file" not in web:
        raise ConfigError(
            "web.listen",
            listen,
            "a loopback address (127.0.0.1:PORT, [::1]:PORT), or [web] users_file beside it: any other"
            " address needs a login (`ektp-central web passwd NAME` writes the file; docs/central.md)",
            path=path,
        )


def _check_combinations(mqtt: dict[str, Any], path: Path) -> None:
    """Keys that are fine alone but cannot work together (or would silently do nothing)."""
    defaults = {f.name: f.default for f in fields(CentralMqtt)}
    low = mqtt.get("reconnect_min_s", defaults["reconnect_min_s"])
    high = mqtt.get("reconnect_max_s", defaults["reconnect_max_s"])
    if high < low:
        raise ConfigError(
            "mqtt.reconnect_max_s", high, f"seconds, at least [mqtt] reconnect_min_s ({low})", path=path
        )
    if not mqtt.get("tls", False):
        for key in ("ca_file", "cert_file", "key_file"):
            if key in mqtt:  # without tls the link would be plain TCP, whatever the file says
                raise ConfigError(
                    f"mqtt.{key}",
                    str(mqtt[key]),
                    "[mqtt] tls = true beside it (or remove the key)",
                    path=path,
                )
    if "key_file" in mqtt and "cert_file" not in mqtt:
        raise ConfigError(
            "mqtt.key_file",
            str(mqtt["key_file"]),
            "[mqtt] cert_file beside it (the client certificate the key belongs to)",
            path=path,
        )
    if "password_file" in mqtt and "username" not in mqtt:
        raise ConfigError(
            "mqtt.password_file", str(mqtt["password_file"]), "[mqtt] username beside it", path=path
        )


# ----------------------------------------------------------------------------- the commented file


def default_value(section: str, key: str, config: CentralConfig | None = None) -> Any:
    """The value of [section] key in ``config`` (default: the built-in config)."""
    c = config if config is not None else CentralConfig()
    if section == "mqtt":
        return getattr(c.mqtt, key)
    if section == "store":
        return getattr(c, "store_url" if key == "url" else key)
    if section == "web":
        return getattr(c.web, key)
    return getattr(c, key)


def key_docs() -> list[KeyDoc]:
    """Every key the loader reads, in file order, as `config init` and docs/configuration.md show it."""
    docs = []
    for section, keys in _KEYS.items():
        for name, spec in keys.items():
            default = None if spec.default_text else default_value(section, name)
            docs.append(
                KeyDoc(
                    section=section,
                    name=name,
                    meaning=spec.meaning,
                    default=default,
                    default_text=spec.default_text,
                    allowed=spec.expected or {bool: "true or false", Path: "a path"}.get(spec.kind, ""),
                    example=spec.example,
                )
            )
    return docs


def section_docs() -> dict[str, str]:
    return dict(_SECTIONS)


def config_template(*, broker: tuple[str, int | None] | None = None) -> str:
    """The commented config `ektp-central config init` writes: every key with its meaning and default.

    The keys given here are set; all others are commented out, so the file loads as the defaults.
    """
    values: dict[str, object] = {}
    if broker is not None:
        values["mqtt.host"] = broker[0]
        if broker[1] is not None:
            values["mqtt.port"] = broker[1]
    header = [
        "ektp-central configuration (TOML), written by `ektp-central config init`. The centre reads"
        " /etc/ektp-central/config.toml, or the file that --config PATH or $EKTP_CENTRAL_CONFIG names;"
        " without one every command but `config init` stops.",
        "",
        "Every key the centre reads is below with its meaning, what it accepts and its default. A line"
        ' that starts with "#" is not read, so a key left commented out takes its default: to change'
        ' one, delete the "# " before it and edit the value. Relative paths are taken from this'
        " file's directory. An unknown key is an error, never ignored.",
        "",
        "After every change: ektp-central --config THIS_FILE config check",
    ]
    return render(header, key_docs(), section_docs(), values)


# ----------------------------------------------------------------------------- before `run`


def check_environment(config: CentralConfig) -> None:
    """The TLS and password files the config names exist (`config check` and `run` call it).

    A file this user may not look at is not an error here (the service's user is the one that
    must read it); `run` says so when it cannot.
    :raises ConfigError: naming the key and the file
    """
    missing = missing_mqtt_file(config.mqtt)
    if missing is not None:
        key, file, what = missing
        raise ConfigError(
            f"mqtt.{key}",
            str(file),
            f"an existing file ({file} {what}; the broker connection cannot be made without it)",
            path=config.source,
        )


@dataclass(frozen=True, slots=True)
class MissingKeyFile:
    """A key file `run` needs that is not there yet: the next step, not a config error."""

    key: str
    path: Path
    advice: str  # the key loader's own words

    def to_json(self) -> dict[str, str]:
        return {"key": self.key, "file": str(self.path), "reason": self.advice}


def check_key_files(config: CentralConfig) -> list[MissingKeyFile]:
    """The centre's private keys: missing (with what to do), or checked as `run` loads them.

    :raises ConfigError: the file is there but cannot be used (mode, content)
    """
    path = config.central_private_key
    try:
        load_central_private(path)
    except KeyFileMissing as exc:
        return [MissingKeyFile("keys.central_private_key", path, str(exc))]
    except KeyFileError as exc:
        if not isinstance(exc.__cause__, PermissionError):  # unreadable to this user: not checked
            raise ConfigError(
                "keys.central_private_key", str(path), f"a usable key file, but {exc}", path=config.source
            ) from exc
    except PermissionError:
        pass
    return []


def as_dict(config: CentralConfig) -> dict[str, dict[str, Any]]:
    """The effective config by section and key, as JSON (paths as strings, a store password hidden)."""
    from central.store import redact_url

    out: dict[str, dict[str, Any]] = {}
    for section, keys in _KEYS.items():
        for name in keys:
            value = default_value(section, name, config)
            if section == "store" and name == "url":
                value = redact_url(value)
            out.setdefault(section, {})[name] = str(value) if isinstance(value, Path) else value
    return out
