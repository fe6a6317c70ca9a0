"""The transfer window: which chunk of which packet goes next, and what the centre's answers mean.

Pure bookkeeping, no I/O (the link publishes and the outbox writes): the link adds the
packets it read, asks ``next_chunk`` for what to publish, and feeds back PUBACKs and the
centre's verified ack results. A packet crosses as chunks (wire.chunk); the centre
answers each with how much of the packet it holds (``partial``), and finally with
``stored``/``duplicate`` (free the packet), ``damaged`` (send it again) or
``rejected``/``conflict`` (kept, for a person).

How much goes at once follows the measured rate at which the centre confirms bytes:

    bytes in flight <= max(MIN_INFLIGHT_CHUNKS x chunk_bytes, rate x INFLIGHT_S)
    chunk size       = clamp(rate x CHUNK_S, chunk_bytes, MAX_CHUNK)

so a 64 kbit/s link carries one packet at a time in small chunks (a cut costs about
two seconds of sending) and the link's keepalive never waits behind a long queue, while
on a fast link the chunk grows to the whole packet and the window fills with packets.
After a reconnect (or a restart) a packet that was partly sent is probed first: the
centre says how much it holds and the transfer resumes from there.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from wire.ack import AckResult, AckStatus
from wire.chunk import Chunk, packet_sha256
from wire.chunk import probe as probe_chunk

MIN_INFLIGHT_CHUNKS = 2
INFLIGHT_S = 2.0  # bytes in flight: about this many seconds of the measured rate
CHUNK_S = 0.5  # a chunk: about this many seconds of the measured rate ...
MAX_CHUNK = 4 * 1024 * 1024  # ... up to this (or the whole packet)
RATE_SPAN_S = 5.0  # the rate is measured over the confirmations of about this long
DAMAGED_RETRY_S = 5.0  # a damaged packet goes again after this, doubling per time
DAMAGED_RETRY_MAX_S = 300.0
MAX_DAMAGED = 8  # then the packet is parked as rejected: its stored bytes are likely bad
NO_SUBSCRIBER_RETRY_S = 1.0  # PUBACK 0x10: nobody consumes yet (a centre restarting)
REFUSED_RETRY_S = 5.0  # any other PUBACK failure code


class Outcome(Enum):
    """What a centre's answer means for the outbox."""

    NONE = "none"  # progress or nothing to write
    DELIVERED = "delivered"
    REFUSED = "refused"  # rejected or conflict: mark rejected with the reason
    DAMAGED = "damaged"  # sent again (counted as an attempt)
    GAVE_UP = "gave_up"  # damaged too often: mark rejected
    OTHER_BYTES = "other_bytes"  # about a packet in the window, but not about its bytes: ignored


@dataclass
class Transfer:
    """One packet on its way: what the centre holds and what is published beyond it."""

    packet_id: str
    seq: int
    data: bytes = field(repr=False)
    sha256: str
    confirmed: int = 0  # bytes the centre said it holds
    next_offset: int = 0  # the next byte to publish
    high_water: int = 0  # the furthest byte ever published (bytes below it that go again are re-sent)
    probing: bool = False  # a probe must go (or is out): nothing else of it until the answer
    probe_out: bool = False
    hold_until: float = 0.0  # after a refusal or damage: nothing of it before this
    last_activity: float = 0.0
    damaged: int = 0

    @property
    def total(self) -> int:
        return len(self.data)

    @property
    def in_flight(self) -> int:
        return max(0, self.next_offset - self.confirmed)


@dataclass(frozen=True, slots=True)
class Sent:
    """A chunk as published: the link maps its MQTT mid to this."""

    packet_id: str
    offset: int
    end: int
    probe: bool


