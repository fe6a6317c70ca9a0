"""The service's local API: JSON lines over a Unix socket (docs/api.md).

A request is one JSON object on one line, ``{"op": NAME, ...arguments}``. The answer
is one or more JSON objects, one per line; the last has ``"done": true``. A failure
is ``{"done": true, "ok": false, "error": MESSAGE, "code": WORD}``. A stream (enroll of
several residents) sends its items before the final line, so a client
sees each receipt as soon as its packet is committed.
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
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("ektp.api")

MAX_REQUEST = 64 * 1024
Handler = Callable[[dict[str, Any]], AsyncIterator[dict[str, Any]]]


class ApiError(Exception):
    """A request the service refuses; ``code`` is a short word for programs."""

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


class ServiceNotRunning(ConnectionError):
    """Nothing answers on the API socket."""


class ApiServer:
    """Serves ``handlers`` (op name -> async generator of answer objects) on ``path``."""

    def __init__(self, path: Path, handlers: dict[str, Handler], *, group: str | None = None) -> None:
        self.path = path
        self.handlers = handlers
        self.group = group
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if _answers(self.path):
                raise ApiError(f"another agent already serves {self.path}; stop it first", "already-running")
            self.path.unlink()  # a stale socket of a crashed run
        self._server = await asyncio.start_unix_server(self._client, path=str(self.path), limit=MAX_REQUEST)
        os.chmod(self.path, 0o660)
        if self.group:
            try:
                os.chown(self.path, -1, grp.getgrnam(self.group).gr_gid)
            except (KeyError, PermissionError) as exc:
                log.warning("cannot give %s to group %s: %s", self.path, self.group, exc)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await _send(writer, _failure(f"request over {MAX_REQUEST} bytes", "bad-request"))
                    return
                if not line:
                    return
                await self._answer(line, writer)
        except (ConnectionError, BrokenPipeError):
            pass  # the client went away; nothing to tell
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, line: bytes, writer: asyncio.StreamWriter) -> None:
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise ValueError("not an object with an op")
        except ValueError:
            await _send(writer, _failure('a request is one JSON object with "op" on one line', "bad-request"))
            return
        handler = self.handlers.get(request["op"])
        if handler is None:
            await _send(
                writer,
                _failure(
                    f"unknown op {request['op']!r}; known: {', '.join(sorted(self.handlers))}", "bad-request"
                ),
            )
            return
        try:
            async for item in handler(request):
                await _send(writer, item)
        except ApiError as exc:
            await _send(writer, _failure(str(exc), exc.code))
            return
        except Exception as exc:  # a bug must not take the service down; the client is told
            log.exception("API op %s failed", request["op"])
            await _send(writer, _failure(f"internal error: {type(exc).__name__}: {exc}", "internal"))
            return
        await _send(writer, {"done": True, "ok": True})


def _failure(message: str, code: str) -> dict[str, Any]:
    return {"done": True, "ok": False, "error": message, "code": code}


async def _send(writer: asyncio.StreamWriter, doc: dict[str, Any]) -> None:
    writer.write(json.dumps(doc).encode() + b"\n")
    await writer.drain()


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
    :raises ApiError: the service refused the request
    :raises TimeoutError: no line within ``timeout`` seconds
    """
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ServiceNotRunning(f"the agent service is not running (no answer on {path})") from exc
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
                raise ServiceNotRunning(f"the agent service is not running (no answer on {path})") from exc
            raise
        s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        stream = s.makefile("rb")
        for line in stream:
            doc = json.loads(line)
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
