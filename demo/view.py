"""What the demo (`python -m demo`) shows: the live view on a terminal, plain progress
lines otherwise, and the closing summary.

Everything here renders a ``Snapshot``, plain data that ``demo.state`` copies out of its
state under its lock; nothing here touches processes, files or the network.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

STATE_STYLE = {"ok": "green", "degraded": "yellow", "fault": "bold red", "absent": "red"}
DEVICE_ORDER = ("fingerprint", "signature", "iris", "camera")
EVENTS_SHOWN = 8


@dataclass(frozen=True, slots=True)
class Event:
    at_s: float  # seconds since the demo started
    text: str
    style: str = ""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One moment of the demo, as the view shows it."""

    elapsed_s: float
    phase: str  # "starting", "running", "draining", "stopping", "stopped"
    kiosk_id: str
    data_dir: str  # as the user should read it (relative to the working directory when inside it)
    duration_s: float | None = None  # it stops by itself then (None: at Ctrl-C)
    # enrolled, last_seq, pending* and centre_stored come from one consistent reading
    # (demo.state): enrolled - pending <= centre_stored <= enrolled
    enrolled: int = 0
    enroll_failures: int = 0
    last_seq: int | None = None
    next_enroll_in_s: float | None = None
    service: str | None = None  # "running" / "stopped" / None before the first status
    pending: int | None = None
    pending_bytes: int | None = None
    oldest_pending_age_s: float | None = None
    rejected: int = 0
    link_connected: bool | None = None
    reconnects: int | None = None
    link_error: str = ""
    devices: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (state, detail)
    centre_stored: int | None = None
    centre_connected: bool | None = None
    broker_port: int | None = None
    broker_state: str = "starting"  # "up", "cut", "stopped", "starting"
    cut_in_s: float | None = None  # the next cut, while up
    restore_in_s: float | None = None  # the restore, while cut
    cuts_done: int = 0
    events: tuple[Event, ...] = ()


# ----------------------------------------------------------------------------- formatting


def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # not reached


def clock(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 60}:{s % 60:02d}"


def stamp(at_s: float) -> str:
    return f"[{at_s:6.1f}s]"


# ----------------------------------------------------------------------------- the live view


def render(s: Snapshot) -> RenderableType:
    """The whole live view: kiosk and broker/centre side by side, devices, events."""
    top = Table.grid(expand=True, padding=(0, 1))
    top.add_column(ratio=1)
    top.add_column(ratio=1)
    top.add_row(_kiosk_panel(s), Group(_broker_panel(s), _centre_panel(s)))
    phase = {
        "starting": "[yellow]starting[/]",
        "running": "[green]running[/]",
        "draining": "[yellow]draining the backlog before stopping[/]",
        "stopping": "[yellow]stopping[/]",
        "stopped": "stopped",
    }.get(s.phase, s.phase)
    until = f" of {clock(s.duration_s)}" if s.duration_s is not None else ""
    title = f"[bold]e-KTP recorder kit demo[/]  kiosk {s.kiosk_id}  {phase} {clock(s.elapsed_s)}{until}"
    caption = f"data in {s.data_dir} (wiped at start), logs in {s.data_dir}/logs  ·  Ctrl-C stops"
    return Panel(
        Group(top, _devices_panel(s), _events_panel(s)),
        title=title,
        title_align="left",
        subtitle=caption,
        subtitle_align="left",
        border_style="blue",
    )


def _kv() -> Table:
    t = Table.grid(padding=(0, 1))
    t.add_column(style="dim", no_wrap=True)
    t.add_column()
    return t


