"""The enrollment packet: a key-less header, a body encrypted to the centre, a kiosk signature.

Format version 1 (all integers big-endian; the full description, with the crypto
parameters, is docs/protocol.md ("The enrollment packet"))::

    off   size  field
    0     4     magic "EKTP"
    4     1     format version (1)
    5     1     flags: bit 0 = clock synchronised, bit 1 = synthetic (a test
                resident of a simulated kit, never a real one), bits 2..7 zero
    6     16    packet id, UUIDv7 (RFC 9562)
    22    8     seq, per kiosk (u64, < 2**63)
    30    8     created at, unix ms UTC (i64, 0 .. 9999-12-31)
    38    4     plaintext length P (u32, <= 64 MiB)
    42    4     ciphertext length C (u32, = P + 16)
    46    32    SHA-256 of the plaintext body
    78    1     kiosk id length L (1..64)
    79    L     kiosk id, ASCII [A-Za-z0-9_-]
    79+L  32    ephemeral X25519 public key            -- header ends before this field
    111+L C     ChaCha20-Poly1305 ciphertext || tag
    end-64 64   Ed25519 signature over every byte before it

Body key: X25519(ephemeral, centre) -> HKDF-SHA256(salt = packet id, info = INFO_PREFIX
|| ephemeral public || centre public) -> 44 bytes = key (32) || nonce (12). Associated
data: every byte before the ciphertext (header and ephemeral key).

Error tree::

    ValueError
     +-- PacketError (reason: PacketFault)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import struct
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from uuid import UUID

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from wire.names import KIOSK_ID_RE
from wire.record import EnrollmentRecord, InvalidRecord

MAGIC = b"EKTP"
FORMAT_VERSION = 1
FLAG_CLOCK_SYNCED = 0x01
FLAG_SYNTHETIC = 0x02  # signed with the header: a simulated kit's test resident
KNOWN_FLAGS = FLAG_CLOCK_SYNCED | FLAG_SYNTHETIC
MAX_KIOSK_ID = 64
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_SEQ = 2**63 - 1
MAX_CREATED_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
INFO_PREFIX = b"ektp packet v1 body key"
KEY_LEN, NONCE_LEN, TAG_LEN = 32, 12, 16
PUBLIC_KEY_LEN, SIGNATURE_LEN = 32, 64

_FIXED = struct.Struct(">4sBB16sQqII32sB")  # everything up to and including the kiosk id length
FIXED_HEADER_LEN = _FIXED.size  # 79
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class PacketFault(StrEnum):
    """Why a packet was refused."""

    TRUNCATED = "truncated"
    BAD_MAGIC = "bad_magic"
    WRONG_VERSION = "wrong_version"
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    WRONG_KEY = "wrong_key"
    BODY_MISMATCH = "body_mismatch"


class PacketError(ValueError):
    """A packet that cannot be read, verified or opened; ``reason`` says which."""

    def __init__(
        self, reason: PacketFault, message: str, *, packet_id: str | None = None, kiosk_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.packet_id = packet_id
        self.kiosk_id = kiosk_id


@dataclass(frozen=True, slots=True)
class PacketHeader:
    """What anyone can read from a packet without keys."""

    format_version: int
    packet_id: str
    kiosk_id: str
    seq: int
    created_at: str  # RFC 3339 UTC with milliseconds
    created_at_ms: int
    clock_synced: bool
    synthetic: bool
    plaintext_len: int
    ciphertext_len: int
    body_sha256: bytes
    header_len: int  # offset of the ephemeral key

    @property
    def packet_len(self) -> int:
        """The whole packet's length as the header declares it."""
        return self.header_len + PUBLIC_KEY_LEN + self.ciphertext_len + SIGNATURE_LEN


@dataclass(frozen=True, slots=True)
class SealedPacket:
    """A sealed packet and what the outbox and the link need to know of it."""

    packet_id: str
    seq: int
    kiosk_id: str
    created_at: str
    data: bytes = field(repr=False)

    def __repr__(self) -> str:
        return (
            f"SealedPacket(packet_id={self.packet_id!r}, seq={self.seq}, kiosk_id={self.kiosk_id!r}, "
            f"created_at={self.created_at!r}, data=<{len(self.data)} bytes>)"
        )


