"""The service's local API: JSON lines over a Unix socket (docs/api.md).

A request is one JSON object on one line, ``{"op": NAME, ...arguments}``. The answer
is one or more JSON objects, one per line; the last has ``"done": true``. A failure
is ``{"done": true, "ok": false, "error": MESSAGE, "code": WORD}``. A stream (enroll of
several residents) sends its items before the final line, so a client
sees each receipt as soon as its packet is committed.

Limits, so that no client can take the service's file descriptors or its log: at most
``max_connections`` connections at once (one more is told ``busy`` and closed at once,
and the refusals are logged at most once per ``REFUSAL_LOG_EVERY_S`` with a count); a
connection that sends no request, or reads no answer, for ``idle_timeout_s`` is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("ektp.api")

MAX_REQUEST = 64 * 1024
MAX_CONNECTIONS = 64  # [api] max_connections
IDLE_TIMEOUT_S = 60.0  # [api] idle_timeout_s
REFUSAL_LOG_EVERY_S = 10.0
BACKLOG = 128  # connections the kernel queues before the service accepts them
ACCEPT_RETRY_S = 0.5  # after an accept failed for want of descriptors or memory
CLOSE_WAIT_S = 1.0
Handler = Callable[[dict[str, Any]], AsyncIterator[dict[str, Any]]]


class ApiError(Exception):
    """A request the service refuses; ``code`` is a short word for programs."""

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


class ServiceNotRunning(ConnectionError):
    """Nothing answers on the API socket."""


class ServiceTimeout(ApiError, TimeoutError):
    """The service took a connection but did not answer in time."""


class _ClientLost(Exception):
    """Server side: the client went away, or read nothing of an answer for idle_timeout_s."""


class ThrottledLog:
    """At most one line per ``every_s``; the next line says how many were left out meanwhile."""

    def __init__(
        self, logger: logging.Logger, every_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.every_s = every_s
        self.clock = clock
        self._last = -float("inf")
        self.suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = self.clock()
        if now - self._last < self.every_s:
            self.suppressed += 1
            return
        if self.suppressed:
            message += f" ({self.suppressed} more like it in the last {now - self._last:.0f} s not logged)"
        self._last, self.suppressed = now, 0
        self.logger.warning(message, *args)

    def catch_up(self, message: str, *args: object) -> None:
        """At the end of a burst: how many lines were left out, once the interval has passed."""
        now = self.clock()
        if self.suppressed and now - self._last >= self.every_s:
            self.logger.warning(f"{message}: {self.suppressed} in the last {now - self._last:.0f} s", *args)
            self._last, self.suppressed = now, 0


class ApiServer:
    """Serves ``handlers`` (op name -> async generator of answer objects) on ``path``."""

    def __init__(
        self,
        path: Path,
        handlers: dict[str, Handler],
        *,
        group: str | None = None,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.path = path
        self.handlers = handlers
        self.group = group
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.connections = 0
        self.refusals = ThrottledLog(log, REFUSAL_LOG_EVERY_S)
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if _answers(self.path):
                raise ApiError(f"another agent already serves {self.path}; stop it first", "already-running")
            self.path.unlink()  # a stale socket of a crashed run
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.path))
            listener.listen(BACKLOG)
            listener.setblocking(False)
            os.chmod(self.path, 0o660)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        if self.group:
            try:
                os.chown(self.path, -1, grp.getgrnam(self.group).gr_gid)
            except (KeyError, PermissionError) as exc:
                log.warning("cannot give %s to group %s: %s", self.path, self.group, exc)
        self._accepting = asyncio.create_task(self._accept_loop(), name="api-accept")

    async def close(self) -> None:
        """Stop taking connections; a request in progress is left to finish (or to the loop's end)."""
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
            self._accepting = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _accept_loop(self) -> None:
        """One connection at a time; one over the limit is refused at once, without a task.

        asyncio's own server accepts a whole backlog before any handler runs, so a crowd
        holds as many descriptors as the backlog and, at the process limit, it logs a
        traceback per failed accept. Here a refused connection is closed before the next
        accept, and a failed accept waits a moment and is logged at most once per interval.
        """
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            try:
                conn, _ = await loop.sock_accept(self._listener)
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.debug("API %s: accept failed: %s", self.path, exc)
                    continue
                self.refusals.warning(
                    "API %s: cannot take a connection: %s (%d open; raise LimitNOFILE or lower "
                    "api.max_connections)",
                    self.path,
                    exc.strerror,
                    self.connections,
                )
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            if self.connections >= self.max_connections:
                self._refuse(conn)
                continue
            self.refusals.catch_up("API %s: connections refused and not logged since", self.path)
            self.connections += 1
            task = asyncio.create_task(self._serve(conn), name="api-client")
            self._clients.add(task)
            task.add_done_callback(self._clients.discard)

    def _refuse(self, conn: socket.socket) -> None:
        """One line to say why, then close at once: a refused connection holds no descriptor."""
        self.refusals.warning(
            "API %s: refused a connection: %d are open, the limit (api.max_connections)",
            self.path,
            self.connections,
        )
        message = (
            f"the agent service is busy: {self.connections} connections to {self.path} are open, its "
            "limit (api.max_connections); try again in a moment. If this lasts, a program is holding "
            "connections open: find it with `ss -xp | grep api.sock`"
        )
        try:
            conn.setblocking(False)
            conn.send(json.dumps(_failure(message, "busy")).encode() + b"\n")  # fits an empty buffer
        except OSError:
            pass  # the client is gone already
        finally:
            conn.close()

    async def _serve(self, conn: socket.socket) -> None:
        try:
            try:
                reader, writer = await asyncio.open_unix_connection(sock=conn, limit=MAX_REQUEST)
            except OSError:
                conn.close()
                return
            await self._client(reader, writer)
        finally:
            self.connections -= 1

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), self.idle_timeout_s)
                except TimeoutError:
                    log.debug("closed an API connection idle for %.0f s", self.idle_timeout_s)
                    return
                except (ValueError, asyncio.LimitOverrunError):
                    await self._send(writer, _failure(f"request over {MAX_REQUEST} bytes", "bad-request"))
                    return
                if not line:
                    return
                await self._answer(line, writer)
        except (ConnectionError, _ClientLost) as exc:
            log.debug("API connection closed: %s", str(exc) or "the client went away")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), CLOSE_WAIT_S)

    async def _answer(self, line: bytes, writer: asyncio.StreamWriter) -> None:
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise ValueError("not an object with an op")
        except ValueError:
            await self._send(
                writer, _failure('a request is one JSON object with "op" on one line', "bad-request")
            )
            return
        handler = self.handlers.get(request["op"])
        if handler is None:
            await self._send(
                writer,
                _failure(
                    f"unknown op {request['op']!r}; known: {', '.join(sorted(self.handlers))}", "bad-request"
                ),
            )
            return
        try:
            async for item in handler(request):
                await self._send(writer, item)
        except ApiError as exc:
            await self._send(writer, _failure(str(exc), exc.code))
            return
        except _ClientLost:
            raise  # nobody to tell: _client closes the connection
        except Exception as exc:  # a bug must not take the service down; the client is told
            log.exception("API op %s failed", request["op"])
            await self._send(writer, _failure(f"internal error: {type(exc).__name__}: {exc}", "internal"))
            return
        await self._send(writer, {"done": True, "ok": True})

    async def _send(self, writer: asyncio.StreamWriter, doc: dict[str, Any]) -> None:
        """:raises _ClientLost: the client is gone, or read nothing for idle_timeout_s"""
        writer.write(json.dumps(doc).encode() + b"\n")
        try:
            await asyncio.wait_for(writer.drain(), self.idle_timeout_s)
        except TimeoutError as exc:
            raise _ClientLost(f"the client read no answer for {self.idle_timeout_s:.0f} s") from exc
        except ConnectionError as exc:
            raise _ClientLost(f"the client went away ({exc})") from exc


