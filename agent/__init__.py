"""ektp-agent: the edge agent of the e-KTP recorder kit."""

from __future__ import annotations

from wire import __version__

__all__ = ["__version__"]
