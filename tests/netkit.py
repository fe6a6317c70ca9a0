"""Real network parts for tests: a Mosquitto broker on a free loopback port with its own
config (start, stop, kill, restart on the same port, with a new config if need be), and a
TCP proxy the test controls (drop every connection, cut only the client's side and leave
the broker's half open, stall without closing, throttle, count connections)."""

from __future__ import annotations

import contextlib
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")
    if not found:
        raise RuntimeError("mosquitto is not installed: `make test` installs it (apt-get install mosquitto)")
    return found


class Broker:
    """A Mosquitto of the test's own: loopback only, no persistence, its own config and log."""

    def __init__(self, workdir: Path, *, extra_config: str = "") -> None:
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.configure(extra_config)
        self.proc: subprocess.Popen[bytes] | None = None

    def configure(self, extra_config: str = "") -> None:
        """(Re)write the config; a running broker reads it at its next start.

        Run as root, Mosquitto drops to the user "mosquitto", which cannot open the log or an
        ACL file in the test's private directory: it stays the test's user here."""
        user = f"user {pwd.getpwuid(os.getuid()).pw_name}\n" if os.getuid() == 0 else ""
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n{user}"
            f"log_dest file {self.log}\nlog_type error\nlog_type warning\nlog_type notice\n{extra_config}\n"
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_port(self.port)
        except TimeoutError:
            self.stop()
            raise

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class TcpProxy:
    """Forwards 127.0.0.1:port to a target; the test drops, stalls or throttles the link."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = int(self.listener.getsockname()[1])
        self.stalled = threading.Event()
        self.refusing = threading.Event()
        self.bytes_per_s: float | None = None
        self.flip_at: int | None = None  # flip one bit of the client's bytes at this offset, once
        self._upstream_bytes = 0  # client-to-broker bytes forwarded so far, every connection
        self.accepted = 0  # connections forwarded so far
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._held: list[socket.socket] = []  # broker-side halves left open by cut_client_side()
        self._lock = threading.Lock()
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._thread.start()

    def drop(self) -> None:
        """Close every forwarded connection at once (a link cut)."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def cut_client_side(self) -> None:
        """Close only the client's side of every connection: the broker's side stays open and
        silent (a half-open TCP connection, as when a mobile link changes address)."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
            self._held.extend(upstream for _client, upstream in pairs)
        for client, _upstream in pairs:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            client.close()

    def release_held(self) -> None:
        """Close the broker-side halves that cut_client_side() left open."""
        with self._lock:
            held, self._held = self._held, []
        for s in held:
            s.close()

    def stall(self, on: bool = True) -> None:
        """Stop forwarding without closing anything (a link that hangs)."""
        (self.stalled.set if on else self.stalled.clear)()

    def refuse(self, on: bool = True) -> None:
        """Refuse new connections (the broker is unreachable)."""
        (self.refusing.set if on else self.refusing.clear)()

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(5)
        self.drop()
        self.release_held()
        self.listener.close()
        os.close(self._stop_r)
        os.close(self._stop_w)

    def _run(self) -> None:
        while True:
            with self._lock:
                socks = [s for pair in self._pairs for s in pair]
            readable = [] if self.stalled.is_set() else socks
            watched: list[Any] = [self.listener, self._stop_r, *readable]
            r, _, _ = select.select(watched, [], [], 0.05)
            if self._stop_r in r:
                return
            if self.listener in r:
                conn, _ = self.listener.accept()
                if self.refusing.is_set():
                    conn.close()
                else:
                    try:
                        upstream = socket.create_connection(("127.0.0.1", self.target_port), 2)
                    except OSError:
                        conn.close()
                    else:
                        with self._lock:
                            self._pairs.append((conn, upstream))
                            self.accepted += 1
            for s in r:
                if s in (self.listener, self._stop_r):
                    continue
                self._forward(s)

    def _maybe_flip(self, data: bytes) -> bytes:
        """A bit flipped in transit, as a bad link would (TCP's checksum misses some)."""
        start, self._upstream_bytes = self._upstream_bytes, self._upstream_bytes + len(data)
        at = self.flip_at
        if at is None or not start <= at < self._upstream_bytes:
            return data
        self.flip_at = None
        i = at - start
        return data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1 :]

    def _forward(self, s: socket.socket) -> None:
        with self._lock:
            pair = next((p for p in self._pairs if s in p), None)
        if pair is None:
            return
        other = pair[1] if s is pair[0] else pair[0]
        try:
            data = s.recv(65536 if self.bytes_per_s is None else 4096)
            if not data:
                raise OSError("closed")
            if self.bytes_per_s:
                time.sleep(len(data) / self.bytes_per_s)
            if s is pair[0]:
                data = self._maybe_flip(data)
            other.sendall(data)
        except OSError:
            with self._lock:
                if pair in self._pairs:
                    self._pairs.remove(pair)
            for x in pair:
                x.close()