def _kiosk_panel(s: Snapshot) -> Panel:
    t = _kv()
    enrolled = f"[bold]{s.enrolled}[/]"
    if s.last_seq is not None:
        enrolled += f"  (last seq {s.last_seq})"
    if s.enroll_failures:
        enrolled += f"  [red]{s.enroll_failures} failed[/]"
    t.add_row("enrolled", enrolled)
    if s.next_enroll_in_s is not None:
        t.add_row("next in", f"{s.next_enroll_in_s:.0f} s")
    if s.pending is None:
        backlog = "[dim]?[/]"
    elif s.pending == 0 and not s.rejected:
        backlog = "[green]0[/] (all delivered)"
    elif s.pending == 0:
        backlog = "[green]0[/]"
    else:
        backlog = f"[bold yellow]{s.pending}[/] packets, {human_bytes(s.pending_bytes)}"
        if s.oldest_pending_age_s is not None:
            backlog += f", oldest {s.oldest_pending_age_s:.0f} s"
    t.add_row("backlog", backlog)
    if s.rejected:
        t.add_row("rejected", f"[bold red]{s.rejected}[/] by the centre (kept on the kiosk)")
    if s.service == "stopped":
        link = "[dim]-[/]"
    elif s.link_connected is None:
        link = "[dim]?[/]"
    elif s.link_connected:
        link = "[green]connected[/]"
    else:
        link = "[bold red]down[/]"
    if s.reconnects is not None:
        link += f"  reconnects {s.reconnects}"
    t.add_row("link", link)
    if s.link_connected is False and s.link_error and s.service != "stopped":
        t.add_row("", Text(" ".join(s.link_error.split()), style="dim", no_wrap=True, overflow="ellipsis"))
    service = {"running": "[green]running[/]", "stopped": "stopped", None: "[dim]starting[/]"}.get(
        s.service, f"[red]{s.service}[/]"
    )
    t.add_row("service", service)
    return Panel(t, title="kiosk (ektp-agent)", title_align="left")


def _broker_panel(s: Snapshot) -> Panel:
    where = f"127.0.0.1:{s.broker_port}" if s.broker_port else "?"
    if s.broker_state == "up":
        text = f"[green]up[/] on {where}"
        if s.cut_in_s is not None:
            text += f"\ncut in {s.cut_in_s:.0f} s"
    elif s.broker_state == "cut":
        text = "[bold red]CUT[/]"
        if s.restore_in_s is not None:
            text += f", restored in {s.restore_in_s:.0f} s"
        text += "\nthe kiosk keeps enrolling offline"
    else:
        text = f"[dim]{s.broker_state}[/]"
    if s.cuts_done:
        text += f"\n[dim]cuts so far: {s.cuts_done}[/]"
    return Panel(text, title="broker (mosquitto)", title_align="left")


def _centre_panel(s: Snapshot) -> Panel:
    if s.centre_stored is None:
        text = "[dim]?[/]"
    else:
        text = f"stored [bold]{s.centre_stored}[/] of {s.enrolled} enrolled"
    if s.phase != "stopped" and s.centre_connected is not None:
        text += "\nbroker link " + ("[green]connected[/]" if s.centre_connected else "[red]retrying[/]")
    return Panel(text, title="centre (ektp-central)", title_align="left")


def _devices_panel(s: Snapshot) -> Panel:
    t = Table.grid(padding=(0, 2))
    names = [n for n in DEVICE_ORDER if n in s.devices] + sorted(set(s.devices) - set(DEVICE_ORDER))
    if not names:
        return Panel("[dim]waiting for the first status[/]", title="devices", title_align="left")
    cells = []
    for name in names:
        state, _ = s.devices[name]
        cells.append(f"{name} [{STATE_STYLE.get(state, '')}]{state}[/]")
    for _ in names:
        t.add_column(no_wrap=True)
    t.add_row(*cells)
    rows: list[RenderableType] = [t]
    for name in names:
        state, detail = s.devices[name]
        if state != "ok" and detail:
            rows.append(Text(f"{name}: {_short(detail, 70)}", style=STATE_STYLE.get(state, "")))
    return Panel(Group(*rows), title="devices", title_align="left")


