"""How the pages write times, ages and sizes (Jinja filters). Times are the centre's clock, UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def duration(seconds: float | None) -> str:
    """``45 s``, ``12 min``, ``3 h 20 min``, ``4 d 2 h``; ``-`` for None."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(s // 3600, 24)
    return f"{d} d {h} h" if h else f"{d} d"


def hours(h: float) -> str:
    """A span of hours as people say it: ``6 h``, ``24 h``, ``7 days``."""
    return f"{h:g} h" if h <= 48 else f"{h / 24:g} days"


def ago(text: str | None, now: datetime) -> str:
    """How long before ``now`` the time ``text`` was: ``3 min ago``; ``never`` for None."""
    when = parse_time(text)
    if when is None:
        return "never" if not text else str(text)[:40]
    return f"{duration((now - when).total_seconds())} ago"


def clock(text: str | None) -> str:
    """A stored time as ``2026-11-27 10:00:05 UTC``."""
    when = parse_time(text)
    return "-" if when is None else when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def size(n: float | None) -> str:
    """Bytes in the units people read: ``3.6 MB`` (powers of 1000), ``-`` for None."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def number(n: float | None) -> str:
    """A count with thousands separated (``12,345``), ``-`` for None."""
    return "-" if n is None else f"{n:,}" if isinstance(n, int) else f"{n:,.1f}"


def gaps(ranges: list[list[int]], most: int = 4) -> str:
    """Missing seq ranges: ``3-5, 9 (+2 more)``; empty when there are none."""
    shown = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges[:most])
    return shown + (f" (+{len(ranges) - most} more)" if len(ranges) > most else "")


def missing(ranges: list[list[int]]) -> int:
    return sum(b - a + 1 for a, b in ranges)
