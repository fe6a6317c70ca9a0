"""The MQTT link: status with a Last Will, retained health, and the drain of the outbox.

    session.py   one paho client per connection, its Will and status, the reconnect backoff
    transfer.py  the window of chunks, their size, and what the centre's answers mean
    drain.py     ``Link``: the connection's life, the outbox fed through the window, acks, health
    stats.py     the counters health shows

One ``Link`` owns the MQTT connection. Each connection attempt gets a fresh paho client
(with paho's own reconnect off, and the Will carrying this connection's counter), so
paho's in-memory queue never carries anything across a reconnect: the outbox is the
only durable queue. paho callbacks run on its network thread; they only put events on
the core's queue (``loop.call_soon_threadsafe``) and never block or raise.

A packet crosses the link in chunks (wire.chunk, protocol 2) that the centre keeps
durably; the window of chunks, their size and the centre's answers are the business of
agent.link.transfer. In the outbox:

    pending --first chunk PUBACKed--> sent --ack stored/duplicate, same SHA-256--> delivered
    pending|sent --ack rejected/conflict, same SHA-256--> rejected (kept; ``ektp-agent resubmit``)
    ack damaged: the packet goes again from its start (attempts + 1), with backoff
    PUBACK failure code: that chunk goes again after a pause (0x10, nobody consuming: soon)
    no answer within ack_timeout_s, or a reconnect: the centre is asked what it holds (probe)

Every QoS 1 publish (chunks, status, health) awaiting its PUBACK counts against the
broker's Receive Maximum, and a chunk is never larger than the broker's Maximum Packet
Size. An outbox call that fails is logged, shown in health (``link.last_error``) and
tried again after OUTBOX_RETRY_S; nothing in the link ends ``run()`` but ``stop()``.
"""

from __future__ import annotations

from agent.link.drain import Link
from agent.link.stats import LinkStats

__all__ = ["Link", "LinkStats"]
