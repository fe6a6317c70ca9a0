"""Serving the web view with uvicorn: the socket is bound first, so that a port in use is named
before anything starts, then served in the foreground (`ektp-central web`) or in a thread of
`ektp-central run`. Signals stay with the caller: uvicorn's own handlers are not installed.

    WebListenError (also OSError)   the address cannot be listened on; says which and what to do
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

log = logging.getLogger("ektp.central.web")

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
GRACEFUL_S = 3  # open connections (a browser's keep-alive) get this long at a stop
BACKLOG = 128


class WebListenError(OSError):
    def __init__(self, host: str, port: int, message: str) -> None:
        super().__init__(message)
        self.host, self.port = host, port


def url_of(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port and listening. :raises WebListenError: naming the port and what to do"""
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise WebListenError(
            host, port, f"cannot listen on {where}: {host} is not a known host ({exc.strerror})"
        ) from exc
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise WebListenError(host, port, _listen_advice(where, host, port, exc)) from exc
    return sock


def _listen_advice(where: str, host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: port {port} is already in use (another `ektp-central web`, a `run`"
            f" with [web] listen, or another server; `ss -ltnp 'sport = :{port}'` shows which). Stop it, or"
            f" choose another port: --listen {host}:PORT or [web] listen"
        )
    if exc.errno == errno.EACCES:
        return (
            f"cannot listen on {where}: ports below 1024 need root or CAP_NET_BIND_SERVICE; use a port"
            " above 1024 (a reverse proxy can serve 443, docs/web.md)"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: {host} is not an address of this machine (`ip addr` lists them)"
    return f"cannot listen on {where}: {exc.strerror or exc}"


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the caller decides what a signal stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class WebServer:
    """The app served on a bound socket: :meth:`serve` blocks; :meth:`start` runs it in a thread."""

    def __init__(self, app: Any, sock: socket.socket) -> None:
        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.url = url_of(host, port)
        config = uvicorn.Config(
            app,
            log_config=None,  # the process's own logging (plain lines)
            access_log=False,  # pages reload themselves: one line per browser every refresh_s is noise
            server_header=False,
            lifespan="on",
            timeout_graceful_shutdown=GRACEFUL_S,
        )
        self.server = _Server(config)
        self._thread: threading.Thread | None = None

    def serve(self) -> None:
        """Serve until :meth:`stop` (or a signal handler that calls it)."""
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.sock.close()

    def start(self) -> None:
        """Serve in a thread; returns once it answers. :raises WebListenError: it did not start"""
        self._thread = threading.Thread(target=self._serve_logged, name="ektp-web", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                host, port = self.sock.getsockname()[:2]
                raise WebListenError(
                    host, port, f"the web view on {self.url} did not start (its log says why)"
                )
            time.sleep(0.02)

    def _serve_logged(self) -> None:
        try:
            self.serve()
        except SystemExit as exc:  # uvicorn exits when its startup fails
            log.error("the web view stopped: uvicorn exited with %s", exc.code)
        except Exception:
            log.exception("the web view stopped")

    def stop(self, *, force: bool = False) -> None:
        """Ask it to stop (a signal handler may call it); with a thread, wait for it. Safe to repeat."""
        self.server.should_exit = True
        if force:
            self.server.force_exit = True
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(STOP_TIMEOUT_S + GRACEFUL_S)
            if self._thread.is_alive():
                log.warning("the web view did not stop within %d s", STOP_TIMEOUT_S + GRACEFUL_S)
