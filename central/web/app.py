"""The fleet web view as an ASGI app: ``/`` the fleet, ``/kiosk/{id}`` one kiosk,
``/kiosk/{id}/commands`` its remote commands (sent from here by logged-in users only:
central.web.commands_view), ``/metrics`` for Prometheus, ``/healthz``.

Pages are rendered on the server (Jinja2, autoescaped) and reload themselves every
``[web] refresh_s`` seconds with a meta refresh: no script at all, and a Content-Security-
Policy that would not run one if a kiosk ever slipped markup past the escaping. Kiosk-sent
text (device details, hints, problems) is only ever shown escaped; packets are shown by
id, size and time, never opened.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from central.config import CentralConfig
from central.store import StoreError
from central.web import formats, plots, store_reader
from central.web.auth import ASGIApp, BasicAuth, Receive, Scope, Send, UsersFile
from central.web.commands_view import (
    COMMAND_REFRESH_S,
    CommandDesk,
    CsrfTokens,
    FormRefused,
    command_args,
    form_defaults,
    logged_in_user,
    read_form,
    same_origin,
    shown_result,
)
from central.web.fleet_view import SORTS, BadQuery, FleetQuery, Group, build_view
from central.web.store_reader import CachedFleetStore, StoreReader
from wire.command import VERBS
from wire.names import KIOSK_ID_RE

if TYPE_CHECKING:
    from central.store import CentralStore

log = logging.getLogger("ektp.central.web")

TEMPLATES = Path(__file__).parent / "templates"
DEVICE_ORDER = ("fingerprint", "signature", "iris", "camera")  # CONTRACT.md, Health JSON
DEFAULT_HOURS = 24.0
MIN_HOURS = 1.0
RECENT_PACKETS = 50
QUARANTINE_ROWS = 100
HEALTH_DOC_CHARS = 20_000  # the kiosk page shows the last health document up to this size
OPEN_PATHS = frozenset({"/healthz"})  # answered without a login: says nothing but "ok"
KIOSK_PAGE_COMMANDS = 10  # the kiosk page lists its newest commands
COMMANDS_PAGE_COMMANDS = 50  # the commands page lists more
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def create_app(
    config: CentralConfig,
    open_store: Callable[[], CentralStore],
    *,
    centre_metrics: Any = None,
) -> Starlette:
    """The web view of the store ``open_store`` opens; ``centre_metrics`` (a central.metrics.CentreMetrics,
    the consumer's) adds the centre's own counters to /metrics.

    :raises UsersFileError: ``[web] users_file`` is set and cannot be used
    """
    web = config.web
    # kept shorter than the refresh, so that a page shows a change by its next reload
    cache_s = min(store_reader.FLEET_CACHE_S, web.refresh_s / 2)
    reader = StoreReader(open_store, backlog_problem_hours=web.backlog_problem_hours, cache_s=cache_s)
    css = (TEMPLATES / "style.css").read_text(encoding="utf-8")
    env = _environment(css)
    desk = CommandDesk(config, open_store)
    pages = Pages(env, reader, config, centre_metrics, desk)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            desk.close()
            reader.close()

    middleware = [Middleware(SecurityHeaders, style_hash=_csp_hash(css))]
    if web.users_file is not None:
        middleware.append(Middleware(BasicAuth, users=UsersFile(web.users_file), open_paths=OPEN_PATHS))
    return Starlette(
        routes=[
            Route("/", pages.fleet),
            Route("/kiosk/{kiosk_id:str}", pages.kiosk),
            Route("/kiosk/{kiosk_id:str}/commands", pages.commands, methods=["GET", "POST"]),
            Route("/metrics", pages.metrics),
            Route("/healthz", healthz),
        ],
        middleware=middleware,
        exception_handlers={HTTPException: pages.http_error, StoreError: pages.store_error},
        lifespan=lifespan,
    )


async def healthz(_request: Request) -> Response:
    return PlainTextResponse("ok\n")


class Pages:
    """The routes' handlers and what they share: the templates, the store reader, the config."""

    def __init__(
        self,
        env: jinja2.Environment,
        reader: StoreReader,
        config: CentralConfig,
        centre_metrics: Any,
        desk: CommandDesk,
    ) -> None:
        self.env = env
        self.reader = reader
        self.config = config
        self.centre_metrics = centre_metrics
        self.desk = desk
        self.csrf = CsrfTokens()
        # commands change a kiosk: only a view that asks for a login offers them
        self.commands_enabled = config.web.users_file is not None

    def render(self, name: str, code: int = 200, **context: Any) -> HTMLResponse:
        now = datetime.now(UTC)
        html = self.env.get_template(name).render(
            **{"now": now, "refresh_s": self.config.web.refresh_s, **context}
        )
        return HTMLResponse(html, status_code=code, headers={"cache-control": "no-store"})

    def command_forms(self, request: Request) -> dict[str, Any]:
        """What the command forms need: the CSRF token of the logged-in user, or why there are none."""
        user = logged_in_user(request) if self.commands_enabled else None
        return {
            "user": user,
            "csrf": self.csrf.issue(user) if user is not None else "",
            "why_no_forms": ""
            if user is not None
            else "Sending commands from here needs a login: set [web] users_file (docs/web.md, section 3)."
            " `ektp-central kiosk cmd` sends them from the centre's host.",
            **form_defaults(),
        }

    async def fleet(self, request: Request) -> Response:
        try:
            query = FleetQuery.parse(request.query_params)
        except BadQuery as exc:
            return self.render("message.html", 400, title="Bad request", message=str(exc), refresh=False)
        reading = await self.reader.fleet()
        started = time.monotonic()
        view = build_view(reading.rows, query, backlog_problem_hours=self.config.web.backlog_problem_hours)
        return self.render(
            "fleet.html",
            view=view,
            q=query,
            sorts=SORTS,
            is_group=lambda item: isinstance(item, Group),
            read_at=datetime.fromtimestamp(reading.read_at, UTC),
            read_ms=reading.seconds * 1000,
            build_ms=(time.monotonic() - started) * 1000,
            backlog_problem_hours=self.config.web.backlog_problem_hours,
            refresh=True,
        )

    async def kiosk(self, request: Request) -> Response:
        kiosk = request.path_params["kiosk_id"]
        if KIOSK_ID_RE.fullmatch(kiosk) is None:  # never handed to the store
            return self.not_found(f"{kiosk[:80]!r} is not a kiosk id (1-64 characters from A-Z a-z 0-9 _ -).")
        most = float(self.config.health_retention_days * 24)
        text = request.query_params.get("hours") or f"{DEFAULT_HOURS:g}"
        try:
            hours = float(text)
        except ValueError:
            hours = math.nan
        if not MIN_HOURS <= hours <= most:
            message = f"hours={text[:20]!r}: expected hours of history, {MIN_HOURS:g} to {most:g} ([store] health_retention_days)"
            return self.render("message.html", 400, title="Bad request", message=message, refresh=False)
        t1 = time.time()
        t0 = t1 - hours * 3600
        step = 300 if hours <= 24 else 3600 if hours <= 24 * 7 else 86400
        backlog_hours = self.config.web.backlog_problem_hours
        got = await self.reader.call(lambda store: _kiosk_reading(store, kiosk, t0, step, backlog_hours))
        if got is None:
            return self.not_found(
                f"The centre knows no kiosk {kiosk}: no key, status, health or packet of it."
            )
        window = plots.Window(t0, t1)
        return self.render(
            "kiosk.html",
            kiosk=kiosk,
            hours=hours,
            step_s=step,
            plot=_kiosk_plots(got["history"], got["deliveries"], window, step),
            legend=plots.legend(),
            refresh=True,
            forms=self.command_forms(request),
            **got,
        )

    async def commands(self, request: Request) -> Response:
        """GET: the kiosk's commands and the forms; POST: send one (then to its page)."""
        kiosk = request.path_params["kiosk_id"]
        if KIOSK_ID_RE.fullmatch(kiosk) is None:  # never handed to the store
            return self.not_found(f"{kiosk[:80]!r} is not a kiosk id (1-64 characters from A-Z a-z 0-9 _ -).")
        if request.method == "POST":
            try:
                command_id = await self.send_command(request, kiosk)
            except FormRefused as exc:
                return await self.commands_page(request, kiosk, error=str(exc), code=exc.status)
            return RedirectResponse(f"/kiosk/{kiosk}/commands?cmd={command_id}", status_code=303)
        return await self.commands_page(request, kiosk)

    async def send_command(self, request: Request, kiosk: str) -> str:
        """The id of the command a POST sent. :raises FormRefused: the POST is not accepted"""
        if not self.commands_enabled:
            raise FormRefused(
                403,
                "this view asks for no login, so it sends no commands: set [web] users_file (docs/web.md)",
            )
        user = logged_in_user(request)
        if user is None:  # the login middleware stops such a request before it gets here
            raise FormRefused(403, "sending a command needs a login")
        if not same_origin(request.headers):
            log.warning(
                "web: a command POST for kiosk %s as %s came from another origin: refused", kiosk, user
            )
            raise FormRefused(403, "the form was not sent from this site's page (Origin/Referer): refused")
        form = await read_form(request)
        token = (form.get("csrf") or [""])[0]
        if not self.csrf.check(user, token):
            raise FormRefused(
                403, "the form's token is missing, expired or not yours: reload the page and send it again"
            )
        verb = (form.get("verb") or [""])[0]
        if verb not in VERBS:
            raise FormRefused(400, f"verb {verb[:40]!r} is not one of {', '.join(VERBS)}")
        args = command_args(verb, form)
        return await self.desk.send(kiosk, verb, args, issuer=user)

    async def commands_page(
        self, request: Request, kiosk: str, *, error: str = "", code: int = 200
    ) -> Response:
        wanted = request.query_params.get("cmd", "")
        selected_id = wanted if UUID_RE.fullmatch(wanted) else None

        def read(store: CentralStore) -> dict[str, Any] | None:
            rows = store.fleet(kiosk, backlog_problem_hours=self.config.web.backlog_problem_hours)
            if not rows:
                return None
            return {
                "row": rows[0],
                "log": store.command_log(kiosk, limit=COMMANDS_PAGE_COMMANDS),
                "selected": None if selected_id is None else store.command_entry(kiosk, selected_id),
            }

        got = await self.reader.call(read)
        if got is None:
            return self.not_found(
                f"The centre knows no kiosk {kiosk}: no key, status, health or packet of it."
            )
        selected = got["selected"]
        waiting = selected is not None and selected["status"] in ("sending", "pending")
        return self.render(
            "commands.html",
            code,
            kiosk=kiosk,
            row=got["row"],
            log=got["log"],
            selected=selected,
            shown=shown_result(selected) if selected is not None else None,
            waiting=waiting,
            error=error,
            forms=self.command_forms(request),
            refresh=waiting,
            refresh_s=COMMAND_REFRESH_S,
        )

    async def metrics(self, _request: Request) -> Response:
        try:
            from central.metrics import render_metrics
        except ImportError:  # pragma: no cover - central.metrics ships with this package
            return PlainTextResponse("metrics are not available in this build\n", status_code=501)
        hours = self.config.web.backlog_problem_hours

        def render(store: CentralStore) -> tuple[bytes, str]:
            shared = CachedFleetStore(store, self.reader)
            return render_metrics(shared, self.centre_metrics, backlog_problem_hours=hours)  # type: ignore[arg-type]

        body, content_type = await self.reader.call(render)
        return Response(body, headers={"content-type": content_type, "cache-control": "no-store"})

    def not_found(self, message: str) -> HTMLResponse:
        return self.render("message.html", 404, title="Not found", message=message, refresh=False)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return self.not_found(f"There is no page at {request.url.path[:200]}.")
        return PlainTextResponse(f"{exc.status_code}: {exc.detail}\n", status_code=exc.status_code)

    async def store_error(self, _request: Request, exc: Exception) -> Response:
        log.error("the web view cannot read the store: %s", exc)
        return self.render(
            "message.html",
            503,
            title="The store cannot be read",
            message=f"{exc} (the page tries again at its next refresh)",
            refresh=True,
        )


def _kiosk_reading(
    store: CentralStore, kiosk: str, since: float, step: int, backlog_problem_hours: float
) -> dict[str, Any] | None:
    """Everything the kiosk page shows, in one visit to the store's thread; None for an unknown kiosk."""
    rows = store.fleet(kiosk, backlog_problem_hours=backlog_problem_hours)
    if not rows:
        return None
    packets = store.packets(kiosk, limit=RECENT_PACKETS)
    packets.sort(key=lambda p: (p["received_at"], p["seq"]), reverse=True)
    quarantine = store.quarantined(kiosk)
    quarantine.sort(key=lambda q: q["last_received_at"], reverse=True)
    health = store.health(kiosk)
    return {
        "row": rows[0],
        "status": store.status(kiosk),
        "health_doc": _shown_doc(health),
        "history": store.health_history(kiosk, since),
        "deliveries": store.deliveries(kiosk, since, step),
        "packets": packets,
        "quarantine": quarantine[:QUARANTINE_ROWS],
        "quarantine_total": len(quarantine),
        "commands": store.command_log(kiosk, limit=KIOSK_PAGE_COMMANDS),
    }


def _shown_doc(doc: dict[str, Any] | None) -> str | None:
    """The health document as text, cut at HEALTH_DOC_CHARS (it is the kiosk's: shown escaped)."""
    import json

    if doc is None:
        return None
    text = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= HEALTH_DOC_CHARS else text[:HEALTH_DOC_CHARS] + "\n... (cut)"


def _kiosk_plots(
    history: list[dict[str, Any]], deliveries: list[dict[str, int]], window: plots.Window, step: int
) -> dict[str, Any]:
    span = max((p["span_s"] for p in history), default=300)
    devices = [d for d in DEVICE_ORDER if any(p["devices"].get(d) for p in history)] or list(DEVICE_ORDER)
    return {
        "backlog": plots.line_plot(
            [(p["bucket"], p["backlog"]) for p in history],
            window,
            label="packets waiting on the kiosk (the highest of each step)",
            fmt=plots.count,
            step_s=span,
        ),
        "oldest": plots.line_plot(
            [(p["bucket"], p["oldest_pending_age_s"]) for p in history],
            window,
            label="age of the oldest undelivered packet (the highest of each step)",
            fmt=formats.duration,
            step_s=span,
            least_top=60.0,
            ceiling=plots.nice_duration,
        ),
        "deliveries": plots.bar_plot(
            [(d["bucket"], d["packets"]) for d in deliveries],
            window,
            step_s=step,
            label=f"packets stored per {formats.duration(step)} (centre's receive time)",
            fmt=plots.count,
        ),
        "states": plots.state_timeline(
            [(p["bucket"], p["span_s"], p["devices"]) for p in history],
            window,
            devices=devices,
            label="device states (the worst of each step)",
        ),
    }


# ----------------------------------------------------------------------------- templates, headers


def _environment(css: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["css"] = css
    env.filters.update(
        duration=formats.duration,
        hours=formats.hours,
        clock=formats.clock,
        size=formats.size,
        number=formats.number,
        gaps=formats.gaps,
        missing=formats.missing,
    )
    env.globals["ago"] = formats.ago
    env.globals["ordered_devices"] = ordered_devices
    env.globals["command_summary"] = _command_summary
    env.globals["command_args_text"] = _command_args_text
    return env


def ordered_devices(devices: dict[str, Any]) -> list[tuple[str, Any]]:
    """A kiosk's devices in the contract's order, any others after them by name."""
    rank = {name: i for i, name in enumerate(DEVICE_ORDER)}
    return sorted(devices.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0]))


def _command_summary(entry: dict[str, Any]) -> str:
    from central.commands import summary

    return summary(entry["verb"], entry["status"], entry["reason"], entry["result"])


def _command_args_text(args: dict[str, Any]) -> str | None:
    from central.commands import args_text

    return args_text(args)


def _csp_hash(css: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(css.encode()).digest()).decode() + "'"


class SecurityHeaders:
    """Headers on every response: no script, no framing, no sniffing, no referrer to other sites.

    The referrer policy is same-origin, not no-referrer: under no-referrer a browser sends
    ``Origin: null`` with a form's POST, and the command forms' origin check needs the real one.
    """

    def __init__(self, app: ASGIApp, *, style_hash: str) -> None:
        self.app = app
        self.headers = [
            (
                b"content-security-policy",
                (
                    f"default-src 'none'; style-src {style_hash}; img-src 'self'; form-action 'self';"
                    " frame-ancestors 'none'; base-uri 'none'"
                ).encode(),
            ),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"same-origin"),
            (b"x-frame-options", b"DENY"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
            await send(message)

        await self.app(scope, receive, with_headers)
