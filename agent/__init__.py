"""ektp-agent: the edge agent of the e-KTP recorder kit."""

from __future__ import annotations

__version__ = "0.1.0"
