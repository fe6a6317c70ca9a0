"""Key files of the kiosk and of the centre: creation, loading, and the file-mode rules.

The kiosk signs every packet with its Ed25519 key. The centre has two key pairs: an
X25519 pair that packets are encrypted to, and an Ed25519 pair that signs its acks.
Files are PEM (PKCS#8 private, SubjectPublicKeyInfo public) so OpenSSL reads them; the
public file is the private file's path with ``.pub`` appended; the centre's files hold
two PEM blocks each. A private key file is written 0600 atomically and refused when its
mode lets anyone but the owner read it.

    KeyFileError
     ├── KeyFileMissing    (also FileNotFoundError)
     ├── KeyFileExists     (also FileExistsError)
     ├── KeyFileInsecure   (also PermissionError)
     └── KeyFileInvalid    (also ValueError)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

PEM_BLOCK_RE = re.compile(rb"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----\s*", re.S)


class KeyFileError(Exception):
    """A key file that cannot be used; the message names the file and what to do."""

    def __init__(self, message: str, *, path: Path) -> None:
        super().__init__(message)
        self.path = path


class KeyFileMissing(KeyFileError, FileNotFoundError):
    pass


class KeyFileExists(KeyFileError, FileExistsError):
    pass


class KeyFileInsecure(KeyFileError, PermissionError):
    pass


class KeyFileInvalid(KeyFileError, ValueError):
    pass


def public_path(private_path: Path) -> Path:
    return private_path.with_name(private_path.name + ".pub")


def key_fingerprint(raw_public: bytes) -> str:
    """A short, stable name for a public key: the first 16 bytes of its SHA-256, hex, colon-grouped."""
    digest = hashlib.sha256(raw_public).hexdigest()[:32]
    return ":".join(digest[i : i + 4] for i in range(0, 32, 4))


# ----------------------------------------------------------------------------- the kiosk


def create_kiosk_key(private_path: Path, *, force: bool = False) -> Ed25519PrivateKey:
    """Create the kiosk's Ed25519 key pair files. :raises KeyFileExists: unless ``force``"""
    key = Ed25519PrivateKey.generate()
    _write_pair(private_path, [_private_pem(key)], [_public_pem(key.public_key())], force=force)
    return key


def load_kiosk_private(path: Path) -> Ed25519PrivateKey:
    """:raises KeyFileError: missing, too open a mode, or not an Ed25519 private key"""
    (key,) = _load_private_blocks(path, "the kiosk's private key", MAKE_KIOSK_KEY, expect=1)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileInvalid(f"{path} holds a {type(key).__name__}, not the kiosk's Ed25519 key", path=path)
    return key


def load_kiosk_public(path: Path) -> Ed25519PublicKey:
    """:raises KeyFileError: missing or not an Ed25519 public key"""
    (key,) = _load_public_blocks(path, "the kiosk's public key", FETCH_KIOSK_PUBLIC, expect=1)
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileInvalid(
            f"{path} holds a {type(key).__name__}, not a kiosk's Ed25519 public key", path=path
        )
    return key


