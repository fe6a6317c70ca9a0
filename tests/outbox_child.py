"""Signed fake packets for the outbox tests, and the child process the crash test kills.

Layout of a fake packet (big-endian)::

    b"OBX1" | seq u64 | packet_id 16 bytes | body_len u32 | body | Ed25519 signature (64)

Run as ``python -m tests.outbox_child DB SEED KEY_HEX [COUNT]``: opens the outbox, prints
``ready``, then commits packets (forever, or COUNT of them and exits 0), printing
``C <packet_id> <seq>`` after each commit returns and ``D <packet_id>`` after each
mark_delivered returns.
"""

from __future__ import annotations

import functools
import random
import struct
import sys
import uuid
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MAGIC = b"OBX1"
_HEADER = struct.Struct(">4sQ16sI")
SIG_LEN = 64
CREATED_AT = "2026-11-27T10:00:00Z"


@dataclass(frozen=True, slots=True)
class FakePacket:
    """A Sealable: what the real packet module hands to Outbox.commit."""

    packet_id: str
    created_at: str
    data: bytes


def seal(key: Ed25519PrivateKey, seq: int, packet_id: str, body: bytes) -> FakePacket:
    """A signed packet carrying seq and packet_id in its header."""
    signed = _HEADER.pack(MAGIC, seq, uuid.UUID(packet_id).bytes, len(body)) + body
    return FakePacket(packet_id, CREATED_AT, signed + key.sign(signed))


def verify(public: Ed25519PublicKey, data: bytes) -> tuple[int, str, bytes]:
    """(seq, packet_id, body) of a packet whose signature verifies; raises otherwise."""
    signed, signature = data[:-SIG_LEN], data[-SIG_LEN:]
    public.verify(signature, signed)  # raises InvalidSignature
    magic, seq, raw_id, length = _HEADER.unpack_from(signed)
    body = signed[_HEADER.size :]
    if magic != MAGIC or len(body) != length:
        raise ValueError("bad fake packet layout")
    return seq, str(uuid.UUID(bytes=raw_id)), body


def key_from_hex(key_hex: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key_hex))


def main(argv: list[str]) -> int:
    from agent.outbox import Outbox

    db, seed, key_hex = argv[0], int(argv[1]), argv[2]
    count = int(argv[3]) if len(argv) > 3 else None
    key = key_from_hex(key_hex)
    rng = random.Random(seed)
    out = sys.stdout
    outbox = Outbox(db)
    out.write("ready\n")
    out.flush()
    while count is None or count > 0:
        if count is not None:
            count -= 1
        body = rng.randbytes(rng.randint(10_000, 50_000))
        packet_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        receipt = outbox.commit(functools.partial(seal, key, packet_id=packet_id, body=body))
        out.write(f"C {receipt.packet_id} {receipt.seq}\n")
        out.flush()
        if rng.random() < 0.7:  # drain a little, so frees and vacuums are killed too
            batch = outbox.next_batch(0, 2)
            outbox.mark_sent([p.packet_id for p in batch])
            if batch and outbox.mark_delivered([batch[0].packet_id]) == 1:
                out.write(f"D {batch[0].packet_id}\n")
                out.flush()
            if len(batch) > 1:
                outbox.requeue([batch[1].packet_id])
    outbox.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
