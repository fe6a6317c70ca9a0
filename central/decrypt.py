"""Proof at the centre that a packet's body opens with the centre's key, without decoding the record.

Ingest calls ``open_body`` on a packet whose signature it has already verified: the
X25519 exchange, HKDF and ChaCha20-Poly1305 open of ``wire.packet`` (docs/protocol.md,
"The enrollment packet") and the body's length and SHA-256 against the header. It does
not verify the signature again nor parse the record (``wire.packet.open_packet`` does
both; decoding the record costs more than decrypting it).
"""

from __future__ import annotations

import hashlib
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from wire.packet import (
    PUBLIC_KEY_LEN,
    SIGNATURE_LEN,
    PacketError,
    PacketFault,
    PacketHeader,
    _body_key,
)


def open_body(data: bytes, header: PacketHeader, central_private: X25519PrivateKey) -> bytes:
    """The decrypted body of ``data`` (whose header is ``header``) after checking it against the header.

    :raises PacketError: WRONG_KEY (encrypted to another centre key or altered), BODY_MISMATCH
        (the body's length or SHA-256 is not the header's), MALFORMED (a low-order ephemeral key)
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
            f"{where}: the body does not decrypt with this centre's key: it was encrypted to another "
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
