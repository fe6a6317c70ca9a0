"""The agent's TOML configuration, loaded into typed, frozen objects with defaults.

Every key is declared once, in a section dataclass below, with its type, default, its
meaning for a technician and (where the type is not enough) a check that says what is
expected. The loader checks those declarations, and `config init` writes its commented
file from them (:func:`config_template`), so the file cannot drift from the loader.
Unknown sections and keys are errors: a typo in a config file must not silently fall
back to a default. Relative paths are taken relative to the config file's directory.
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

from wire.command import MAX_TTL_S, VERBS
from wire.config_file import KeyDoc, missing_mqtt_file, render
from wire.keys import KeyFileError, KeyFileMissing, load_central_public, load_kiosk_private
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


def _key(
    *,
    doc: str,
    check: Callable[[Any], bool] | None = None,
    expected: str = "",
    default_text: str = "",
    example: object = None,
    hex: bool = False,
) -> dict[str, object]:
    """Field metadata of one config key: its meaning for the technician (``config init`` writes it
    above the key), a default that is not a fixed value in words, an example for the commented
    line, and, where the type is not enough, the check the loader makes."""
    meta: dict[str, object] = {"doc": doc, "default_text": default_text, "example": example, "hex": hex}
    if check is not None:
        meta |= _check(check, expected)
    return meta


def _kiosk_id(value: str) -> bool:
    return KIOSK_ID_RE.fullmatch(value) is not None


def _default_kiosk_id() -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64]
    return name or "kiosk"


def _seconds(low: float, high: float) -> Callable[[float], bool]:
    return lambda v: low <= v <= high


KIOSK_ID_WORDS = '1-64 characters from A-Z a-z 0-9 _ - (e.g. "320715-01")'
POSITIVE_SECONDS = "seconds, > 0 and at most 86400"


@dataclass(frozen=True, slots=True)
class KioskConfig:
    """This kit: its name at the centre, and where it keeps its state."""

    id: str = field(
        default_factory=_default_kiosk_id,
        metadata=_key(
            check=_kiosk_id,
            expected=KIOSK_ID_WORDS,
            doc="The kiosk's name: its level in the MQTT topics (ektp/v1/<id>/...) and its MQTT client id, the"
            " MQTT user name (or TLS certificate CN) the broker expects, and the id it is registered under at"
            " the centre (`ektp-central kiosk add ID`). Set it once; changing it later makes a new kiosk at"
            " the centre.",
            default_text='the host name, with characters other than A-Z a-z 0-9 _ - made "-"',
            example="320715-01",
        ),
    )
    data_dir: Path = field(
        default=Path("/var/lib/ektp-agent"),
        metadata=_key(
            doc="Where the kiosk keeps its state: the outbox of enrollments not yet delivered, its signing"
            " key, and the simulator's devices. The shipped systemd unit lets the service write nowhere else.",
        ),
    )


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """The link to the MQTT broker: enrollments and health go to the centre, acknowledgements come back."""

    host: str = field(
        default="localhost",
        metadata=_key(
            check=bool,
            expected="a host name or address",
            doc="The MQTT broker that carries this kit's packets and health to the centre (no scheme, no port).",
        ),
    )
    port: int = field(
        default=1883,
        metadata=_key(
            check=lambda v: 1 <= v <= 65535,
            expected="a TCP port, 1-65535",
            doc="The broker's TCP port: 1883 for plain MQTT, usually 8883 with TLS.",
        ),
    )
    topic_prefix: str = field(
        default="ektp/v1",
        metadata=_key(
            check=lambda v: (
                TOPIC_PREFIX_RE.fullmatch(v) is not None and not v.startswith("/") and not v.endswith("/")
            ),
            expected="a topic prefix without wildcards or leading/trailing '/' (e.g. \"ektp/v1\")",
            doc="The first levels of every topic; the centre's [mqtt] topic_prefix must be the same.",
        ),
    )
    tls: bool = field(
        default=False,
        metadata=_key(
            doc="Connect with TLS; the broker's certificate is checked against ca_file (or the system's CAs).",
        ),
    )
    ca_file: Path | None = field(
        default=None,
        metadata=_key(
            doc="The CA certificate (PEM) that signed the broker's certificate.",
            default_text="none (the system's CAs are used)",
            example="/etc/ektp-agent/mqtt-ca.crt",
        ),
    )
    cert_file: Path | None = field(
        default=None,
        metadata=_key(
            doc="This kiosk's TLS client certificate (PEM), when the broker knows kiosks by certificate (its"
            " CN is the kiosk id).",
            example="/etc/ektp-agent/mqtt-client.crt",
        ),
    )
    key_file: Path | None = field(
        default=None,
        metadata=_key(doc="The private key (PEM) of cert_file.", example="/etc/ektp-agent/mqtt-client.key"),
    )
    username: str | None = field(
        default=None,
        metadata=_key(
            doc="The MQTT user name, when the broker knows kiosks by password (usually the kiosk id).",
            example="320715-01",
        ),
    )
    password_file: Path | None = field(
        default=None,
        metadata=_key(
            doc="A file whose first line is the MQTT password (owner root, group ektp, mode 0640); the"
            " password itself never goes in this file.",
            example="/etc/ektp-agent/mqtt-password",
        ),
    )
    keepalive_s: int = field(
        default=30,
        metadata=_key(
            check=lambda v: 5 <= v <= 3600,
            expected="seconds, 5-3600",
            doc="MQTT keep-alive: how long a silent link may last before the kiosk and the broker take it"
            " for dead (the broker then publishes the kiosk's offline status).",
        ),
    )
    window: int = field(
        default=16,
        metadata=_key(
            check=lambda v: 1 <= v <= 1024,
            expected="packets in flight, 1-1024",
            doc="How many packets may be on their way to the centre at once, waiting for its"
            " acknowledgement; a thin link carries fewer (the window follows the measured rate).",
        ),
    )
    # the smallest chunk a packet crosses the link in: 8 KiB is one second at 64 kbit/s; on a
    # faster link the chunk grows with the measured rate up to the whole packet
    chunk_bytes: int = field(
        default=8192,
        metadata=_key(
            check=lambda v: 1024 <= v <= 16 * 1024 * 1024,
            expected="bytes, 1024-16777216",
            doc="The smallest piece a packet crosses the link in (8 KiB is one second at 64 kbit/s); on a"
            " faster link the pieces grow with the measured rate, up to the whole packet.",
        ),
    )
    ack_timeout_s: float = field(
        default=60.0,
        metadata=_key(
            check=lambda v: 0 < v <= DAY_S,
            expected=POSITIVE_SECONDS,
            doc="With no answer from the centre about a packet in transfer for this long, the kiosk asks"
            " the centre what it holds and resumes from there.",
        ),
    )
    reconnect_min_s: float = field(
        default=1.0,
        metadata=_key(
            check=lambda v: 0 < v <= DAY_S,
            expected=POSITIVE_SECONDS,
            doc="The first wait before reconnecting after the link drops; it doubles at each failure (with"
            " some randomness) up to reconnect_max_s.",
        ),
    )
    reconnect_max_s: float = field(
        default=120.0,
        metadata=_key(
            check=lambda v: 0 < v <= DAY_S,
            expected=POSITIVE_SECONDS,
            doc="The longest wait between two reconnection attempts (at least reconnect_min_s).",
        ),
    )


@dataclass(frozen=True, slots=True)
class KeysConfig:
    """The kiosk's signing key, and the centre's public key."""

    kiosk_private_key: Path | None = field(
        default=None,
        metadata=_key(
            doc="The kiosk's Ed25519 signing key (mode 0600), made by `ektp-agent keys init`; its public half,"
            " this path with .pub added, is what the centre registers (`ektp-central kiosk add`).",
            default_text="{data_dir}/kiosk.key",
            example="/var/lib/ektp-agent/kiosk.key",
        ),
    )
    central_public_key: Path = field(
        default=Path("/etc/ektp-agent/central.pub"),
        metadata=_key(
            doc="The centre's public key file: packets are encrypted to it and the centre's"
            " acknowledgements verified with it. Copy it from the centre: it is the .pub file whose path"
            " `ektp-central keys init` printed there.",
        ),
    )


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """The outbox: enrollments kept on the kit until the centre confirms it has stored them."""

    max_bytes: int = field(
        default=8_000_000_000,
        metadata=_key(
            check=lambda v: 1_000_000 <= v <= MAX_STORE_BYTES,
            expected=f"bytes, at least 1000000 (a few packets) and at most {MAX_STORE_BYTES} (the largest"
            " outbox SQLite can keep)",
            doc="The most bytes of packets not yet delivered that the kiosk keeps: health warns above 80 %,"
            " and at the bound new enrollments are refused (nothing undelivered is ever dropped). When set"
            " here it must also fit the disk that holds the outbox.",
        ),
    )
    path: Path | None = field(
        default=None,
        metadata=_key(
            doc="The outbox database file (SQLite).",
            default_text="{data_dir}/outbox.db",
            example="/var/lib/ektp-agent/outbox.db",
        ),
    )


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """The kit's health report to the centre."""

    interval_s: float = field(
        default=30.0,
        metadata=_key(
            check=_seconds(0.5, 86400),
            expected="seconds, 0.5-86400",
            doc="How often the kit publishes its health (it also does on every change); the peripherals are"
            " self-tested twice as often.",
        ),
    )


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """The local API: the Unix socket the kiosk front end and the CLI reach the running service on."""

    socket: Path | None = field(
        default=None,
        metadata=_key(
            doc="The Unix socket of the local API.",
            default_text="/run/ektp-agent/api.sock when that directory exists (under the systemd unit), else"
            " {data_dir}/api.sock",
            example="/run/ektp-agent/api.sock",
        ),
    )
    group: str | None = field(
        default=None,
        metadata=_key(
            doc="The group that may use the socket (mode 0660).",
            default_text="none (the service's own group)",
            example="ektp",
        ),
    )
    # Each connection holds a file descriptor: beyond this many the service answers "busy"
    # and closes, so idle or runaway clients cannot use up its descriptors.
    max_connections: int = field(
        default=64,
        metadata=_key(
            check=lambda v: 1 <= v <= 1024,
            expected="connections at once, 1-1024",
            doc='The most clients connected at once; one more is answered "busy" and closed, so runaway'
            " clients cannot use up the service's file descriptors.",
        ),
    )
    # A connection with no request within this long is closed (between requests, not during one).
    idle_timeout_s: float = field(
        default=60.0,
        metadata=_key(
            check=_seconds(1, 3600),
            expected="seconds, 1-3600",
            doc="A connection that sends no request (or reads no answer) for this long is closed.",
        ),
    )


