"""A small Unix-socket service for simulated devices: one accept thread, one short-lived thread
per connection, everything joined on ``stop``. Each connection carries one request."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from pathlib import Path

CONNECTION_IDLE_S = 5.0  # a client that connects and sends nothing is dropped after this
UNIX_PATH_MAX = 107


class UnixSocketService:
    """Serve ``handler(conn)`` on a Unix stream socket at ``path``."""

    def __init__(self, path: Path, handler: Callable[[socket.socket], None], *, name: str) -> None:
        self.path = path
        self.handler = handler
        self.name = name
        self.connections = 0
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._workers: set[threading.Thread] = set()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def start(self) -> None:
        if len(str(self.path).encode()) > UNIX_PATH_MAX:
            raise ValueError(
                f"socket path {self.path} is longer than {UNIX_PATH_MAX} bytes; use a shorter sim dir"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a simulator that was killed
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(16)
        listener.settimeout(0.1)
        self._listener = listener
        self._stopping.clear()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"{self.name}-accept", daemon=True
        )
        self._accept_thread.start()

    @property
    def stopping(self) -> threading.Event:
        return self._stopping

    def stop(self) -> None:
        self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join()
            self._accept_thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            workers = list(self._workers)
        for worker in workers:
            worker.join()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(CONNECTION_IDLE_S)
            worker = threading.Thread(target=self._serve, args=(conn,), name=f"{self.name}-conn", daemon=True)
            with self._lock:
                self.connections += 1
                self._conns.add(conn)
                self._workers.add(worker)
            worker.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except OSError:
            pass  # the client went away (timed out, closed): nothing to answer
        finally:
            conn.close()
            with self._lock:
                self._conns.discard(conn)
                self._workers.discard(threading.current_thread())


def recv_exact(conn: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes. :raises ConnectionError: the peer closed first"""
    chunks = bytearray()
    while len(chunks) < size:
        chunk = conn.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            raise ConnectionError(f"peer closed after {len(chunks)} of {size} bytes")
        chunks += chunk
    return bytes(chunks)
