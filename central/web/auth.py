"""Who may see the fleet: HTTP basic against a users file of scrypt hashes.

The file has one ``name:scrypt$N$r$p$salt$hash`` line per user (salt and hash in base64),
written by `ektp-central web passwd NAME`; blank lines and ``#`` comments are kept as they
are. It is read again whenever it changes, so a new password works without a restart.

A view on loopback needs no login; any other address needs the file (the config loader
refuses it otherwise, and :func:`check_exposure` refuses it again here).

    WebAuthError
     ├── UsersFileError   (also ValueError)  the file cannot be read or has a bad line
     └── ExposedWithoutLogin (also PermissionError)  a non-loopback listen without users
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from central.config import is_loopback
from wire.config_file import write_config_file

log = logging.getLogger("ektp.central.web")

# scrypt's cost: 16 MiB and ~50 ms per check on a small server; RFC 7914 section 2 names N, r, p
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SCRYPT_MAXMEM = 64 * 1024 * 1024
SALT_BYTES, HASH_BYTES = 16, 32
USER_NAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_BYTES = 1024
REMEMBERED_LOGINS = 64  # verified credentials kept so a page refresh costs no scrypt
REALM = "ektp-central fleet"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class WebAuthError(Exception):
    """The web view's access cannot be set up; the message says what to do."""


class UsersFileError(WebAuthError, ValueError):
    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"web users file {path}: {problem}")
        self.path = path


class ExposedWithoutLogin(WebAuthError, PermissionError):
    def __init__(self, host: str) -> None:
        super().__init__(
            f"the web view would listen on {host}, which is not loopback, without a login: set [web]"
            " users_file (`ektp-central web passwd NAME` writes it) or listen on 127.0.0.1"
        )
        self.host = host


def check_exposure(host: str, users_file: Path | None) -> None:
    """:raises ExposedWithoutLogin: ``host`` is not loopback and there is no users file"""
    if users_file is None and not is_loopback(host):
        raise ExposedWithoutLogin(host)


