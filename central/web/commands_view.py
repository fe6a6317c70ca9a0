"""Remote commands from the web view: a form per verb on a kiosk's pages, for logged-in users only.

A command changes a kiosk, so a page must not be able to send one on someone else's behalf.
Three guards, all required:

- a login: the forms are shown, and a POST accepted, only when ``[web] users_file`` is set
  and the request carries a user of it (a view on loopback without users is read-only);
- a CSRF token bound to that user (an HMAC with a key of this process, with its time; valid
  CSRF_MAX_AGE_S): a page of another site cannot read it, so cannot forge the form;
- the Origin header (or, without one, the Referer) names this host: a POST from another
  site's page is refused even before the token is looked at.

The page has no script: the POST answers with a redirect to the command's page, which reloads
itself while the result is awaited and shows it when it has come. The sending (sign, record,
publish, wait for the result: central.commands) runs on a thread of its own, with its own
store connection, and goes on after the redirect until the result comes or WEB_RESULT_TIMEOUT_S
passes; a later result is stored by `ektp-central run`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from wire.command import DEVICE_NAMES, INTERVAL_BOUNDS_S, Command, CommandError, check_args

if TYPE_CHECKING:
    from starlette.requests import Request

    from central.config import CentralConfig
    from central.store import CentralStore

log = logging.getLogger("ektp.central.web")

CSRF_MAX_AGE_S = 12 * 3600
MAX_FORM_BYTES = 64 * 1024
MAX_IN_FLIGHT = 8  # commands a web view waits on at once
PUBLISH_WAIT_S = 25.0  # the POST waits this long for the broker to take the command
SETTLE_S = 2.0  # ... then this long for the result, so that a quick one shows at once
WEB_RESULT_TIMEOUT_S = 120.0  # the thread waits this long for the result
COMMAND_REFRESH_S = 2  # a command's page reloads this often while its result is awaited
VERB_TITLES = {
    "diag": "Self-test the devices",
    "status": "The kiosk's status",
    "logs": "Recent log lines (redacted)",
    "sync": "Send undelivered packets now",
    "resubmit": "Resubmit rejected packets",
    "selftest-interval": "Self-test interval",
    "health-interval": "Health interval",
    "reopen": "Close and reopen a peripheral",
}


class FormRefused(Exception):
    """A POST that is not accepted: ``status`` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------------------- the guards


