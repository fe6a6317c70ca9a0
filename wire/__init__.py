"""The formats both ends speak: the enrollment record, the packet, its chunks, the signed
ack, key files and the names (kiosk ids, topic prefixes) they carry.

The kiosk (``agent``) and the centre (``central``) both import this package; neither
imports the other's service modules.
"""

from __future__ import annotations

__version__ = "0.2.0"
