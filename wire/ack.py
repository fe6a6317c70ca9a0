"""The centre's signed acknowledgement of packets and of their transfer (the `ack` topic's payload).

Byte layout (big-endian), documented in docs/protocol.md:

    offset  size  field
    0       4     magic b"EKTA"
    4       1     format version (2)
    5       4     body length N (<= MAX_BODY)
    9       N     body: UTF-8 JSON {"kiosk": str, "issued_at": RFC 3339 str,
                  "results": [{"packet_id": str, "sha256": 64 hex digits, "status": str,
                               "reason": str, "have": int}, ...]}
    9+N     64    Ed25519 signature, by the centre's signing key, over bytes 0 .. 9+N

Each result names the kiosk (the body's), the packet id and the SHA-256 of the exact
packet bytes it is about: a kiosk acts on a result only when that hash is the one of the
packet it holds. ``status``:

    stored     newly stored in the central store             the kiosk may free its copy
    duplicate  these bytes were already stored               the kiosk may free its copy
    partial    the centre holds the first ``have`` bytes     the kiosk sends from ``have`` on
    damaged    the bytes did not authenticate (cut, flipped  the kiosk sends them again
               bit): nothing of them is kept
    rejected   authenticated (or from an unregistered kiosk) kept on the kiosk, resubmittable
               and refused on policy; quarantined
    conflict   other bytes are stored under this kiosk and   kept on the kiosk, resubmittable
               packet id; these are quarantined

An ack is untrusted input on the kiosk: anything that fails any check raises
``AckError`` naming the reason, and the caller logs it and deletes nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import struct
import uuid
from dataclasses import dataclass
from enum import StrEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MAGIC = b"EKTA"
VERSION = 2
MAX_BODY = 1 << 20  # a batch of ~10,000 results; anything larger is garbage
MAX_RESULTS = 10_000
_HEAD = struct.Struct(">4sBI")
SIG_LEN = 64


class AckStatus(StrEnum):
    STORED = "stored"  # newly stored in the central store
    DUPLICATE = "duplicate"  # these bytes were stored before: delivered all the same
    PARTIAL = "partial"  # the centre holds the first ``have`` bytes of the transfer
    DAMAGED = "damaged"  # did not authenticate (damaged in transit): send again
    REJECTED = "rejected"  # authenticated and refused on policy, or an unregistered kiosk: quarantined
    CONFLICT = "conflict"  # other bytes are stored under this kiosk and packet id: quarantined

    @property
    def delivered(self) -> bool:
        """The centre holds exactly these bytes: the kiosk may free its copy."""
        return self in (AckStatus.STORED, AckStatus.DUPLICATE)

    @property
    def refused(self) -> bool:
        """Refused for good until a person acts (``ektp-agent resubmit`` after the fix)."""
        return self in (AckStatus.REJECTED, AckStatus.CONFLICT)


SHA256_HEX_LEN = 64


@dataclass(frozen=True, slots=True)
class AckResult:
    packet_id: str
    sha256: str  # hex SHA-256 of the exact packet bytes this result is about
    status: AckStatus
    reason: str = ""
    have: int = 0  # PARTIAL: bytes of the packet the centre holds from its start


@dataclass(frozen=True, slots=True)
class Ack:
    kiosk: str
    issued_at: str
    results: tuple[AckResult, ...]


class AckError(ValueError):
    """An ack payload that must be ignored; ``reason`` is a short machine word, the message says more."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def sign_ack(
    kiosk: str, results: list[AckResult], key: Ed25519PrivateKey, *, issued_at: str | None = None
) -> bytes:
    """The centre's side: encode and sign an ack for ``kiosk``."""
    issued = issued_at or dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    body = json.dumps(
        {
            "kiosk": kiosk,
            "issued_at": issued,
            "results": [
                {
                    "packet_id": r.packet_id,
                    "sha256": r.sha256,
                    "status": r.status.value,
                    "reason": r.reason,
                    "have": r.have,
                }
                for r in results
            ],
        },
        separators=(",", ":"),
    ).encode()
    signed = _HEAD.pack(MAGIC, VERSION, len(body)) + body
    return signed + key.sign(signed)


def verify_ack(payload: bytes, *, key: Ed25519PublicKey, kiosk: str) -> Ack:
    """The kiosk's side: check everything about an ack meant for ``kiosk``. :raises AckError:"""
    if len(payload) < _HEAD.size + SIG_LEN:
        raise AckError("truncated", f"ack of {len(payload)} bytes is shorter than any valid ack")
    magic, version, length = _HEAD.unpack_from(payload)
    if magic != MAGIC:
        raise AckError("bad-magic", "payload on the ack topic is not an ektp ack (bad magic)")
    if version != VERSION:
        raise AckError("wrong-version", f"ack format version {version}, this agent reads version {VERSION}")
    if length > MAX_BODY or len(payload) != _HEAD.size + length + SIG_LEN:
        raise AckError("bad-length", f"ack declares a {length}-byte body in a {len(payload)}-byte payload")
    signed, signature = payload[: _HEAD.size + length], payload[_HEAD.size + length :]
    try:
        key.verify(signature, signed)
    except InvalidSignature:
        raise AckError(
            "bad-signature", "ack signature does not verify with the centre's key: forged or corrupted"
        ) from None
    try:
        doc = json.loads(signed[_HEAD.size :])
        ack = Ack(
            kiosk=str(doc["kiosk"]),
            issued_at=str(doc["issued_at"]),
            results=tuple(_result(r) for r in doc["results"][:MAX_RESULTS]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise AckError("malformed", f"signed ack body is malformed: {exc}") from exc
    if ack.kiosk != kiosk:
        raise AckError("wrong-kiosk", f"ack is for kiosk {ack.kiosk!r}, not this kiosk {kiosk!r}")
    return ack


def _result(raw: object) -> AckResult:
    if not isinstance(raw, dict):
        raise TypeError("result is not an object")
    packet_id = str(uuid.UUID(str(raw["packet_id"])))
    sha = str(raw["sha256"]).lower()
    if len(sha) != SHA256_HEX_LEN or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError(f"sha256 {sha[:80]!r} is not 64 hex digits")
    have = raw.get("have", 0)
    if not isinstance(have, int) or isinstance(have, bool) or have < 0:
        raise ValueError(f"have {have!r} is not a whole number of bytes")
    return AckResult(packet_id, sha, AckStatus(raw["status"]), str(raw.get("reason", ""))[:500], have)