def _verbs(value: tuple[str, ...]) -> bool:
    return all(v in VERBS for v in value) and len(set(value)) == len(value)


@dataclass(frozen=True, slots=True)
class RemoteConfig:
    """Commands from the centre (`ektp-central kiosk cmd`): each signed by the centre's key, run only
    if it names this kiosk and has not expired, and logged in {data_dir}/remote.db (`ektp-agent remote
    log`)."""

    enabled: bool = field(
        default=True,
        metadata=_key(
            doc="Take commands from the centre. When false every command is refused (with a signed"
            " refusal the centre sees) and nothing is run.",
        ),
    )
    verbs: tuple[str, ...] = field(
        default=VERBS,
        metadata=_key(
            check=_verbs,
            expected=f"a list of verbs from {', '.join(VERBS)}, each at most once",
            doc="The commands this kiosk runs; any other is refused. diag, status and logs only read;"
            " sync and resubmit act on the outbox; selftest-interval and health-interval change a bounded"
            " interval until `ektp-agent config reset-remote`; reopen closes and reopens a peripheral.",
        ),
    )
    session_expiry_s: int = field(
        default=MAX_TTL_S,
        metadata=_key(
            check=lambda v: 0 <= v <= MAX_TTL_S,
            expected=f"seconds, 0-{MAX_TTL_S}",
            doc="How long the broker keeps commands for this kiosk while it is offline (its MQTT session"
            " expiry); 0 drops them. No command lives longer than 7 days anyway.",
        ),
    )


