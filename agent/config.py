"""The agent's TOML configuration, loaded into typed, frozen objects with defaults.

Every key is declared once, in a section dataclass below, with its type, default and
(where the type is not enough) a check that says what is expected. Unknown sections
and keys are errors: a typo in a config file must not silently fall back to a default.
Relative paths are taken relative to the config file's directory.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
import tomllib
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wire.names import KIOSK_ID_RE, TOPIC_PREFIX_RE

DEFAULT_CONFIG_PATH = Path("/etc/ektp-agent/config.toml")
CONFIG_ENV = "EKTP_CONFIG"
SYSTEMD_RUNTIME_DIR = Path("/run/ektp-agent")  # RuntimeDirectory=ektp-agent of systemd/ektp-agent.service
# The largest outbox SQLite can keep: max_page_count (4294967294) pages of the outbox's 4 KiB.
MAX_STORE_BYTES = 4096 * 4_294_967_294
DAY_S = 86400.0


class ConfigError(Exception):
    """A config value that cannot be used: names the file, the key, the value and what is expected."""

    def __init__(self, key: str, value: object, expected: str, *, path: Path | None = None) -> None:
        where = f"config {path}: " if path else "config: "
        shown = "(missing)" if value is _MISSING else repr(value)
        super().__init__(f"{where}{key} = {shown} is invalid: expected {expected}")
        self.key = key
        self.value = value
        self.expected = expected
        self.path = path


_MISSING = object()


def _check(test: Callable[[Any], bool], expected: str) -> dict[str, object]:
    """Field metadata: a predicate on the typed value and the words for what it must be."""
    return {"check": test, "expected": expected}


def _kiosk_id(value: str) -> bool:
    return KIOSK_ID_RE.fullmatch(value) is not None


def _default_kiosk_id() -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64]
    return name or "kiosk"


@dataclass(frozen=True, slots=True)
class KioskConfig:
    id: str = field(
        default_factory=_default_kiosk_id,
        metadata=_check(_kiosk_id, '1-64 characters from A-Z a-z 0-9 _ - (e.g. "320715-01")'),
    )
    data_dir: Path = Path("/var/lib/ektp-agent")


@dataclass(frozen=True, slots=True)
class MqttConfig:
    host: str = field(default="localhost", metadata=_check(bool, "a host name or address"))
    port: int = field(default=1883, metadata=_check(lambda v: 1 <= v <= 65535, "a TCP port, 1-65535"))
    topic_prefix: str = field(
        default="ektp/v1",
        metadata=_check(
            lambda v: (
                TOPIC_PREFIX_RE.fullmatch(v) is not None and not v.startswith("/") and not v.endswith("/")
            ),
            "a topic prefix without wildcards or leading/trailing '/' (e.g. \"ektp/v1\")",
        ),
    )
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    keepalive_s: int = field(default=30, metadata=_check(lambda v: 5 <= v <= 3600, "seconds, 5-3600"))
    window: int = field(default=16, metadata=_check(lambda v: 1 <= v <= 1024, "packets in flight, 1-1024"))
    # the smallest chunk a packet crosses the link in: 8 KiB is one second at 64 kbit/s; on a
    # faster link the chunk grows with the measured rate up to the whole packet
    chunk_bytes: int = field(
        default=8192, metadata=_check(lambda v: 1024 <= v <= 16 * 1024 * 1024, "bytes, 1024-16777216")
    )
    ack_timeout_s: float = field(
        default=60.0, metadata=_check(lambda v: 0 < v <= DAY_S, "seconds, > 0 and at most 86400")
    )
    reconnect_min_s: float = field(
        default=1.0, metadata=_check(lambda v: 0 < v <= DAY_S, "seconds, > 0 and at most 86400")
    )
    reconnect_max_s: float = field(
        default=120.0, metadata=_check(lambda v: 0 < v <= DAY_S, "seconds, > 0 and at most 86400")
    )


@dataclass(frozen=True, slots=True)
class KeysConfig:
    kiosk_private_key: Path | None = None  # default: {data_dir}/kiosk.key
    central_public_key: Path = Path("/etc/ektp-agent/central.pub")


@dataclass(frozen=True, slots=True)
class StoreConfig:
    max_bytes: int = field(
        default=8_000_000_000,
        metadata=_check(
            lambda v: 1_000_000 <= v <= MAX_STORE_BYTES,
            f"bytes, at least 1000000 (a few packets) and at most {MAX_STORE_BYTES} (the largest"
            " outbox SQLite can keep)",
        ),
    )
    path: Path | None = None  # default: {data_dir}/outbox.db


@dataclass(frozen=True, slots=True)
class HealthConfig:
    interval_s: float = field(
        default=30.0, metadata=_check(lambda v: 0.5 <= v <= 86400, "seconds, 0.5-86400")
    )


@dataclass(frozen=True, slots=True)
class ApiConfig:
    socket: Path | None = (
        None  # default: /run/ektp-agent/api.sock when that directory exists, else {data_dir}/api.sock
    )
    group: str | None = None  # group that may use the socket (mode 0660)
    # Each connection holds a file descriptor: beyond this many the service answers "busy"
    # and closes, so idle or runaway clients cannot use up its descriptors.
    max_connections: int = field(
        default=64, metadata=_check(lambda v: 1 <= v <= 1024, "connections at once, 1-1024")
    )
    # A connection with no request within this long is closed (between requests, not during one).
    idle_timeout_s: float = field(default=60.0, metadata=_check(lambda v: 1 <= v <= 3600, "seconds, 1-3600"))


@dataclass(frozen=True, slots=True)
class FingerprintConfig:
    enabled: bool = True
    port: str = "/dev/ttyAMA0"
    baud: int = field(
        default=57600, metadata=_check(lambda v: v % 9600 == 0 and 1 <= v // 9600 <= 12, "N x 9600")
    )


@dataclass(frozen=True, slots=True)
class SignatureConfig:
    enabled: bool = True
    port: str = "/dev/ttyUSB0"
    baud: int = field(default=19200, metadata=_check(lambda v: v in (19200, 38400), "19200 or 38400"))
    pen_up_quiet_s: float = field(default=1.5, metadata=_check(lambda v: 0.05 <= v <= 30, "seconds, 0.05-30"))


@dataclass(frozen=True, slots=True)
class IrisConfig:
    enabled: bool = True
    vid: int = field(default=0x1209, metadata=_check(lambda v: 0 <= v <= 0xFFFF, "a USB vendor id, 0-0xFFFF"))
    pid: int = field(
        default=0x0001, metadata=_check(lambda v: 0 <= v <= 0xFFFF, "a USB product id, 0-0xFFFF")
    )


@dataclass(frozen=True, slots=True)
class CameraConfig:
    enabled: bool = True
    index: int = field(default=0, metadata=_check(lambda v: 0 <= v <= 16, "a camera number, 0-16"))


@dataclass(frozen=True, slots=True)
class DevicesConfig:
    fingerprint: FingerprintConfig = field(default_factory=FingerprintConfig)
    signature: SignatureConfig = field(default_factory=SignatureConfig)
    iris: IrisConfig = field(default_factory=IrisConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    kiosk: KioskConfig = field(default_factory=KioskConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    source: Path | None = field(default=None, compare=False)
    explicit: frozenset[str] = field(default=frozenset(), compare=False)  # keys the file sets

    @property
    def kiosk_private_key(self) -> Path:
        return self.keys.kiosk_private_key or self.kiosk.data_dir / "kiosk.key"

    @property
    def outbox_path(self) -> Path:
        return self.store.path or self.kiosk.data_dir / "outbox.db"

    @property
    def sim_dir(self) -> Path:
        return self.kiosk.data_dir / "sim"

    @property
    def api_socket(self) -> Path:
        """The configured socket; else in systemd's RuntimeDirectory when it exists (the service
        runs under the unit), else in data_dir. The service and the CLI apply the same rule."""
        if self.api.socket is not None:
            return self.api.socket
        if SYSTEMD_RUNTIME_DIR.is_dir():
            return SYSTEMD_RUNTIME_DIR / "api.sock"
        return self.kiosk.data_dir / "api.sock"


def config_path(explicit: str | os.PathLike[str] | None) -> tuple[Path, bool]:
    """The config file to read and whether the user named it (explicitly or through $EKTP_CONFIG)."""
    if explicit is not None:
        return Path(explicit), True
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env), True
    return DEFAULT_CONFIG_PATH, False


def load_config(path: Path, *, required: bool = True) -> AgentConfig:
    """Read and validate ``path``; with ``required=False`` a missing file gives the defaults.

    :raises ConfigError: on a missing (required) or unreadable file, bad TOML, an unknown key or a bad value
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if required:
            raise ConfigError(
                "(file)", str(path), "an existing TOML file (pass --config PATH)", path=path
            ) from None
        return AgentConfig(source=None)
    except OSError as exc:
        raise ConfigError("(file)", str(path), f"a readable file ({exc.strerror})", path=path) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            "(file)",
            str(path),
            f"UTF-8 text, but byte {exc.start} (line {line}) is not: save the file as UTF-8",
            path=path,
        ) from exc
    return parse_config(text, path=path)