def seal(
    record: EnrollmentRecord,
    *,
    kiosk_id: str,
    seq: int,
    kiosk_key: Ed25519PrivateKey,
    central_public: X25519PublicKey,
    clock_synced: bool,
    synthetic: bool = False,
    packet_id: UUID | None = None,
    created_at: dt.datetime | None = None,
) -> SealedPacket:
    """Encrypt the record to the centre and sign the packet with the kiosk's key.

    ``synthetic`` marks a test resident of a simulated kit; the mark is signed with the header,
    so the centre can keep such packets apart from real residents.

    :raises ValueError: a bad kiosk id, seq, packet id or time (a caller's mistake).
    """
    if not isinstance(record, EnrollmentRecord):
        raise TypeError(f"record must be an EnrollmentRecord, got {type(record).__name__}")
    if not isinstance(kiosk_id, str) or not KIOSK_ID_RE.fullmatch(kiosk_id):
        raise ValueError(f"kiosk id {kiosk_id!r}: expected 1..64 characters of [A-Za-z0-9_-]")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
        raise ValueError(f"seq {seq!r}: expected an integer 0..{MAX_SEQ}")
    pid = packet_id if packet_id is not None else uuid7()
    if not isinstance(pid, UUID) or pid.version != 7 or pid.variant != "specified in RFC 4122":
        raise ValueError(f"packet id {pid}: expected a UUIDv7")
    when = created_at if created_at is not None else dt.datetime.now(dt.UTC)
    if when.tzinfo is None:
        raise ValueError(f"created_at {when!r}: expected a timezone-aware datetime")
    created_ms = (when - _EPOCH) // dt.timedelta(milliseconds=1)
    if not 0 <= created_ms <= MAX_CREATED_MS:
        raise ValueError(f"created_at {when.isoformat()}: expected 1970-01-01 .. 9999-12-31")

    body = record.to_bytes()
    if len(body) > MAX_BODY_BYTES:
        raise ValueError(f"record body of {len(body)} bytes exceeds the {MAX_BODY_BYTES}-byte limit")
    kiosk_bytes = kiosk_id.encode("ascii")
    header = _FIXED.pack(
        MAGIC,
        FORMAT_VERSION,
        (FLAG_CLOCK_SYNCED if clock_synced else 0) | (FLAG_SYNTHETIC if synthetic else 0),
        pid.bytes,
        seq,
        created_ms,
        len(body),
        len(body) + TAG_LEN,
        hashlib.sha256(body).digest(),
        len(kiosk_bytes),
    )
    header += kiosk_bytes

    ephemeral = X25519PrivateKey.generate()
    ephemeral_pub = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    central_pub = central_public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    key, nonce = _body_key(ephemeral.exchange(central_public), pid.bytes, ephemeral_pub, central_pub)
    aad = header + ephemeral_pub
    signed = aad + ChaCha20Poly1305(key).encrypt(nonce, body, aad)
    data = signed + kiosk_key.sign(signed)
    return SealedPacket(
        packet_id=str(pid), seq=seq, kiosk_id=kiosk_id, created_at=_rfc3339(created_ms), data=data
    )


