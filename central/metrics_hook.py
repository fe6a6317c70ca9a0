"""What the consumer tells a metrics registry (central.metrics.CentreMetrics implements it).

Kept apart so that the consumer does not depend on prometheus-client, and a consumer without
metrics calls a no-op.
"""

from __future__ import annotations

from typing import Protocol


class MetricsHook(Protocol):
    def count(self, what: str, n: int = 1) -> None:
        """``what``: stored, duplicate, rejected, damaged, conflict (packets by ingest result), acks
        (ack messages published), health, status (documents recorded), bad_message, store_error."""

    def observe_store(self, operation: str, seconds: float) -> None:
        """How long one store transaction took: ``operation`` "packets" or "fleet"."""


class _NoMetrics:
    def count(self, what: str, n: int = 1) -> None:
        pass

    def observe_store(self, operation: str, seconds: float) -> None:
        pass


def no_metrics() -> MetricsHook:
    return _NoMetrics()