def parse_config(text: str, *, path: Path | None = None) -> AgentConfig:
    """Validate TOML text into an ``AgentConfig``. :raises ConfigError:"""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(syntax)", str(exc), "valid TOML", path=path) from exc
    base = path.parent if path is not None else Path.cwd()
    config = _build(AgentConfig, doc, prefix="", base=base, path=path)
    m = config.mqtt
    if m.reconnect_min_s > m.reconnect_max_s:
        raise ConfigError(
            "mqtt.reconnect_min_s",
            m.reconnect_min_s,
            f"at most mqtt.reconnect_max_s ({m.reconnect_max_s:g}): the backoff starts below its ceiling",
            path=path,
        )
    return dataclasses.replace(config, source=path, explicit=frozenset(_keys(doc)))


def check_environment(config: AgentConfig) -> None:
    """What the values need from this machine: the files they name exist, the store fits its disk.

    `config check` and `run` call it; a file that this user may not look at is not an error here
    (the service's user is the one that must read it).
    :raises ConfigError: naming the key
    """
    m = config.mqtt
    for key, file in (
        ("password_file", m.password_file),
        ("ca_file", m.ca_file),
        ("cert_file", m.cert_file),
        ("key_file", m.key_file),
    ):
        if file is None:
            continue
        try:
            is_file = file.is_file()
        except PermissionError:
            continue
        if not is_file:
            what = "is not a regular file" if file.exists() else "does not exist"
            raise ConfigError(
                f"mqtt.{key}",
                str(file),
                f"an existing file ({file} {what}; the MQTT link cannot connect without it)",
                path=config.source,
            )
    if "store.max_bytes" in config.explicit:
        disk = _nearest_existing(config.outbox_path.parent)
        try:
            st = os.statvfs(disk)
        except OSError:
            return
        total = st.f_blocks * st.f_frsize
        if config.store.max_bytes > total:
            raise ConfigError(
                "store.max_bytes",
                config.store.max_bytes,
                f"at most the size of the file system holding {disk} ({total} bytes), which could "
                "never hold more",
                path=config.source,
            )