def _failure(message: str, code: str) -> dict[str, Any]:
    return {"done": True, "ok": False, "error": message, "code": code}


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


# ----------------------------------------------------------------------------- the client


def request(path: Path, op: str, *, timeout: float | None = 30.0, **args: Any) -> Iterator[dict[str, Any]]:
    """Send one request; yield the answer objects (not the final line).

    :raises ServiceNotRunning: nothing listens on ``path``
    :raises ApiError: the service refused the request (code ``busy``: too many connections),
        closed the connection early (``closed``) or sent what is not an answer (``bad-answer``)
    :raises ServiceTimeout: no line within ``timeout`` seconds (also an ApiError, code ``timeout``)
    """
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ServiceNotRunning(f"the agent service is not running (no answer on {path})") from exc
        except TimeoutError as exc:
            raise _timeout(path, timeout, "did not take the connection") from exc
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
                raise ServiceNotRunning(f"the agent service is not running (no answer on {path})") from exc
            if exc.errno == errno.EAGAIN:
                raise ApiError(
                    f"the agent service is not taking connections on {path} (its queue of new connections"
                    " is full); try again in a moment, and if this lasts see `journalctl -u ektp-agent`",
                    "busy",
                ) from exc
            raise
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            # a service that refuses the connection may close before reading it; its answer still waits
            s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        stream = s.makefile("rb")
        for line in _lines(stream, path, timeout):
            try:
                doc = json.loads(line)
                if not isinstance(doc, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                raise ApiError(
                    f"the service on {path} sent something that is not an answer ({exc}); is it an ektp-agent?",
                    "bad-answer",
                ) from exc
            if doc.get("done"):
                if not doc.get("ok", True):
                    raise ApiError(
                        str(doc.get("error", "the service refused the request")),
                        str(doc.get("code", "error")),
                    )
                return
            yield doc
        raise ApiError("the service closed the connection before answering", "closed")
    finally:
        s.close()


def call(path: Path, op: str, *, timeout: float | None = 30.0, **args: Any) -> list[dict[str, Any]]:
    return list(request(path, op, timeout=timeout, **args))


def _lines(stream: Any, path: Path, timeout: float | None) -> Iterator[bytes]:
    """The answer's lines; a timeout or a reset becomes an ApiError naming the socket."""
    while True:
        try:
            line = stream.readline()
        except TimeoutError as exc:
            raise _timeout(path, timeout, "did not answer") from exc
        except ConnectionResetError as exc:
            raise ApiError(f"the service closed the connection on {path} before answering", "closed") from exc
        if not line:
            return
        yield line


def _timeout(path: Path, timeout: float | None, what: str) -> ServiceTimeout:
    return ServiceTimeout(
        f"the agent service {what} on {path} within {timeout or 0:g} s: it is overloaded or hung. See "
        "`systemctl status ektp-agent` and `journalctl -u ektp-agent -n 50`; if it stays so, restart it "
        "(`systemctl restart ektp-agent`)",
        "timeout",
    )