def read_header(data: bytes) -> PacketHeader:
    """Parse and check the header without keys: structure, magic, version, declared lengths.

    :raises PacketError: TRUNCATED, BAD_MAGIC, WRONG_VERSION or MALFORMED.
    """
    data = bytes(data)
    if data[:4] != MAGIC[: len(data)]:
        raise PacketError(
            PacketFault.BAD_MAGIC,
            f"not an e-KTP packet: starts with {data[:4].hex()} instead of {MAGIC.hex()} ('EKTP')",
        )
    if len(data) < 5:
        raise PacketError(PacketFault.TRUNCATED, f"packet truncated: {len(data)} bytes, no format version")
    if data[4] != FORMAT_VERSION:
        raise PacketError(
            PacketFault.WRONG_VERSION,
            f"packet format version {data[4]}: this software reads version {FORMAT_VERSION} only "
            "(upgrade the reader, or the sender is not an e-KTP kiosk of this generation)",
        )
    if len(data) < FIXED_HEADER_LEN:
        raise PacketError(
            PacketFault.TRUNCATED,
            f"packet truncated: {len(data)} bytes, the header alone needs at least {FIXED_HEADER_LEN}",
        )
    (_, version, flags, pid_bytes, seq, created_ms, plain_len, cipher_len, sha, kiosk_len) = (
        _FIXED.unpack_from(data)
    )
    pid = UUID(bytes=pid_bytes)

    def malformed(detail: str, kiosk: str | None = None) -> PacketError:
        return PacketError(
            PacketFault.MALFORMED,
            f"packet {pid}: malformed header: {detail}",
            packet_id=str(pid),
            kiosk_id=kiosk,
        )

    if pid.version != 7 or pid.variant != "specified in RFC 4122":
        raise malformed("packet id is not a UUIDv7")
    if flags & ~KNOWN_FLAGS:
        raise malformed(f"reserved flag bits set (flags 0x{flags:02x})")
    if seq > MAX_SEQ:
        raise malformed(f"seq {seq} above {MAX_SEQ}")
    if not 0 <= created_ms <= MAX_CREATED_MS:
        raise malformed(f"created time {created_ms} ms outside 1970-01-01 .. 9999-12-31")
    if plain_len > MAX_BODY_BYTES:
        raise malformed(f"declared body of {plain_len} bytes exceeds the {MAX_BODY_BYTES}-byte limit")
    if cipher_len != plain_len + TAG_LEN:
        raise malformed(f"ciphertext length {cipher_len} is not body length {plain_len} + {TAG_LEN}")
    if not 1 <= kiosk_len <= MAX_KIOSK_ID:
        raise malformed(f"kiosk id length {kiosk_len} outside 1..{MAX_KIOSK_ID}")
    header_len = FIXED_HEADER_LEN + kiosk_len
    if len(data) < header_len:
        raise PacketError(
            PacketFault.TRUNCATED,
            f"packet {pid}: truncated inside the header ({len(data)} of {header_len} bytes)",
            packet_id=str(pid),
        )
    kiosk_raw = data[FIXED_HEADER_LEN:header_len]
    kiosk_id = kiosk_raw.decode("latin-1")
    if not KIOSK_ID_RE.fullmatch(kiosk_id):
        raise malformed(f"kiosk id {kiosk_id!r} is not 1..64 characters of [A-Za-z0-9_-]")
    header = PacketHeader(
        format_version=version,
        packet_id=str(pid),
        kiosk_id=kiosk_id,
        seq=seq,
        created_at=_rfc3339(created_ms),
        created_at_ms=created_ms,
        clock_synced=bool(flags & FLAG_CLOCK_SYNCED),
        synthetic=bool(flags & FLAG_SYNTHETIC),
        plaintext_len=plain_len,
        ciphertext_len=cipher_len,
        body_sha256=sha,
        header_len=header_len,
    )
    if len(data) < header.packet_len:
        raise PacketError(
            PacketFault.TRUNCATED,
            f"packet {pid} from kiosk {kiosk_id}: truncated: {len(data)} of the {header.packet_len} bytes "
            "its header declares (cut off in transit or in storage)",
            packet_id=str(pid),
            kiosk_id=kiosk_id,
        )
    if len(data) > header.packet_len:
        raise malformed(f"{len(data) - header.packet_len} bytes after the signature", kiosk_id)
    return header


def verify(data: bytes, kiosk_public: Ed25519PublicKey) -> PacketHeader:
    """Check the header and the kiosk's signature, without decrypting (what the centre stores on).

    :raises PacketError: any fault of ``read_header``, or BAD_SIGNATURE.
    """
    data = bytes(data)
    header = read_header(data)
    try:
        kiosk_public.verify(data[-SIGNATURE_LEN:], data[:-SIGNATURE_LEN])
    except InvalidSignature:
        raise PacketError(
            PacketFault.BAD_SIGNATURE,
            f"packet {header.packet_id}: signature does not verify with kiosk {header.kiosk_id}'s key: "
            "tampered in transit or signed by another kiosk",
            packet_id=header.packet_id,
            kiosk_id=header.kiosk_id,
        ) from None
    return header


def open_packet(
    data: bytes, *, kiosk_public: Ed25519PublicKey, central_private: X25519PrivateKey
) -> tuple[PacketHeader, EnrollmentRecord]:
    """Verify the signature, decrypt the body with the centre's key and decode the record.

    :raises PacketError: any fault of ``verify``, WRONG_KEY, BODY_MISMATCH or MALFORMED (bad record).
    """
    data = bytes(data)
    header = verify(data, kiosk_public)
    body = open_body(data, header, central_private)
    where = f"packet {header.packet_id} from kiosk {header.kiosk_id}"
    ids = {"packet_id": header.packet_id, "kiosk_id": header.kiosk_id}
    try:
        record = EnrollmentRecord.from_bytes(body)
    except InvalidRecord as exc:
        raise PacketError(
            PacketFault.MALFORMED, f"{where}: malformed record in the body: {exc}", **ids
        ) from exc
    return header, record