# ----------------------------------------------------------------------------- hashes


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` of ``password`` with a fresh random salt."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password.encode(), salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, HASH_BYTES)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded`` (compared in constant time); False for a malformed hash."""
    parsed = _parse_hash(encoded)
    if parsed is None:
        return False
    n, r, p, salt, digest = parsed
    candidate = _scrypt(password.encode()[:MAX_PASSWORD_BYTES], salt, n, r, p, len(digest))
    return hmac.compare_digest(candidate, digest)


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, size: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM, dklen=size)


def _parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt" or not all(x.isdigit() for x in parts[1:4]):
        return None
    n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
    # a power of two, and within what SCRYPT_MAXMEM allows (128 * n * r bytes)
    if n < 2 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16 or 128 * n * r > SCRYPT_MAXMEM // 2:
        return None
    try:
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except (binascii.Error, ValueError):
        return None
    if not salt or not 16 <= len(digest) <= 64:
        return None
    return n, r, p, salt, digest


# ----------------------------------------------------------------------------- the file


def check_password(password: str) -> None:
    """:raises ValueError: too short, too long, or with control characters"""
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValueError(f"the password is shorter than {MIN_PASSWORD_CHARS} characters")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise ValueError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")
    if any(ord(c) < 32 or ord(c) == 127 for c in password):
        raise ValueError("the password has control characters")


def read_users(path: Path) -> dict[str, str]:
    """{name: encoded hash} from the users file.

    :raises UsersFileError: missing, unreadable, writable by others, readable by everyone, or a bad line
    """
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsersFileError(path, "no such file (`ektp-central web passwd NAME` writes it)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsersFileError(path, f"cannot be read ({exc})") from exc
    if mode & 0o027:
        raise UsersFileError(path, f"has mode {mode:04o}, open to other users; run: chmod 640 {path}")
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, encoded = line.strip().partition(":")
        if not sep or not USER_NAME_RE.fullmatch(name) or _parse_hash(encoded) is None:
            raise UsersFileError(
                path,
                f"line {number} is not NAME:scrypt$N$r$p$SALT$HASH (`ektp-central web passwd NAME` writes one)",
            )
        users[name] = encoded
    return users


def set_password(path: Path, name: str, password: str) -> bool:
    """Write or replace ``name``'s line in the users file (mode 0640, replaced atomically).

    Returns True when the user was new. :raises UsersFileError: the file has a bad line;
    :raises ValueError: a bad name or password; :raises OSError: it cannot be written
    """
    if not USER_NAME_RE.fullmatch(name):
        raise ValueError(f"user name {name!r}: expected 1-64 characters from A-Z a-z 0-9 _ . @ -")
    check_password(password)
    line = f"{name}:{hash_password(password)}"
    lines: list[str] = []
    if path.exists() or path.is_symlink():
        read_users(path)  # refuses a file it could not read back
        lines = path.read_text(encoding="utf-8").splitlines()
    new = True
    for i, old in enumerate(lines):
        if old.strip().partition(":")[0] == name and not old.lstrip().startswith("#"):
            lines[i], new = line, False
    if new:
        lines.append(line)
    write_config_file(path, "\n".join(lines) + "\n", force=True)
    return new


# ----------------------------------------------------------------------------- checking a request


@dataclass
class _Loaded:
    stamp: tuple[int, int, int] | None = None  # (inode, size, mtime_ns) of what was read
    users: dict[str, str] | None = None


class UsersFile:
    """The users file, read again when it changes; remembers credentials it verified."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._loaded = _Loaded()
        self._verified: OrderedDict[bytes, str] = OrderedDict()
        self.users()  # a bad file stops the start, not the first request

    def users(self) -> dict[str, str]:
        """The current users. :raises UsersFileError:"""
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = None
        with self._lock:
            if self._loaded.users is not None and stamp == self._loaded.stamp:
                return self._loaded.users
        users = read_users(self.path)
        with self._lock:
            self._loaded = _Loaded(stamp, users)
            self._verified.clear()  # a changed password must not keep working
        return users

    def check(self, name: str, password: str) -> bool:
        """Whether name and password match a line of the file (scrypt: call it off the event loop)."""
        try:
            users = self.users()
        except UsersFileError as exc:
            log.error("%s: every login is refused until it is fixed", exc)
            return False
        encoded = users.get(name)
        key = hashlib.sha256(
            b"\0".join([name.encode(), password.encode(), (encoded or "").encode()])
        ).digest()
        with self._lock:
            if self._verified.get(key) == name:
                self._verified.move_to_end(key)
                return True
        if encoded is None:
            verify_password(password, _DUMMY_HASH)  # the same time as for a known name
            return False
        if not verify_password(password, encoded):
            return False
        with self._lock:
            self._verified[key] = name
            while len(self._verified) > REMEMBERED_LOGINS:
                self._verified.popitem(last=False)
        return True


_DUMMY_HASH = (
    f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}$"
    f"{base64.b64encode(b'0' * SALT_BYTES).decode()}${base64.b64encode(b'0' * HASH_BYTES).decode()}"
)


def parse_basic(header: bytes) -> tuple[str, str] | None:
    """(name, password) from an ``Authorization: Basic ...`` value, or None."""
    scheme, _, value = header.partition(b" ")
    if scheme.lower() != b"basic" or len(value) > 4 * MAX_PASSWORD_BYTES:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    name, sep, password = decoded.partition(":")
    return (name, password) if sep else None


class BasicAuth:
    """ASGI middleware: every HTTP request but ``open_paths`` needs a user of the file."""

    def __init__(self, app: ASGIApp, users: UsersFile, *, open_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.users = users
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        creds = parse_basic(header)
        if creds is not None:
            from starlette.concurrency import run_in_threadpool

            if await run_in_threadpool(self.users.check, *creds):
                scope.setdefault("state", {})["user"] = creds[0]
                await self.app(scope, receive, send)
                return
            client = scope.get("client") or ("?", 0)
            log.warning("web login refused for user %r from %s", creds[0][:64], client[0])
        await _unauthorized(send)


async def _unauthorized(send: Send) -> None:
    body = b"401: this fleet view needs a login (HTTP basic; ask the centre's operator for an account)\n"
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"www-authenticate", f'Basic realm="{REALM}", charset="UTF-8"'.encode()),
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
