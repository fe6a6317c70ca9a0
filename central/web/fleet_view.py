"""The fleet page's table from the store's fleet rows: filters, sort, regions, pages.

Pure functions of the rows (central.fleet.FleetRow) and the query string, so that a page of
10,000 kiosks costs a sort and a slice, not a store query per view.

Query parameters (each checked; a bad one is a 400 naming it):

    offline=1          kiosks whose last status is offline (as `ektp-central fleet --offline`)
    faulty=1           kiosks with a device in fault or absent
    problems=1         kiosks that need someone (central.fleet.judge)
    backlog_hours=N    kiosks whose oldest undelivered packet is older than N hours
    region=CODE        kiosks of that region: 2 digits a province, 4 a regency, 6 a district
    sort=KEY           one of SORTS, worst first; rev=1 reverses it
    page=N             PAGE_ROWS rows a page
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

from central.fleet import FleetRow

PAGE_ROWS = 200
MAX_BACKLOG_HOURS = 24 * 3660.0
REGION_PARAM_RE = re.compile(r"[0-9]{1,6}")
REGION_LEVELS = ((2, "province"), (4, "regency"), (6, "district"))
NO_REGION = "(no region code)"

_LAST = (1, 0.0)  # sorts a missing value after every present one


def _missing_last(value: float | None, *, worst_high: bool) -> tuple[int, float]:
    if value is None:
        return _LAST
    return (0, -value if worst_high else value)


def _text_time(value: str | None) -> tuple[int, str]:
    """Oldest first; never seen (None) before all."""
    return (0, "") if value is None else (1, value)


def _missing(r: FleetRow) -> int:
    return sum(b - a + 1 for a, b in r["gaps"])


SORTS: dict[str, tuple[str, Callable[[FleetRow], Any]]] = {
    "problems": ("needs someone first", lambda r: (not r["problems"], r["region"] or "~", r["kiosk"])),
    "kiosk": ("kiosk id", lambda r: r["kiosk"]),
    "region": ("region", lambda r: (r["region"] or "~", r["kiosk"])),
    "link": ("offline the longest first", lambda r: (r["online"] is True, r["status_ts"] or "", r["kiosk"])),
    "last_seen": ("heard from the longest ago first", lambda r: (_text_time(r["last_seen"]), r["kiosk"])),
    "devices": (
        "faulty, then degraded devices first",
        lambda r: (-len(r["faulty"]), -len(r["degraded"]), r["kiosk"]),
    ),
    "backlog": (
        "most packets waiting first",
        lambda r: (_missing_last(r["backlog"], worst_high=True), r["kiosk"]),
    ),
    "oldest": (
        "oldest undelivered packet first",
        lambda r: (_missing_last(r["oldest_pending_age_s"], worst_high=True), r["kiosk"]),
    ),
    "last_delivery": (
        "delivered the longest ago first",
        lambda r: (_text_time(r["last_delivery"]), r["kiosk"]),
    ),
    "gaps": ("most missing seqs first", lambda r: (-_missing(r), r["kiosk"])),
    "rejected": (
        "most rejected and damaged first",
        lambda r: (-((r["rejected"] or 0) + (r["damaged"] or 0)), r["kiosk"]),
    ),
    "clock": (
        "unsynchronised the longest first",
        lambda r: (r["clock_synchronised"] is not False, -(r["clock_unsynchronised_s"] or 0.0), r["kiosk"]),
    ),
    "disk": (
        "least disk free first",
        lambda r: (_missing_last(r["disk_free_bytes"], worst_high=False), r["kiosk"]),
    ),
    "temp": ("hottest first", lambda r: (_missing_last(r["cpu_temp_c"], worst_high=True), r["kiosk"])),
}
GROUPED_SORTS = frozenset({"problems", "region"})  # sorts under which rows come in region groups


class BadQuery(ValueError):
    """A query parameter the page cannot use; the message names it and what it takes."""


@dataclass(frozen=True, slots=True)
class FleetQuery:
    offline: bool = False
    faulty: bool = False
    problems: bool = False
    backlog_hours: float | None = None
    region: str = ""
    sort: str = "problems"
    rev: bool = False
    page: int = 1

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> FleetQuery:
        """:raises BadQuery: a parameter with a value the page cannot use"""
        flags = {}
        for name in ("offline", "faulty", "problems", "rev"):
            value = params.get(name, "")
            if value not in ("", "0", "1", "on"):
                raise BadQuery(f"{name}={value!r}: expected 1 (or leave it out)")
            flags[name] = value in ("1", "on")
        hours: float | None = None
        if params.get("backlog_hours"):
            try:
                hours = float(params["backlog_hours"])
            except ValueError:
                hours = math.nan
            if not 0 <= hours <= MAX_BACKLOG_HOURS:
                raise BadQuery(
                    f"backlog_hours={params['backlog_hours']!r}: expected hours, 0 to {MAX_BACKLOG_HOURS:g}"
                )
        region = params.get("region", "").strip()
        if region and not REGION_PARAM_RE.fullmatch(region):
            raise BadQuery(
                f"region={region[:20]!r}: expected the first 1-6 digits of a kiosk id (e.g. 32 or 3207)"
            )
        sort = params.get("sort") or "problems"
        if sort not in SORTS:
            raise BadQuery(f"sort={sort[:20]!r}: expected one of {', '.join(SORTS)}")
        page_text = params.get("page") or "1"
        if not page_text.isdigit() or not 1 <= int(page_text) <= 1_000_000:
            raise BadQuery(f"page={page_text[:20]!r}: expected a page number from 1")
        return cls(backlog_hours=hours, region=region, sort=sort, page=int(page_text), **flags)

    def params(self, **changes: Any) -> str:
        """This query as a query string, with ``changes`` (page goes back to 1 unless given)."""
        q = replace(self, **{"page": 1, **changes})
        pairs: list[tuple[str, str]] = []
        for name in ("offline", "faulty", "problems"):
            if getattr(q, name):
                pairs.append((name, "1"))
        if q.backlog_hours is not None:
            pairs.append(("backlog_hours", f"{q.backlog_hours:g}"))
        if q.region:
            pairs.append(("region", q.region))
        if q.sort != "problems":
            pairs.append(("sort", q.sort))
        if q.rev:
            pairs.append(("rev", "1"))
        if q.page != 1:
            pairs.append(("page", str(q.page)))
        return "?" + urlencode(pairs) if pairs else "?"

    @property
    def filtered(self) -> bool:
        return (
            self.offline
            or self.faulty
            or self.problems
            or self.backlog_hours is not None
            or bool(self.region)
        )

    def keeps(self, r: FleetRow) -> bool:
        if self.offline and r["online"] is not False:
            return False
        if self.faulty and not r["faulty"]:
            return False
        if self.problems and not r["problems"]:
            return False
        if self.backlog_hours is not None:
            age = r["oldest_pending_age_s"]
            if age is None or age <= self.backlog_hours * 3600:
                return False
        return not self.region or (r["region"] or "").startswith(self.region)


@dataclass
class Counts:
    """How many kiosks of a group are in each condition."""

    kiosks: int = 0
    online: int = 0
    offline: int = 0
    never_heard: int = 0
    faulty: int = 0
    degraded: int = 0
    backlog: int = 0  # with a backlog older than the problem limit
    problems: int = 0

    def add(self, r: FleetRow, backlog_limit_s: float) -> None:
        self.kiosks += 1
        if r["online"] is True:
            self.online += 1
        elif r["online"] is False:
            self.offline += 1
        else:
            self.never_heard += 1
        self.faulty += bool(r["faulty"])
        self.degraded += bool(r["degraded"])
        age = r["oldest_pending_age_s"]
        self.backlog += age is not None and age > backlog_limit_s
        self.problems += bool(r["problems"])


@dataclass
class RegionSummary:
    code: str  # "" for kiosks without a region code
    level: str  # province, regency, district
    counts: Counts = field(default_factory=Counts)

    @property
    def label(self) -> str:
        return f"{self.level} {self.code}" if self.code else NO_REGION


@dataclass
class Group:
    """A header row in the table: a section (needs someone / well) or a district."""

    title: str
    counts: Counts


@dataclass
class FleetView:
    query: FleetQuery
    total: Counts  # the whole fleet
    shown: Counts  # what the filters keep
    regions: list[RegionSummary]
    region_level: str
    items: list[FleetRow | Group]  # this page: rows, with group headers before each group
    page: int
    pages: int


def region_level(prefix: str) -> tuple[int, str]:
    """The digits and name of the regions below a region filter: provinces, then regencies, then districts."""
    for digits, name in REGION_LEVELS:
        if len(prefix) < digits:
            return digits, name
    return 6, "district"


def build_view(rows: Sequence[FleetRow], query: FleetQuery, *, backlog_problem_hours: float) -> FleetView:
    """The page ``query`` asks for (a page past the last shows the last)."""
    limit_s = backlog_problem_hours * 3600
    total = Counts()
    for r in rows:
        total.add(r, limit_s)
    kept = [r for r in rows if query.keeps(r)]
    shown = Counts()
    digits, level = region_level(query.region)
    regions: dict[str, RegionSummary] = {}
    for r in kept:
        shown.add(r, limit_s)
        code = r["region"][:digits] if r["region"] else ""
        regions.setdefault(code, RegionSummary(code, level)).counts.add(r, limit_s)
    _label, key = SORTS[query.sort]
    kept.sort(key=key, reverse=query.rev)
    pages = max(1, math.ceil(len(kept) / PAGE_ROWS))
    page = min(query.page, pages)
    chunk = kept[(page - 1) * PAGE_ROWS : page * PAGE_ROWS]
    items = _grouped(chunk, kept, query, limit_s) if query.sort in GROUPED_SORTS else list(chunk)
    return FleetView(
        query=query,
        total=total,
        shown=shown,
        regions=sorted(regions.values(), key=lambda s: s.code or "~"),
        region_level=level,
        items=items,
        page=page,
        pages=pages,
    )


def _grouped(
    chunk: Sequence[FleetRow], kept: Sequence[FleetRow], query: FleetQuery, limit_s: float
) -> list[FleetRow | Group]:
    """``chunk`` with a header before each district (and, sorted by problems, each section);
    the header counts the whole group, also the part on other pages."""

    def group_of(r: FleetRow) -> tuple[str, str]:
        section = ("needs someone" if r["problems"] else "well") if query.sort == "problems" else ""
        return section, r["region"] or ""

    counts: dict[tuple[str, str], Counts] = {}
    for r in kept:
        counts.setdefault(group_of(r), Counts()).add(r, limit_s)
    out: list[FleetRow | Group] = []
    current: tuple[str, str] | None = None
    for r in chunk:
        g = group_of(r)
        if g != current:
            section, region = g
            where = (
                f"district {region} (province {region[:2]}, regency {region[:4]})" if region else NO_REGION
            )
            out.append(Group(f"{section.capitalize()}: {where}" if section else where, counts[g]))
            current = g
        out.append(r)
    return out