def open_body(data: bytes, header: PacketHeader, central_private: X25519PrivateKey) -> bytes:
    """The decrypted body of ``data`` (whose header ``header`` was read and whose signature was
    verified), checked against the header's length and SHA-256; the record is not decoded.

    :raises PacketError: WRONG_KEY (encrypted to another centre key), BODY_MISMATCH (not the
        header's length or SHA-256), MALFORMED (a low-order ephemeral key)
    """
    where = f"packet {header.packet_id} from kiosk {header.kiosk_id}"
    ids = {"packet_id": header.packet_id, "kiosk_id": header.kiosk_id}
    start = header.header_len
    ephemeral_pub = data[start : start + PUBLIC_KEY_LEN]
    aad = data[: start + PUBLIC_KEY_LEN]
    ciphertext = data[start + PUBLIC_KEY_LEN : len(data) - SIGNATURE_LEN]
    central_pub = central_private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    try:
        shared = central_private.exchange(X25519PublicKey.from_public_bytes(ephemeral_pub))
    except ValueError:  # a low-order point: the shared secret would be all zeros
        raise PacketError(
            PacketFault.MALFORMED, f"{where}: malformed: the ephemeral public key is a low-order point", **ids
        ) from None
    key, nonce = _body_key(shared, UUID(header.packet_id).bytes, ephemeral_pub, central_pub)
    try:
        body = ChaCha20Poly1305(key).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise PacketError(
            PacketFault.WRONG_KEY,
            f"{where}: the body does not decrypt with this centre key: it was encrypted to another "
            "centre key (check which central public key the kiosk holds)",
            **ids,
        ) from None
    if len(body) != header.plaintext_len or hashlib.sha256(body).digest() != header.body_sha256:
        raise PacketError(
            PacketFault.BODY_MISMATCH,
            f"{where}: the decrypted body does not match the header's length and SHA-256: "
            "the kiosk sealed an inconsistent packet",
            **ids,
        )
    return body


def packet_overhead(data: bytes | SealedPacket, record: EnrollmentRecord) -> int:
    """Bytes of the packet beyond the record's raw biometric bytes."""
    size = len(data.data) if isinstance(data, SealedPacket) else len(data)
    return size - record.biometric_bytes()


class _Uuid7Source:
    """UUIDv7 (RFC 9562 section 5.7) with a 12-bit counter in rand_a (section 6.2, method 1).

    Ids from one process are strictly increasing: within a millisecond, and when the wall
    clock steps back, the counter continues from the last id (and carries into the time).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._counter = 0

    def next(self, now_ms: int | None = None) -> UUID:
        ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        ms &= (1 << 48) - 1
        with self._lock:
            if ms > self._last_ms:
                self._last_ms = ms
                self._counter = secrets.randbits(11)  # top bit 0: room to count up
            else:
                self._counter += 1
                if self._counter > 0xFFF:
                    self._last_ms += 1
                    self._counter = 0
            ms, counter = self._last_ms, self._counter
        value = ms << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | secrets.randbits(62)
        return UUID(int=value)


_uuid7_source = _Uuid7Source()


def uuid7() -> UUID:
    """A new UUIDv7: 48-bit unix ms, version 7, 12-bit counter, RFC variant, 62 random bits."""
    return _uuid7_source.next()


def _body_key(shared: bytes, salt: bytes, ephemeral_pub: bytes, central_pub: bytes) -> tuple[bytes, bytes]:
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_LEN + NONCE_LEN,
        salt=salt,
        info=INFO_PREFIX + ephemeral_pub + central_pub,
    ).derive(shared)
    return okm[:KEY_LEN], okm[KEY_LEN:]


def _rfc3339(ms: int) -> str:
    when = _EPOCH + dt.timedelta(milliseconds=ms)
    return f"{when:%Y-%m-%dT%H:%M:%S}.{when.microsecond // 1000:03d}Z"