ENABLED_DOC = "Use this device. An enrollment needs all four: disable one only on a bench or a training kit."


@dataclass(frozen=True, slots=True)
class FingerprintConfig:
    """The optical fingerprint module (R30x/R503/AS608 family) on a UART."""

    enabled: bool = field(default=True, metadata=_key(doc=ENABLED_DOC))
    port: str = field(
        default="/dev/ttyAMA0",
        metadata=_key(
            doc="The serial port the module is wired to (on a Pi's GPIO header: /dev/serial0 or /dev/ttyAMA0).",
        ),
    )
    baud: int = field(
        default=57600,
        metadata=_key(
            check=lambda v: v % 9600 == 0 and 1 <= v // 9600 <= 12,
            expected="N x 9600",
            doc="The module's serial speed, as the module is set.",
        ),
    )


@dataclass(frozen=True, slots=True)
class SignatureConfig:
    """The serial signature pad (Wacom ISDV4 family)."""

    enabled: bool = field(default=True, metadata=_key(doc=ENABLED_DOC))
    port: str = field(
        default="/dev/ttyUSB0",
        metadata=_key(
            doc="The pad's serial port; a /dev/serial/by-id/... name stays the same when USB devices are"
            " plugged in another order, /dev/ttyUSB0 may not.",
        ),
    )
    baud: int = field(
        default=19200,
        metadata=_key(
            check=lambda v: v in (19200, 38400),
            expected="19200 or 38400",
            doc="The pad's serial speed.",
        ),
    )
    pen_up_quiet_s: float = field(
        default=1.5,
        metadata=_key(
            check=_seconds(0.05, 30),
            expected="seconds, 0.05-30",
            doc="A signature ends when the pen stays up this long.",
        ),
    )


