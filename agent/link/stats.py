"""The link's counters, as health shows them (``link`` in the health document)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LinkStats:
    connected: bool = False
    reconnects: int = 0
    connection: int = 0
    last_error: str = ""
    connected_since: float | None = None
    receive_maximum: int | None = None
    maximum_packet_size: int | None = None
    in_flight: int = 0  # packets in the transfer window
    in_flight_peak: int = 0  # the most packets ever in the window at once
    in_flight_bytes: int = 0  # published and not yet confirmed by the centre
    rate_bytes_per_s: int = 0  # the rate at which the centre confirms bytes, as measured
    chunk_bytes: int = 0  # the chunk size now in use
    damaged: int = 0  # packets the centre received damaged (sent again)
    probes: int = 0  # "what do you hold?" questions to the centre (resumes)
    awaiting_puback: int = 0  # QoS 1 publishes of any kind the broker has not PUBACKed yet
    awaiting_puback_peak: int = 0
    published: int = 0
    republished: int = 0
    refused_pubacks: int = 0
    # enrollment publishes the broker refused (a PUBACK failure code: its ACL, a quota) since the
    # last one it took, the reason of the last and its topic; and those it took without a
    # subscriber to hand them to (0x10: no centre consumes), since the last one it handed on
    refused_in_a_row: int = 0
    last_refused: str = ""
    refused_topic: str = ""
    unconsumed_in_a_row: int = 0
    outbox_errors: int = 0
    # acks or results that changed nothing, by reason: bad-signature, wrong-kiosk, other-bytes,
    # unknown-packet, replayed (a second final answer about a finished packet), ...
    ignored_acks: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "reconnects": self.reconnects,
            "connection": self.connection,
            "in_flight": self.in_flight,
            "in_flight_bytes": self.in_flight_bytes,
            "awaiting_puback": self.awaiting_puback,
            "rate_bytes_per_s": self.rate_bytes_per_s,
            "chunk_bytes": self.chunk_bytes,
            "damaged": self.damaged,
            "probes": self.probes,
            "published": self.published,
            "republished": self.republished,
            "refused_pubacks": self.refused_pubacks,
            "refused_in_a_row": self.refused_in_a_row,
            "last_refused": self.last_refused,
            "refused_topic": self.refused_topic,
            "unconsumed_in_a_row": self.unconsumed_in_a_row,
            "ignored_acks": sum(self.ignored_acks.values()),
            "ignored_acks_by_reason": dict(sorted(self.ignored_acks.items())),
            "broker_receive_maximum": self.receive_maximum,
            "broker_maximum_packet_size": self.maximum_packet_size,
            "last_error": self.last_error,
        }
