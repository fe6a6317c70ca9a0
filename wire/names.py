"""Names both ends check: kiosk ids and MQTT topic prefixes."""

from __future__ import annotations

import re

KIOSK_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
TOPIC_PREFIX_RE = re.compile(r"[A-Za-z0-9_./-]{1,128}")