@dataclass(frozen=True, slots=True)
class IrisConfig:
    """The USB iris camera."""

    enabled: bool = field(default=True, metadata=_key(doc=ENABLED_DOC))
    vid: int = field(
        default=0x1209,
        metadata=_key(
            check=lambda v: 0 <= v <= 0xFFFF,
            expected="a USB vendor id, 0-0xFFFF",
            doc="The camera's USB vendor id, as `lsusb` shows it (the part before the colon).",
            hex=True,
        ),
    )
    pid: int = field(
        default=0x0001,
        metadata=_key(
            check=lambda v: 0 <= v <= 0xFFFF,
            expected="a USB product id, 0-0xFFFF",
            doc="The camera's USB product id, as `lsusb` shows it (the part after the colon).",
            hex=True,
        ),
    )


@dataclass(frozen=True, slots=True)
class CameraConfig:
    """The face camera (a Raspberry Pi camera module, through picamera2)."""

    enabled: bool = field(default=True, metadata=_key(doc=ENABLED_DOC))
    index: int = field(
        default=0,
        metadata=_key(
            check=lambda v: 0 <= v <= 16,
            expected="a camera number, 0-16",
            doc="Which camera: its number in `rpicam-hello --list-cameras` (0 is the first).",
        ),
    )


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
    remote: RemoteConfig = field(default_factory=RemoteConfig)
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
    missing = missing_mqtt_file(config.mqtt)
    if missing is not None:
        key, file, what = missing
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
    if typing.get_origin(hint) is tuple:  # a list of strings (remote.verbs)
        if isinstance(raw, list) and all(isinstance(v, str) for v in raw):
            return tuple(raw)
        raise ConfigError(key, raw, 'a list of strings, e.g. ["diag", "status"]', path=path)
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


# ----------------------------------------------------------------------------- the commented file


def key_docs() -> list[KeyDoc]:
    """Every key the loader reads, in file order, as `config init` and docs/configuration.md show it."""
    return list(_key_docs(AgentConfig, ""))


def _key_docs(cls: type, prefix: str) -> Iterator[KeyDoc]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in ("source", "explicit"):
            continue
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from _key_docs(hint, f"{prefix}{f.name}.")  # type: ignore[arg-type]
            continue
        meta = f.metadata
        yield KeyDoc(
            section=prefix.rstrip("."),
            name=f.name,
            meaning=str(meta["doc"]),
            default=None if f.default is dataclasses.MISSING else f.default,
            default_text=str(meta["default_text"]),
            allowed=str(meta.get("expected") or _type_words(hint)),
            example=meta["example"],
            hex=bool(meta["hex"]),
        )


