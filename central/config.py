"""The central consumer's TOML configuration: [mqtt], [store], [keys]."""

from __future__ import annotations

import hashlib
import math
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wire.names import KIOSK_ID_RE, TOPIC_PREFIX_RE

DEFAULT_CENTRAL_CONFIG = Path("/etc/ektp-central/config.toml")
DEFAULT_STORE_URL = "/var/lib/ektp-central/central.db"
DEFAULT_PRIVATE_KEY = Path("/var/lib/ektp-central/central.key")
DEFAULT_INSTANCE = "main"
DEFAULT_PARTIAL_EXPIRY_S = 7 * 24 * 3600.0  # a transfer idle this long is dropped (the kiosk starts it again)
MAX_CLIENT_ID = 64  # what any broker takes (MQTT 5 allows more; 3.1.1 servers need only take 23)


class ConfigError(Exception):
    """A central config value that cannot be used: names the file, the key, the value and what is expected."""

    def __init__(self, key: str, value: object, expected: str, *, path: Path | None = None) -> None:
        where = f"config {path}: " if path else "config: "
        super().__init__(f"{where}{key} = {value!r} is invalid: expected {expected}")
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
    source: Path | None = None


_KEYS: dict[str, dict[str, type]] = {
    "mqtt": {
        "host": str,
        "port": int,
        "topic_prefix": str,
        "instance": str,
        "client_id": str,
        "share_group": str,
        "tls": bool,
        "ca_file": Path,
        "cert_file": Path,
        "key_file": Path,
        "username": str,
        "password_file": Path,
        "session_expiry_s": int,
        "reconnect_min_s": int,
        "reconnect_max_s": int,
    },
    "store": {"url": str, "quarantine_dir": Path, "partial_expiry_s": float},
    "keys": {"central_private_key": Path},
}


def load_central_config(path: Path, *, required: bool = True) -> CentralConfig:
    """:raises ConfigError: naming the key, the value and what is expected"""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise ConfigError(
                "(file)", str(path), "an existing TOML file (pass --config PATH)", path=path
            ) from None
        return CentralConfig()
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(syntax)", str(exc), "valid TOML", path=path) from exc
    base = path.parent
    values: dict[str, dict[str, Any]] = {}
    for section, table in doc.items():
        if section not in _KEYS or not isinstance(table, dict):
            raise ConfigError(section, table, f"a table, one of [{'], ['.join(_KEYS)}]", path=path)
        for key, raw in table.items():
            kind = _KEYS[section].get(key)
            if kind is None:
                raise ConfigError(
                    f"{section}.{key}", raw, f"a known key: {', '.join(_KEYS[section])}", path=path
                )
            if kind is Path:
                if not isinstance(raw, str) or not raw:
                    raise ConfigError(f"{section}.{key}", raw, "a path string", path=path)
                p = Path(raw).expanduser()
                raw = p if p.is_absolute() else base / p
            elif kind is int and (not isinstance(raw, int) or isinstance(raw, bool)):
                raise ConfigError(f"{section}.{key}", raw, "a whole number", path=path)
            elif kind is float:
                if not isinstance(raw, int | float) or isinstance(raw, bool):
                    raise ConfigError(f"{section}.{key}", raw, "a number", path=path)
                raw = float(raw)
            elif kind is not int and not isinstance(raw, kind):
                raise ConfigError(f"{section}.{key}", raw, f"a {kind.__name__}", path=path)
            values.setdefault(section, {})[key] = raw
    mqtt = values.get("mqtt", {})
    if "port" in mqtt and not 1 <= mqtt["port"] <= 65535:
        raise ConfigError("mqtt.port", mqtt["port"], "a TCP port, 1-65535", path=path)
    if "topic_prefix" in mqtt and not TOPIC_PREFIX_RE.fullmatch(mqtt["topic_prefix"]):
        raise ConfigError(
            "mqtt.topic_prefix", mqtt["topic_prefix"], "a topic prefix without wildcards", path=path
        )
    if "instance" in mqtt and not KIOSK_ID_RE.fullmatch(mqtt["instance"]):
        raise ConfigError(
            "mqtt.instance", mqtt["instance"], '1-64 characters from A-Z a-z 0-9 _ - (e.g. "main")', path=path
        )
    if "client_id" in mqtt and not mqtt["client_id"].strip():
        raise ConfigError("mqtt.client_id", mqtt["client_id"], "a non-empty MQTT client id", path=path)
    store = values.get("store", {})
    expiry = store.get("partial_expiry_s", DEFAULT_PARTIAL_EXPIRY_S)
    if not math.isfinite(expiry) or expiry <= 0:
        raise ConfigError(
            "store.partial_expiry_s",
            expiry,
            "a number of seconds above 0 (default 604800, 7 days)",
            path=path,
        )
    url = store.get("url", DEFAULT_STORE_URL)
    if not url.startswith(("postgresql://", "postgres://")) and not Path(url).is_absolute():
        url = str(base / url)
    return CentralConfig(
        mqtt=CentralMqtt(**mqtt),
        store_url=url,
        central_private_key=values.get("keys", {}).get("central_private_key", DEFAULT_PRIVATE_KEY),
        quarantine_dir=store.get("quarantine_dir"),
        partial_expiry_s=expiry,
        source=path,
    )
