"""The demo's command line: its options, and how long it runs (until Ctrl-C on a
terminal; without one, nobody can press Ctrl-C, so it stops by itself after
``DEFAULT_DURATION_S`` unless --duration says otherwise)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from demo.scenario import Demo, Options

DEFAULT_DURATION_S = 60.0


def run_length(duration_s: float | None, *, terminal: bool) -> tuple[float | None, str]:
    """The run's duration (None: until Ctrl-C or SIGTERM) and, when it was not asked for,
    the line that says so."""
    if duration_s == 0:
        return None, ""
    if duration_s is not None or terminal:
        return duration_s, ""
    return DEFAULT_DURATION_S, (
        f"demo: no terminal to press Ctrl-C at, so it stops by itself after {DEFAULT_DURATION_S:g} s"
        " (--duration S for another length, --duration 0 to run until SIGTERM)"
    )


def _duration(_ctx: click.Context, _param: click.Parameter, value: float | None) -> float | None:
    if value is not None and 0 < value < 1:
        raise click.BadParameter("0 (until stopped) or at least 1 second")
    return value


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--duration",
    "duration_s",
    type=click.FloatRange(min=0),
    default=None,
    callback=_duration,
    metavar="S",
    help=(
        f"Stop by itself after S seconds; 0: run until Ctrl-C or SIGTERM. Default: until Ctrl-C on "
        f"a terminal, {DEFAULT_DURATION_S:g} s without one."
    ),
)
@click.option(
    "--dir",
    "root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("var/demo"),
    show_default=True,
    help="The demo's directory (configs, keys, stores, logs); wiped at start.",
)
@click.option(
    "--enroll-every",
    "enroll_every_s",
    type=click.FloatRange(min=0.5),
    default=3.0,
    show_default=True,
    metavar="S",
    help="Enroll one synthetic resident every S seconds.",
)
@click.option(
    "--cut-after",
    "cut_after_s",
    type=click.FloatRange(min=0),
    default=20.0,
    show_default=True,
    metavar="S",
    help="Cut the broker S seconds after the kiosk is up.",
)
@click.option(
    "--cut-for",
    "cut_for_s",
    type=click.FloatRange(min=0),
    default=20.0,
    show_default=True,
    metavar="S",
    help="Keep the broker cut for S seconds (0: never cut it).",
)
@click.option(
    "--cut-every",
    "cut_every_s",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="S",
    help="Cut it again every S seconds (0: once).",
)
@click.option(
    "--drain-timeout",
    "drain_timeout_s",
    type=click.FloatRange(min=0),
    default=15.0,
    show_default=True,
    metavar="S",
    help="On stopping, wait up to S seconds for the backlog to reach the centre.",
)
@click.option("--plain", is_flag=True, help="Plain progress lines even on a terminal.")
def main(
    duration_s: float | None,
    root: Path,
    enroll_every_s: float,
    cut_after_s: float,
    cut_for_s: float,
    cut_every_s: float,
    drain_timeout_s: float,
    plain: bool,
) -> None:
    """The e-KTP recorder kit demo: a kiosk with simulated peripherals, a local Mosquitto
    and the centre; residents enrolled every few seconds; the broker cut and restored;
    a live view of the backlog, the link and the devices. Ctrl-C stops it cleanly.

    \b
    Examples:
      python -m demo
      python -m demo --duration 60 --cut-after 10 --cut-for 10 --dir /tmp/demo
      make run ARGS="--duration 60"
    """
    if cut_every_s and cut_every_s <= cut_for_s:
        raise click.BadParameter("must be longer than --cut-for", param_hint="--cut-every")
    duration, note = run_length(duration_s, terminal=sys.stdin.isatty() and sys.stdout.isatty())
    opts = Options(
        root=root.expanduser().absolute(),
        duration_s=duration,
        enroll_every_s=enroll_every_s,
        cut_after_s=cut_after_s,
        cut_for_s=cut_for_s,
        cut_every_s=cut_every_s,
        drain_timeout_s=drain_timeout_s,
        live=sys.stdout.isatty() and not plain,
        first_line_note=note,
    )
    sys.exit(Demo(opts).run())