def raw_public(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# ----------------------------------------------------------------------------- the centre


@dataclass(frozen=True, slots=True)
class CentralPublicKeys:
    encryption: X25519PublicKey  # packets are encrypted to it
    signing: Ed25519PublicKey  # acks are verified with it


@dataclass(frozen=True, slots=True)
class CentralPrivateKeys:
    encryption: X25519PrivateKey
    signing: Ed25519PrivateKey

    def public(self) -> CentralPublicKeys:
        return CentralPublicKeys(self.encryption.public_key(), self.signing.public_key())


def create_central_keys(private_path: Path, *, force: bool = False) -> CentralPrivateKeys:
    """Create the centre's two key pairs in one private and one public file. :raises KeyFileExists:"""
    keys = CentralPrivateKeys(X25519PrivateKey.generate(), Ed25519PrivateKey.generate())
    pub = keys.public()
    _write_pair(
        private_path,
        [_private_pem(keys.encryption), _private_pem(keys.signing)],
        [_public_pem(pub.encryption), _public_pem(pub.signing)],
        force=force,
    )
    return keys


def load_central_private(path: Path) -> CentralPrivateKeys:
    """:raises KeyFileError: missing, too open, or not one X25519 and one Ed25519 private key"""
    blocks = _load_private_blocks(path, "the centre's private key", MAKE_CENTRAL_KEYS, expect=2)
    enc = [k for k in blocks if isinstance(k, X25519PrivateKey)]
    sig = [k for k in blocks if isinstance(k, Ed25519PrivateKey)]
    if len(enc) != 1 or len(sig) != 1:
        raise KeyFileInvalid(
            f"{path} must hold one X25519 and one Ed25519 private key (`ektp-central keys init`)", path=path
        )
    return CentralPrivateKeys(enc[0], sig[0])


def load_central_public(path: Path) -> CentralPublicKeys:
    """:raises KeyFileError: missing, or not one X25519 and one Ed25519 public key"""
    blocks = _load_public_blocks(path, "the centre's public key", FETCH_CENTRAL_PUBLIC, expect=2)
    enc = [k for k in blocks if isinstance(k, X25519PublicKey)]
    sig = [k for k in blocks if isinstance(k, Ed25519PublicKey)]
    if len(enc) != 1 or len(sig) != 1:
        raise KeyFileInvalid(
            f"{path} must hold the centre's X25519 and Ed25519 public keys (the .pub file of `ektp-central keys init`)",
            path=path,
        )
    return CentralPublicKeys(enc[0], sig[0])


# ----------------------------------------------------------------------------- files


def check_private_mode(path: Path) -> None:
    """:raises KeyFileInsecure: when group or others may read or write the private key file"""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise KeyFileInsecure(
            f"private key {path} has mode {mode:04o}, open to other users; run: chmod 600 {path}", path=path
        )


def _private_pem(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _public_pem(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _write_pair(
    private_path: Path, private_pems: list[bytes], public_pems: list[bytes], *, force: bool
) -> None:
    pub = public_path(private_path)
    if not force:
        for p in (private_path, pub):
            if p.exists():
                raise KeyFileExists(
                    f"{p} already exists; keep it, or pass --force to replace the key pair", path=p
                )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(private_path, b"".join(private_pems), mode=0o600)
    atomic_write(pub, b"".join(public_pems), mode=0o644)


def atomic_write(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode`` so that a crash leaves the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not loosen or tighten what we asked for
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# What to do about a missing key file depends on whose key it is and which end reads it: a
# kiosk makes its own pair, but the centre's public key must be copied from the centre.
MAKE_KIOSK_KEY = "create it with `ektp-agent keys init`"
FETCH_KIOSK_PUBLIC = (
    "give the `.pub` file whose path `ektp-agent keys init` (or `ektp-agent keys show`) printed on the"
    " kiosk, copied to this machine"
)
MAKE_CENTRAL_KEYS = "create it with `ektp-central keys init`"
FETCH_CENTRAL_PUBLIC = (
    "copy it here from the centre: it is the `.pub` file whose path `ektp-central keys init` printed"
    " there (do not run `keys init` on the kiosk for it: that makes the kiosk's own key)"
)


def _read(path: Path, what: str, advice: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyFileMissing(f"{what} {path} does not exist; {advice}", path=path) from None
    except OSError as exc:
        raise KeyFileInvalid(f"cannot read {what} {path}: {exc.strerror}", path=path) from exc


def _blocks(path: Path, data: bytes, expect: int) -> list[bytes]:
    blocks = [m.group(0) for m in PEM_BLOCK_RE.finditer(data)]
    if len(blocks) != expect:
        raise KeyFileInvalid(f"{path} holds {len(blocks)} PEM key block(s), expected {expect}", path=path)
    return blocks


def _load_private_blocks(path: Path, what: str, advice: str, *, expect: int) -> list[object]:
    data = _read(path, what, advice)
    check_private_mode(path)
    out: list[object] = []
    for block in _blocks(path, data, expect):
        try:
            out.append(serialization.load_pem_private_key(block, password=None))
        except (ValueError, TypeError) as exc:
            raise KeyFileInvalid(
                f"{path} is not a readable unencrypted PEM private key: {exc}", path=path
            ) from exc
    return out


def _load_public_blocks(path: Path, what: str, advice: str, *, expect: int) -> list[object]:
    data = _read(path, what, advice)
    out: list[object] = []
    for block in _blocks(path, data, expect):
        try:
            out.append(serialization.load_pem_public_key(block))
        except (ValueError, TypeError) as exc:
            raise KeyFileInvalid(f"{path} is not a readable PEM public key: {exc}", path=path) from exc
    return out