def _type_words(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    target = args[0] if args else hint
    return {bool: "true or false", Path: "a path"}.get(target, "")


def section_docs() -> dict[str, str]:
    """Each section's one line, from its dataclass's docstring ("devices.fingerprint": "...")."""
    return dict(_section_docs(AgentConfig, ""))


def _section_docs(cls: type, prefix: str) -> Iterator[tuple[str, str]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if not dataclasses.is_dataclass(hint):
            continue
        inner = typing.get_type_hints(hint)
        if all(dataclasses.is_dataclass(inner[g.name]) for g in dataclasses.fields(hint)):
            yield from _section_docs(hint, f"{prefix}{f.name}.")  # type: ignore[arg-type]  # [devices]
        else:
            yield f"{prefix}{f.name}", (hint.__doc__ or "").strip()


def config_template(
    *, kiosk_id: str | None = None, broker: tuple[str, int | None] | None = None, simulate: bool = False
) -> str:
    """The commented config `ektp-agent config init` writes: every key with its meaning and default.

    The keys given here are set; all others are commented out, so the file loads as the defaults.
    """
    values: dict[str, object] = {}
    if kiosk_id is not None:
        values["kiosk.id"] = kiosk_id
    if broker is not None:
        values["mqtt.host"] = broker[0]
        if broker[1] is not None:
            values["mqtt.port"] = broker[1]
    header = [
        "ektp-agent configuration (TOML), written by `ektp-agent config init`. The agent reads"
        " /etc/ektp-agent/config.toml, or the file that --config PATH or $EKTP_CONFIG names.",
        "",
        "Every key the agent reads is below with its meaning, what it accepts and its default. A line"
        ' that starts with "#" is not read, so a key left commented out takes its default: to change'
        ' one, delete the "# " before it and edit the value. Relative paths are taken from this'
        " file's directory. An unknown key is an error, never ignored.",
        "",
        "After every change: ektp-agent --config THIS_FILE config check",
    ]
    if simulate:
        sim = KioskConfig().data_dir / "sim"
        values["devices.fingerprint.port"] = str(sim / "fingerprint")
        values["devices.signature.port"] = str(sim / "signature")
        header += [
            "",
            "A simulated kit: the serial ports below are the simulator's, in the sim directory of"
            f" data_dir ({sim}; change them with data_dir). Start it with: ektp-agent --config"
            " THIS_FILE run --simulate",
        ]
    return render(header, key_docs(), section_docs(), values)


# ----------------------------------------------------------------------------- keys before `run`


@dataclass(frozen=True, slots=True)
class MissingKeyFile:
    """A key file `run` needs that is not there yet: the next step, not a config error."""

    key: str
    path: Path
    advice: str  # the key loader's own words: what the file is and where it comes from

    def to_json(self) -> dict[str, str]:
        return {"key": self.key, "file": str(self.path), "reason": self.advice}


def check_key_files(config: AgentConfig) -> list[MissingKeyFile]:
    """The key files `run` loads: those missing (each with what to do), after checking those present.

    A file this user may not read is not checked (the service's user is the one that must).
    :raises ConfigError: a key file is there but cannot be used (mode, content), naming its key
    """
    missing: list[MissingKeyFile] = []
    checks: list[tuple[str, Path, Callable[[Path], object]]] = [
        ("keys.kiosk_private_key", config.kiosk_private_key, load_kiosk_private),
        ("keys.central_public_key", config.keys.central_public_key, load_central_public),
    ]
    for key, path, load in checks:
        try:
            load(path)
        except KeyFileMissing as exc:
            missing.append(MissingKeyFile(key, path, str(exc)))
        except KeyFileError as exc:
            if isinstance(exc.__cause__, PermissionError):
                continue  # unreadable to this user: the service's user is the one that must read it
            raise ConfigError(key, str(path), f"a usable key file, but {exc}", path=config.source) from exc
        except PermissionError:
            continue
    return missing
