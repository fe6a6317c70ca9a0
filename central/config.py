"""The central consumer's TOML configuration: [mqtt], [store], [keys]."""

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
class CentralConfig:
    mqtt: CentralMqtt = field(default_factory=CentralMqtt)
    store_url: str = DEFAULT_STORE_URL
    central_private_key: Path = DEFAULT_PRIVATE_KEY
    quarantine_dir: Path | None = None  # default: beside the SQLite store, or ./quarantine
    partial_expiry_s: float = DEFAULT_PARTIAL_EXPIRY_S
    quarantine_cap_bytes: int = QUARANTINE_CAP_BYTES
    source: Path | None = None


@dataclass(frozen=True, slots=True)
class _Key:
    """One config key: its TOML type and, where the type is not enough, what else it must be."""

    kind: type
    check: Callable[[Any], bool] | None = None
    expected: str = ""


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


def _store_url(text: str) -> bool:
    if not text or "\x00" in text:
        return False
    scheme = URL_SCHEME_RE.match(text)
    return scheme is None or scheme.group(1) in ("postgresql", "postgres", "sqlite")


_RECONNECT = "whole seconds, 1-86400"
_KEYS: dict[str, dict[str, _Key]] = {
    "mqtt": {
        "host": _Key(
            str, _host, 'a host name or IP address without a scheme or a port (e.g. "broker.example")'
        ),
        "port": _Key(int, lambda v: 1 <= v <= 65535, "a TCP port, 1-65535"),
        "topic_prefix": _Key(
            str,
            lambda v: (
                TOPIC_PREFIX_RE.fullmatch(v) is not None and not v.startswith("/") and not v.endswith("/")
            ),
            'a topic prefix of A-Z a-z 0-9 _ . - / without wildcards or a leading or trailing "/"'
            ' (e.g. "ektp/v1", as the kiosks\' [mqtt] topic_prefix)',
        ),
        "instance": _Key(
            str,
            lambda v: KIOSK_ID_RE.fullmatch(v) is not None,
            '1-64 characters from A-Z a-z 0-9 _ - (e.g. "main")',
        ),
        "client_id": _Key(
            str, _mqtt_string, "a non-empty MQTT client id without control characters (or leave it out)"
        ),
        "share_group": _Key(
            str,
            _share_group,
            "a shared-subscription group name: 1-128 characters, none of / + # or control characters"
            ' (e.g. "ektp-central")',
        ),
        "tls": _Key(bool),
        "ca_file": _Key(Path),
        "cert_file": _Key(Path),
        "key_file": _Key(Path),
        "username": _Key(str, _mqtt_string, "a non-empty MQTT user name without control characters"),
        "password_file": _Key(Path),
        "session_expiry_s": _Key(
            int,
            lambda v: 0 <= v <= MAX_SESSION_EXPIRY_S,
            f"whole seconds, 0-{MAX_SESSION_EXPIRY_S} (MQTT's session expiry interval)",
        ),
        "reconnect_min_s": _Key(int, lambda v: 1 <= v <= DAY_S, _RECONNECT),
        "reconnect_max_s": _Key(int, lambda v: 1 <= v <= DAY_S, _RECONNECT),
    },
    "store": {
        "url": _Key(str, _store_url, "a SQLite file path or a postgresql:// URL"),
        "quarantine_dir": _Key(Path),
        "partial_expiry_s": _Key(
            float,
            lambda v: math.isfinite(v) and 0 < v <= MAX_PARTIAL_EXPIRY_S,
            f"a number of seconds above 0 and at most {MAX_PARTIAL_EXPIRY_S} (100 years);"
            " default 604800, 7 days",
        ),
        "quarantine_cap_bytes": _Key(
            int,
            lambda v: MIN_QUARANTINE_CAP <= v <= MAX_QUARANTINE_CAP,
            f"bytes, {MIN_QUARANTINE_CAP} (1 MiB) to {MAX_QUARANTINE_CAP} (1 TiB); default {QUARANTINE_CAP_BYTES}",
        ),
    },
    "keys": {"central_private_key": _Key(Path)},
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
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(syntax)", str(exc), "valid TOML", path=path) from exc
    values = _typed_values(doc, path)
    mqtt = values.get("mqtt", {})
    _check_combinations(mqtt, path)
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