def _nearest_existing(directory: Path) -> Path:
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            return candidate
    return directory


def _keys(table: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """Every dotted key the TOML document sets (tables themselves included)."""
    for key, value in table.items():
        yield f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _keys(value, f"{prefix}{key}.")


_T = typing.TypeVar("_T")


def _build(cls: type[_T], table: Mapping[str, Any], *, prefix: str, base: Path, path: Path | None) -> _T:
    hints = typing.get_type_hints(cls)
    known = {
        f.name: f
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.name not in ("source", "explicit")
    }
    for key in table:
        if key not in known:
            choices = ", ".join(sorted(known))
            section = f"[{prefix.rstrip('.')}]" if prefix else "the top level"
            raise ConfigError(f"{prefix}{key}", table[key], f"a known key of {section}: {choices}", path=path)
    values: dict[str, Any] = {}
    for name, f in known.items():
        if name not in table:
            continue
        key, raw, hint = f"{prefix}{name}", table[name], hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(raw, dict):
                raise ConfigError(key, raw, f"a [{key}] table", path=path)
            values[name] = _build(hint, raw, prefix=f"{key}.", base=base, path=path)  # type: ignore[arg-type]
            continue
        value = _coerce(key, raw, hint, base=base, path=path)
        check = f.metadata.get("check")
        if check is not None and value is not None and not check(value):
            raise ConfigError(key, raw, str(f.metadata["expected"]), path=path)
        values[name] = value
    return cls(**values)


def _coerce(key: str, raw: Any, hint: Any, *, base: Path, path: Path | None) -> Any:
    args = typing.get_args(hint)
    optional = type(None) in args
    target = next((a for a in args if a is not type(None)), hint) if args else hint
    if raw is None or (optional and raw == ""):
        if optional:
            return None
        raise ConfigError(key, raw, f"a {target.__name__}", path=path)
    if target is bool:
        if isinstance(raw, bool):
            return raw
        raise ConfigError(key, raw, "true or false", path=path)
    if target is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        raise ConfigError(key, raw, "a whole number", path=path)
    if target is float:
        if isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw):
            return float(raw)
        raise ConfigError(key, raw, "a finite number", path=path)
    if target is str:
        if isinstance(raw, str):
            return raw
        raise ConfigError(key, raw, "a string", path=path)
    if target is Path:
        if isinstance(raw, str) and raw:
            p = Path(raw).expanduser()
            return p if p.is_absolute() else base / p
        raise ConfigError(key, raw, "a path string", path=path)
    raise TypeError(f"config field {key} has an unsupported type {hint!r}")  # a bug in this module


def as_dict(config: AgentConfig) -> dict[str, Any]:
    """The effective config as JSON-able data (paths as strings), for `config check --json`."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {
                f.name: plain(getattr(value, f.name))
                for f in dataclasses.fields(value)
                if f.name not in ("source", "explicit")
            }
        return value

    out: dict[str, Any] = plain(config)
    out["effective"] = {
        "kiosk_private_key": str(config.kiosk_private_key),
        "outbox_path": str(config.outbox_path),
        "api_socket": str(config.api_socket),
        "sim_dir": str(config.sim_dir),
    }
    return out
