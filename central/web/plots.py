"""Plots of a kiosk's history as inline SVG, drawn on the server: no script, no image files.

Each function takes the points and the window [t0, t1) (epoch seconds, the centre's clock)
and returns the markup of one ``<svg>``. Every mark carries its value in ``data-value``
and a ``<title>`` (the browser shows it on hover). Text is escaped here; the numbers come
from the store, the labels from this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from markupsafe import Markup, escape

WIDTH, HEIGHT = 760, 150
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 10, 22  # margins: the y labels left, the time axis below
LANE_H, LANE_GAP = 18, 6  # the device timeline: one lane per device
STATE_COLOURS = {
    "ok": "#2e7d32",
    "untested": "#9e9e9e",
    "degraded": "#f9a825",
    "absent": "#6d4c41",
    "fault": "#c62828",
}
NO_DATA_COLOUR = "#eeeeee"
LINE_COLOUR, BAR_COLOUR = "#1565c0", "#00838f"


@dataclass(frozen=True, slots=True)
class Window:
    """The time span a plot shows, and how it maps to pixels."""

    t0: float
    t1: float
    width: int = WIDTH

    def x(self, t: float) -> float:
        span = max(self.t1 - self.t0, 1.0)
        inner = self.width - LEFT - RIGHT
        return LEFT + inner * min(max((t - self.t0) / span, 0.0), 1.0)


def line_plot(
    points: Sequence[tuple[float, float | None]],
    window: Window,
    *,
    label: str,
    fmt: Callable[[float], str] = lambda v: f"{v:g}",
    step_s: float = 300,
    least_top: float = 1.0,
    ceiling: Callable[[float], float] | None = None,
) -> Markup:
    """A line over time; a missing value (None) or a silence longer than two steps breaks the line.
    The y axis reaches at least ``least_top``, rounded up by ``ceiling`` (default :func:`nice_ceiling`)."""
    known = [(t, v) for t, v in points if v is not None and window.t0 <= t < window.t1 + step_s]
    top = (ceiling or nice_ceiling)(max([least_top, *(v for _, v in known)]))
    y = _y_scale(top, HEIGHT)
    parts = [*_frame(window, HEIGHT), *_y_axis(window, top, HEIGHT, fmt)]
    if not known:
        parts.append(_no_data(window, HEIGHT))
        return _svg(window, HEIGHT, label, parts, kind="line", n=0)
    runs: list[list[tuple[float, float]]] = [[]]
    last_t: float | None = None
    for t, v in sorted((t, v) for t, v in points if window.t0 <= t < window.t1 + step_s):
        if v is None or (last_t is not None and t - last_t > 2 * step_s):
            runs.append([])
        if v is not None:
            runs[-1].append((t, v))
            last_t = t
    for run in runs:
        if len(run) > 1:
            coords = " ".join(f"{window.x(t):.1f},{y(v):.1f}" for t, v in run)
            parts.append(
                f'<polyline points="{coords}" fill="none" stroke="{LINE_COLOUR}" stroke-width="1.5"/>'
            )
    for t, v in known:
        parts.append(
            f'<circle class="point" cx="{window.x(t):.1f}" cy="{y(v):.1f}" r="2.2" fill="{LINE_COLOUR}"'
            f' data-t="{int(t)}" data-value="{v:g}"><title>{escape(_when(t))}: {escape(fmt(v))}</title></circle>'
        )
    return _svg(window, HEIGHT, label, parts, kind="line", n=len(known))


def bar_plot(
    buckets: Sequence[tuple[float, float]],
    window: Window,
    *,
    step_s: float,
    label: str,
    fmt: Callable[[float], str] = lambda v: f"{v:g}",
) -> Markup:
    """One bar per step that has a value (a step without one has no bar)."""
    shown = [(t, v) for t, v in buckets if window.t0 - step_s < t < window.t1]
    top = nice_ceiling(max((v for _, v in shown), default=0.0))
    y = _y_scale(top, HEIGHT)
    parts = [*_frame(window, HEIGHT), *_y_axis(window, top, HEIGHT, fmt)]
    if not shown:
        parts.append(_no_data(window, HEIGHT))
    for t, v in shown:
        x0, x1 = window.x(t), window.x(t + step_s)
        width = max(x1 - x0 - 0.5, 1.0)
        parts.append(
            f'<rect class="bar" x="{x0:.1f}" y="{y(v):.1f}" width="{width:.1f}"'
            f' height="{max(y(0) - y(v), 0.5):.1f}" fill="{BAR_COLOUR}" data-t="{int(t)}" data-value="{v:g}">'
            f"<title>{escape(_when(t))}: {escape(fmt(v))}</title></rect>"
        )
    return _svg(window, HEIGHT, label, parts, kind="bar", n=len(shown))


def state_timeline(
    steps: Sequence[tuple[float, float, dict[str, str | None]]],
    window: Window,
    *,
    devices: Sequence[str],
    label: str,
) -> Markup:
    """A lane per device, coloured by its worst state in each step (grey where nothing was heard)."""
    height = TOP + len(devices) * (LANE_H + LANE_GAP) + BOTTOM
    parts = [*_frame(window, height)]
    n = 0
    for i, name in enumerate(devices):
        lane_y = TOP + i * (LANE_H + LANE_GAP)
        parts.append(
            f'<text x="{LEFT - 6}" y="{lane_y + LANE_H - 5}" text-anchor="end" class="axis">{escape(name)}</text>'
        )
        parts.append(
            f'<rect x="{LEFT}" y="{lane_y}" width="{window.width - LEFT - RIGHT}" height="{LANE_H}"'
            f' fill="{NO_DATA_COLOUR}"/>'
        )
        for t, span, states in steps:
            state = states.get(name)
            if state is None or t + span <= window.t0 or t >= window.t1:
                continue
            x0, x1 = window.x(t), window.x(t + span)
            colour = STATE_COLOURS.get(state, STATE_COLOURS["fault"])
            parts.append(
                f'<rect class="state" x="{x0:.1f}" y="{lane_y}" width="{max(x1 - x0, 1.0):.1f}" height="{LANE_H}"'
                f' fill="{colour}" data-device="{escape(name)}" data-state="{escape(state)}" data-t="{int(t)}">'
                f"<title>{escape(name)} {escape(state)} in the {_span_words(span)} from {escape(_when(t))}</title></rect>"
            )
            n += 1
    if not steps:
        parts.append(_no_data(window, height))
    return _svg(window, height, label, parts, kind="timeline", n=n)


def legend() -> Markup:
    """The colours of the device states, as HTML (the classes are in style.css)."""
    items = "".join(f'<span class="swatch s-{state}"></span>{state} ' for state in STATE_COLOURS)
    return Markup(f'<span class="legend">{items}<span class="swatch s-none"></span>nothing heard</span>')


def count(v: float) -> str:
    """A count on an axis: whole numbers as such, halves with one decimal."""
    return f"{v:,.0f}" if v == int(v) else f"{v:,.1f}"


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above ``value`` (1 for nothing)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 2.5, 5, 10):
        if value <= m * power:
            return float(m * power)
    return float(10 * power)


DURATION_TOPS_S = (60, 120, 300, 600, 900, 1800, 3600, 7200, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400)


def nice_duration(seconds: float) -> float:
    """The smallest round span at or above ``seconds`` (1 min, 2 min, 5 min ... 1 h, 2 h ... 1 d), then whole weeks."""
    for top in DURATION_TOPS_S:
        if seconds <= top:
            return float(top)
    return float(math.ceil(seconds / (7 * 86400)) * 7 * 86400)


def time_ticks(t0: float, t1: float, most: int = 8) -> list[float]:
    """Round times (whole hours, or minutes for a short window) between t0 and t1, at most ``most``."""
    for step in (
        300,
        600,
        900,
        1800,
        3600,
        2 * 3600,
        3 * 3600,
        6 * 3600,
        12 * 3600,
        86400,
        2 * 86400,
        7 * 86400,
    ):
        if (t1 - t0) / step <= most:
            break
    first = math.ceil(t0 / step) * step
    return [float(t) for t in range(int(first), int(t1) + 1, step)]


# ----------------------------------------------------------------------------- pieces


def _svg(window: Window, height: int, label: str, parts: list[str], *, kind: str, n: int) -> Markup:
    body = "".join(parts)
    return Markup(
        f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {window.width} {height}"'
        f' width="{window.width}" height="{height}" role="img" aria-label="{escape(label)}"'
        f' data-kind="{kind}" data-points="{n}"><title>{escape(label)}</title>{body}</svg>'
    )


def _frame(window: Window, height: int) -> list[str]:
    """The plot area's border and the time axis below it."""
    bottom = height - BOTTOM
    out = [
        f'<rect x="{LEFT}" y="{TOP}" width="{window.width - LEFT - RIGHT}" height="{bottom - TOP}"'
        ' fill="none" stroke="#bbb"/>'
    ]
    long_window = window.t1 - window.t0 > 2 * 86400
    for t in time_ticks(window.t0, window.t1):
        x = window.x(t)
        text = datetime.fromtimestamp(t, UTC).strftime("%d %b %H:%M" if long_window else "%H:%M")
        out.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#888"/>')
        out.append(f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle" class="axis">{text}</text>')
    return out


def _y_axis(window: Window, top: float, height: int, fmt: Callable[[float], str]) -> list[str]:
    y = _y_scale(top, height)
    out = []
    ticks = (0.0, top / 2, top) if fmt(top / 2) not in (fmt(0.0), fmt(top)) else (0.0, top)
    for v in ticks:
        out.append(
            f'<line x1="{LEFT}" y1="{y(v):.1f}" x2="{window.width - RIGHT}" y2="{y(v):.1f}" stroke="#e3e3e3"/>'
            f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end" class="axis">{escape(fmt(v))}</text>'
        )
    return out


def _y_scale(top: float, height: int) -> Callable[[float], float]:
    bottom = height - BOTTOM
    return lambda v: bottom - (bottom - TOP - 4) * (v / top if top else 0.0)


def _no_data(window: Window, height: int) -> str:
    return (
        f'<text x="{(LEFT + window.width - RIGHT) / 2:.0f}" y="{(TOP + height - BOTTOM) / 2 + 4:.0f}"'
        ' text-anchor="middle" class="nodata">nothing recorded in this period</text>'
    )


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _span_words(span: float) -> str:
    return "hour" if span >= 3600 else f"{span / 60:g} minutes"