class CsrfTokens:
    """Tokens bound to a user name and a time, checked with this process's key (a restart makes
    new ones; the pages carry fresh ones at every load)."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def issue(self, user: str, now: float | None = None) -> str:
        stamp = str(int(now if now is not None else time.time()))
        return f"{stamp}.{self._mac(user, stamp)}"

    def check(self, user: str, token: str, now: float | None = None) -> bool:
        stamp, _, mac = token.partition(".")
        if not stamp.isdigit() or len(stamp) > 12:
            return False
        age = (now if now is not None else time.time()) - int(stamp)
        return 0 <= age <= CSRF_MAX_AGE_S and hmac.compare_digest(mac, self._mac(user, stamp))

    def _mac(self, user: str, stamp: str) -> str:
        digest = hmac.new(self._key, f"{user}\0{stamp}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def same_origin(headers: Mapping[str, str]) -> bool:
    """Whether the Origin header (or, without one, the Referer) names the host this request was
    sent to (its Host, or the X-Forwarded-Host a reverse proxy set). A browser sets both on a
    form POST and a page of another site cannot change them."""
    source = headers.get("origin") or headers.get("referer")
    if not source or source == "null":
        return False
    netloc = urlsplit(source).netloc.lower()
    hosts = {headers.get("host", "").lower()}
    forwarded = headers.get("x-forwarded-host")
    if forwarded:
        hosts.add(forwarded.split(",")[0].strip().lower())
    return bool(netloc) and (netloc in hosts or _without_default_port(netloc, source) in hosts)


def _without_default_port(netloc: str, url: str) -> str:
    scheme = urlsplit(url).scheme
    for port, on in ((":80", "http"), (":443", "https")):
        if scheme == on and netloc.endswith(port):
            return netloc[: -len(port)]
    return netloc


def logged_in_user(request: Request) -> str | None:
    """The user the login middleware let through, or None (no users file: no login at all)."""
    state = request.scope.get("state") or {}
    user = state.get("user")
    return user if isinstance(user, str) else None


async def read_form(request: Request) -> dict[str, list[str]]:
    """The POST's urlencoded fields. :raises FormRefused: another content type, or too big"""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise FormRefused(415, "a command is sent by the page's form (application/x-www-form-urlencoded)")
    body = b""
    async for part in request.stream():
        body += part
        if len(body) > MAX_FORM_BYTES:
            raise FormRefused(413, f"the form is larger than {MAX_FORM_BYTES} bytes")
    try:
        return parse_qs(
            body.decode("utf-8"), keep_blank_values=True, max_num_fields=100, strict_parsing=False
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormRefused(400, f"the form cannot be read: {exc}") from None


def command_args(verb: str, form: Mapping[str, list[str]]) -> dict[str, Any]:
    """The verb's arguments from the form's fields, checked as the kiosk checks them.

    :raises FormRefused: an unknown verb or bad arguments (400, naming them)
    """
    from central.commands import packet_ids, since_time

    def one(name: str) -> str:
        return (form.get(name) or [""])[0].strip()

    def whole(name: str) -> int:
        text = one(name)
        if not text.lstrip("-").isdigit() or len(text) > 9:
            raise FormRefused(400, f"{verb}: {name} {text[:20]!r} is not a whole number")
        return int(text)

    args: dict[str, Any] = {}
    try:
        if verb == "diag":
            args = {"devices": [d for d in form.get("devices", []) if d]}
        elif verb == "logs":
            args = {"lines": whole("lines")}
            if one("since"):
                args["since"] = since_time(one("since"))
        elif verb == "resubmit":
            ids = packet_ids(one("packet_ids").replace(",", " ").split())
            args = {"packet_ids": ids, "rejected": one("rejected") == "1" and not ids}
        elif verb in INTERVAL_BOUNDS_S:
            args = {"seconds": whole("seconds")}
        elif verb == "reopen":
            args = {"device": one("device")}
    except ValueError as exc:
        raise FormRefused(400, f"{verb}: {exc}") from None
    try:
        return check_args(verb, args)
    except CommandError as exc:
        raise FormRefused(400, str(exc)) from None


# ----------------------------------------------------------------------------- sending


@dataclass
class _Sending:
    sent: threading.Event
    command: Command | None = None


class CommandDesk:
    """Sends the web view's commands, each on a thread with its own store connection."""

    def __init__(self, config: CentralConfig, open_store: Callable[[], CentralStore]) -> None:
        self.config = config
        self.open_store = open_store
        self._executor = ThreadPoolExecutor(MAX_IN_FLIGHT, thread_name_prefix="ektp-web-cmd")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._in_flight = 0

    async def send(self, kiosk: str, verb: str, args: dict[str, Any], issuer: str) -> str:
        """Send a command; its id once the broker has it (a quick result is stored by then too).

        :raises FormRefused: what went wrong, with the HTTP status to answer
        """
        with self._lock:
            if self._in_flight >= MAX_IN_FLIGHT:
                raise FormRefused(
                    503, f"{MAX_IN_FLIGHT} commands are waiting for their results already; try again shortly"
                )
            self._in_flight += 1
        sending = _Sending(threading.Event())
        future = self._executor.submit(self._run, kiosk, verb, args, issuer, sending)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _first_of, sending.sent, future, PUBLISH_WAIT_S)
        if not sending.sent.is_set():
            if future.done():
                raise _refusal(future.exception())
            raise FormRefused(504, f"the broker did not take the command within {PUBLISH_WAIT_S:.0f} s")
        await loop.run_in_executor(None, _first_of, None, future, SETTLE_S)
        assert sending.command is not None
        return sending.command.command_id

    def _run(self, kiosk: str, verb: str, args: dict[str, Any], issuer: str, sending: _Sending) -> None:
        from central.commands import send_command
        from central.keyring import load_keyring

        def sent(command: Command) -> None:
            sending.command = command
            sending.sent.set()

        try:
            keyring = load_keyring(self.config.central_private_key)
            store = self.open_store()
            try:
                outcome = send_command(
                    self.config,
                    store,
                    keyring,
                    kiosk,
                    verb,
                    args,
                    issuer=issuer,
                    via="web",
                    timeout_s=WEB_RESULT_TIMEOUT_S,
                    on_sent=sent,
                    stop=self._stop,
                )
            finally:
                store.close()
            # after a timeout, `ektp-central run` stores a later result
            log.info("web: %s's %s to kiosk %s: %s", issuer, verb, kiosk, outcome.status)
        except Exception as exc:
            if sending.sent.is_set():  # the page has its answer: only the log can tell
                log.error("web: %s's %s to kiosk %s: %s", issuer, verb, kiosk, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            with self._lock:
                self._in_flight -= 1

    def close(self) -> None:
        """Stop waiting for results (a later one is `run`'s to store) and end the threads."""
        self._stop.set()
        self._executor.shutdown(wait=True, cancel_futures=True)


def _first_of(event: threading.Event | None, future: Future[None], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not future.done() and not (event is not None and event.is_set()):
        time.sleep(0.02)


def _refusal(exc: BaseException | None) -> FormRefused:
    from central.commands import BrokerError, UnknownKiosk
    from central.consumer import LinkSetupError
    from central.store import StoreError
    from wire.keys import KeyFileError

    if isinstance(exc, UnknownKiosk):
        return FormRefused(409, str(exc))
    if isinstance(exc, KeyFileError):
        return FormRefused(503, f"this web view cannot read the centre's key, so cannot sign commands: {exc}")
    if isinstance(exc, LinkSetupError):
        return FormRefused(503, str(exc))
    if isinstance(exc, BrokerError):
        return FormRefused(502, f"{exc}. The attempt is listed below as unsent.")
    if isinstance(exc, StoreError | CommandError | ValueError):
        return FormRefused(503 if isinstance(exc, StoreError) else 400, str(exc))
    log.error("sending a command from the web view failed: %r", exc)
    return FormRefused(500, f"sending the command failed: {type(exc).__name__}: {exc}")


def shown_result(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A command's result for the page: its device reports, its log lines, and the other fields as text."""
    import json

    from central.commands import SAID_BY_THE_STATUS, device_reports

    result = entry.get("result") or {}
    devices = device_reports(result)
    lines = result.get("lines") if isinstance(result.get("lines"), list) else None
    fields = []
    for key, value in result.items():
        if (key == "lines" and lines is not None) or (key in ("devices", "diag", "results") and devices):
            continue
        if key in SAID_BY_THE_STATUS:
            continue
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)
        fields.append((key, text if len(text) <= 2000 else text[:2000] + " ... (cut)"))
    return {
        "devices": devices,
        "lines": [str(x) for x in lines] if lines is not None else None,
        "fields": fields,
    }


def form_defaults() -> dict[str, Any]:
    """What the forms offer: the devices, the bounds of the intervals, the verbs' titles."""
    return {"devices": DEVICE_NAMES, "bounds": INTERVAL_BOUNDS_S, "titles": VERB_TITLES}
