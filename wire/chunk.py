"""A piece of a packet on its way to the centre (the `enrollment` topic's payload, protocol 2).

A packet crosses the link as one or more chunks; the centre keeps the chunks durably
until it holds the whole packet, so a cut costs at most what was in flight. Byte layout
(big-endian), also in docs/protocol.md::

    off  size  field
    0    4     magic b"EKTC"
    4    1     format version (2)
    5    1     flags: bit 0 = probe (no data: "what do you hold of this packet?"), bits 1..7 zero
    6    16    packet id (UUID bytes)
    22   32    SHA-256 of the whole packet
    54   4     total packet length T (u32, 1 .. MAX_PACKET_BYTES)
    58   4     offset O of this chunk's data in the packet (u32)
    62   N     data: packet bytes O .. O+N (O + N <= T; N = 0 for a probe)

A chunk with O = 0 and N = T carries the whole packet. Nothing in a chunk is trusted:
the centre authenticates the packet it reassembles (its SHA-256, then the kiosk's
signature) before it stores or acknowledges it.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass, field

MAGIC = b"EKTC"
VERSION = 2
FLAG_PROBE = 0x01
MAX_PACKET_BYTES = 65 * 1024 * 1024  # the largest packet body (64 MiB) and room for its envelope
_HEAD = struct.Struct(">4sBB16s32sII")
HEAD_LEN = _HEAD.size  # 62


class ChunkError(ValueError):
    """Bytes on the enrollment topic that are not a well-formed chunk."""


@dataclass(frozen=True, slots=True)
class Chunk:
    packet_id: str
    sha256: str  # hex, of the whole packet
    total: int
    offset: int
    data: bytes = field(repr=False)
    probe: bool = False

    @property
    def end(self) -> int:
        return self.offset + len(self.data)

    @property
    def whole(self) -> bool:
        """This chunk carries the whole packet."""
        return self.offset == 0 and len(self.data) == self.total

    def to_bytes(self) -> bytes:
        return (
            _HEAD.pack(
                MAGIC,
                VERSION,
                FLAG_PROBE if self.probe else 0,
                uuid.UUID(self.packet_id).bytes,
                bytes.fromhex(self.sha256),
                self.total,
                self.offset,
            )
            + self.data
        )


def packet_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunk_of(packet_id: str, sha256: str, data: bytes, offset: int, size: int) -> Chunk:
    """The chunk of ``data`` (a whole packet) that starts at ``offset`` and holds at most ``size`` bytes."""
    return Chunk(packet_id, sha256, len(data), offset, data[offset : offset + size])


def probe(packet_id: str, sha256: str, total: int) -> Chunk:
    return Chunk(packet_id, sha256, total, 0, b"", probe=True)


def parse_chunk(payload: bytes) -> Chunk:
    """:raises ChunkError: not a chunk of this format, or its fields do not add up"""
    if len(payload) < HEAD_LEN:
        raise ChunkError(f"chunk of {len(payload)} bytes is shorter than its {HEAD_LEN}-byte head")
    magic, version, flags, pid, sha, total, offset = _HEAD.unpack_from(payload)
    if magic != MAGIC:
        raise ChunkError(f"not an e-KTP chunk: starts with {magic.hex()} instead of {MAGIC.hex()} ('EKTC')")
    if version != VERSION:
        raise ChunkError(f"chunk format version {version}: this software reads version {VERSION}")
    if flags & ~FLAG_PROBE:
        raise ChunkError(f"chunk has reserved flag bits set (0x{flags:02x})")
    data = bytes(payload[HEAD_LEN:])
    is_probe = bool(flags & FLAG_PROBE)
    if not 1 <= total <= MAX_PACKET_BYTES:
        raise ChunkError(f"chunk declares a {total}-byte packet, outside 1 .. {MAX_PACKET_BYTES}")
    if is_probe and (data or offset):
        raise ChunkError("a probe chunk carries data or an offset")
    if not is_probe and (not data or offset + len(data) > total):
        raise ChunkError(f"chunk of {len(data)} bytes at offset {offset} does not fit a {total}-byte packet")
    return Chunk(str(uuid.UUID(bytes=pid)), sha.hex(), total, offset, data, probe=is_probe)


def covered_prefix(spans: list[tuple[int, int]]) -> int:
    """How many bytes from the start ``(offset, length)`` spans cover without a gap (they may overlap)."""
    have = 0
    for offset, length in sorted(spans):
        if offset > have:
            break
        have = max(have, offset + length)
    return have