class TransferWindow:
    """The packets being sent, in seq order, and the rate at which the centre confirms bytes."""

    def __init__(
        self,
        *,
        chunk_bytes: int,
        max_packets: int,
        stall_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.chunk_bytes = chunk_bytes
        self.max_packets = max_packets
        self.stall_s = stall_s
        self.clock = clock
        self.max_message: int | None = None  # the broker's limit on one chunk's data, if any
        self.transfers: dict[str, Transfer] = {}  # insertion order = seq order
        self.confirmed_total = 0
        self._samples: deque[tuple[float, int]] = deque()
        self.rate = 0.0  # bytes/s the centre confirms, 0 until measured
        self.damaged = 0
        self.probes = 0

    # ------------------------------------------------------------------ sizing

    def chunk_size(self) -> int:
        size = max(self.chunk_bytes, min(MAX_CHUNK, int(self.rate * CHUNK_S)))
        if self.max_message is not None:
            size = min(size, self.max_message)
        return max(1, size)

    def inflight_limit(self) -> int:
        return max(MIN_INFLIGHT_CHUNKS * self.chunk_size(), int(self.rate * INFLIGHT_S))

    def in_flight(self) -> int:
        """Bytes published and not yet confirmed, a probe that is out counting as one chunk (its
        answer may start the packet's bytes). A probe not yet sent is not in flight: counted, it
        would take the budget that the first chunk of an answered packet needs, and neither
        would ever go (nothing out, so nothing stalls)."""
        probes = sum(1 for t in self.transfers.values() if t.probe_out)
        return sum(t.in_flight for t in self.transfers.values()) + probes * self.chunk_size()

    def packets_wanted(self) -> int:
        """How many more packets to read from the outbox now."""
        room = self.max_packets - len(self.transfers)
        if room <= 0 or self.in_flight() >= self.inflight_limit():
            return 0
        if any(t.next_offset < t.total and not t.probing for t in self.transfers.values()):
            return 0  # bytes of a packet already here still wait: no need for another yet
        if self.chunk_size() >= max((t.total for t in self.transfers.values()), default=0) and self.rate:
            return room  # whole packets per chunk: a fast link, fill the window
        return 1

    # ------------------------------------------------------------------ packets in and chunks out

    def add(self, packet_id: str, seq: int, data: bytes, *, resume: bool) -> Transfer:
        """A packet read from the outbox; ``resume``: it may be partly at the centre already."""
        t = Transfer(packet_id, seq, data, packet_sha256(data), probing=resume, last_activity=self.clock())
        self.transfers[packet_id] = t
        return t

    def next_chunk(self) -> Chunk | None:
        """The next chunk to publish, or None when the window is full or nothing is due.

        Probes first: they are small, outside the byte budget, and each tells where a packet
        resumes; a probe waiting behind another packet's chunks could wait for ever."""
        now = self.clock()
        for t in self.transfers.values():
            if t.probing and not t.probe_out and t.hold_until <= now:
                return probe_chunk(t.packet_id, t.sha256, t.total)
        budget = self.inflight_limit() - self.in_flight()
        for t in self.transfers.values():
            if t.hold_until > now or t.probing:
                continue
            if t.next_offset >= t.total:
                continue
            if budget <= 0:
                return None
            size = min(self.chunk_size(), t.total - t.next_offset)
            return Chunk(
                t.packet_id, t.sha256, t.total, t.next_offset, t.data[t.next_offset : t.next_offset + size]
            )
        return None

    def published(self, chunk: Chunk) -> Sent:
        """``chunk`` went to the broker (paho accepted it)."""
        t = self.transfers[chunk.packet_id]
        now = self.clock()
        if self.in_flight() == 0:  # the link was idle: the rate is measured afresh from here
            self._samples.clear()
            self._samples.append((now, self.confirmed_total))
        t.last_activity = now
        if chunk.probe:
            t.probe_out = True
            self.probes += 1
        else:
            t.next_offset = max(t.next_offset, chunk.end)
            t.high_water = max(t.high_water, chunk.end)
        return Sent(chunk.packet_id, chunk.offset, chunk.end, chunk.probe)

    def refused(self, sent: Sent, *, no_subscribers: bool) -> None:
        """The broker refused the chunk (PUBACK failure code): nobody has it; it goes again later."""
        t = self.transfers.get(sent.packet_id)
        if t is None:
            return
        wait = NO_SUBSCRIBER_RETRY_S if no_subscribers else REFUSED_RETRY_S
        t.hold_until = max(t.hold_until, self.clock() + wait)
        if sent.probe:
            t.probe_out = False
        else:
            t.next_offset = min(t.next_offset, sent.offset)

    # ------------------------------------------------------------------ the centre's answers

    def apply(self, result: AckResult) -> tuple[Outcome, Transfer | None]:
        """A verified ack result about a packet in the window (the caller checks the others)."""
        t = self.transfers.get(result.packet_id)
        if t is None:
            return Outcome.NONE, None
        if t.sha256 != result.sha256:
            return Outcome.OTHER_BYTES, None
        now = self.clock()
        t.last_activity = now
        status = result.status
        if status.delivered:
            self._confirm(t, t.total)
            del self.transfers[t.packet_id]
            return Outcome.DELIVERED, t
        if status.refused:
            del self.transfers[t.packet_id]
            return Outcome.REFUSED, t
        if status is AckStatus.DAMAGED:
            t.damaged += 1
            self.damaged += 1
            t.confirmed = t.next_offset = 0
            t.probing = t.probe_out = False
            if t.damaged > MAX_DAMAGED:
                del self.transfers[t.packet_id]
                return Outcome.GAVE_UP, t
            t.hold_until = now + min(DAMAGED_RETRY_MAX_S, DAMAGED_RETRY_S * 2 ** (t.damaged - 1))
            return Outcome.DAMAGED, t
        # PARTIAL: the centre holds the first ``have`` bytes
        have = min(result.have, t.total)
        if t.probing:
            if not t.probe_out:
                return Outcome.NONE, t  # an answer to an older chunk: wait for the probe's
            t.probing = t.probe_out = False
            t.confirmed = have
            t.next_offset = have
            return Outcome.NONE, t
        if have > t.confirmed:
            self._confirm(t, have)
        t.next_offset = max(t.next_offset, t.confirmed)
        return Outcome.NONE, t

    def _confirm(self, t: Transfer, have: int) -> None:
        gained = max(0, have - t.confirmed)
        t.confirmed = max(t.confirmed, have)
        if gained:
            now = self.clock()
            self.confirmed_total += gained
            self._samples.append((now, self.confirmed_total))
            while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_SPAN_S:
                self._samples.popleft()
            first_t, first_bytes = self._samples[0]
            span = now - first_t
            if span > 0:
                self.rate = (self.confirmed_total - first_bytes) / span

    # ------------------------------------------------------------------ time and connections

    def stalled(self) -> list[Transfer]:
        """Transfers with bytes or a probe out and no answer for ``stall_s``: each is probed again."""
        now = self.clock()
        found = []
        for t in self.transfers.values():
            waiting = t.probe_out or t.in_flight > 0
            if waiting and now - t.last_activity >= self.stall_s:
                t.probing, t.probe_out = True, False
                t.next_offset = t.confirmed
                t.last_activity = now
                found.append(t)
        return found

    def connection_lost(self) -> None:
        """What was in flight may or may not have reached the centre: ask before sending more.

        The rate is measured afresh on the next connection (which may take another path)."""
        self.rate = 0.0
        self._samples.clear()
        for t in self.transfers.values():
            if t.probe_out or t.in_flight > 0 or t.probing:
                t.probing, t.probe_out = True, False
                t.next_offset = t.confirmed
            if not t.damaged:  # a refused chunk may go at once; a damaged packet keeps its backoff
                t.hold_until = 0.0