def _events_panel(s: Snapshot) -> Panel:
    t = Table.grid(padding=(0, 1))
    t.add_column(style="dim", no_wrap=True, justify="right")
    t.add_column()
    for e in s.events[-EVENTS_SHOWN:]:
        t.add_row(f"{e.at_s:.1f}s", Text(e.text, style=e.style))
    for _ in range(EVENTS_SHOWN - min(len(s.events), EVENTS_SHOWN)):
        t.add_row("", "")
    return Panel(t, title="events", title_align="left")


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


@contextlib.contextmanager
def quiet_terminal() -> Iterator[None]:
    """No echo of typed keys (a "^C" would tear the live view) while the view runs."""
    import termios

    try:
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
    except (termios.error, OSError, ValueError):  # stdin is not a terminal
        yield
        return
    quiet = list(saved)
    quiet[3] &= ~(termios.ECHO | termios.ECHOCTL)
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


# ----------------------------------------------------------------------------- plain mode


def plain_line(s: Snapshot) -> str:
    """One progress line for a pipe or a CI log."""
    if s.pending is None:
        backlog = "?"
    else:
        backlog = f"{s.pending} ({human_bytes(s.pending_bytes)}"
        if s.pending and s.oldest_pending_age_s is not None:
            backlog += f", oldest {s.oldest_pending_age_s:.0f} s"
        backlog += ")"
    link = "?" if s.link_connected is None else ("up" if s.link_connected else "down")
    devices = ",".join(f"{n}={st}" for n, (st, _) in s.devices.items() if st != "ok") or (
        "all ok" if s.devices else "?"
    )
    broker = s.broker_state
    if s.broker_state == "cut" and s.restore_in_s is not None:
        broker += f" (restored in {s.restore_in_s:.0f} s)"
    centre = "?" if s.centre_stored is None else str(s.centre_stored)
    if s.centre_connected is False:
        centre += " (centre reconnecting)"
    return (
        f"{stamp(s.elapsed_s)} enrolled {s.enrolled}, backlog {backlog}, link {link}"
        f" (reconnects {s.reconnects if s.reconnects is not None else '?'}), centre stored {centre},"
        f" broker {broker}, devices {devices}"
    )


def plain_event(e: Event) -> str:
    return f"{stamp(e.at_s)} {e.text}"


# ----------------------------------------------------------------------------- the summary


def summary_lines(doc: dict[str, object]) -> list[str]:
    """The closing summary in words (the caller prints the JSON object after it)."""
    enrolled = doc["enrolled"]
    delivered = doc["delivered"]
    lines = [
        "",
        f"summary after {doc['duration_s']} s:",
        f"  enrolled (receipts)      {enrolled}"
        + (f"  ({doc['enroll_failures']} failed)" if doc["enroll_failures"] else ""),
        f"  stored at the centre     {doc['centre_stored']}",
        f"  delivered receipts       {delivered} of {enrolled}",
    ]
    if doc["undelivered"]:
        lines.append(f"  still in the outbox      {doc['undelivered']} (kept on the kiosk, not lost)")
    if doc["exactly_once"]:
        lines.append(
            "  exactly once             yes: every delivered receipt's packet is at the centre once, none lost"
        )
    else:
        lines.append(
            f"  exactly once             NO: {doc['lost']} lost, {doc['duplicates']} duplicated"
            f" (see {doc['dir']}/logs)"
        )
    cuts = doc.get("cuts")
    if isinstance(cuts, list):
        for i, cut in enumerate(cuts, 1):
            if not isinstance(cut, dict):
                continue
            drained = (
                f"backlog of {cut['peak_backlog']} drained {cut['drained_after_s']} s after the restore"
                if cut.get("drained_after_s") is not None
                else f"backlog of {cut['peak_backlog']} not drained"
            )
            lines.append(f"  broker cut {i}             at {cut['at_s']} s for {cut['for_s']} s; {drained}")
    lines.append(f"  link reconnects          {doc['reconnects']}")
    problems = doc.get("problems")
    if isinstance(problems, list):
        lines.extend(f"  problem: {p}" for p in problems)
    lines.append(f"  result                   {'OK' if doc['ok'] else 'FAILED'}")
    return lines
