"""`ektp-central run`: the consumer as a long-running process with clean signal handling, and the
fleet web view beside it when ``[web] listen`` is set (uvicorn in a thread, its own store
connection, the consumer's counters on /metrics)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from central.config import CentralConfig
from central.consumer import CentralConsumer
from central.keyring import load_keyring
from central.metrics import CentreMetrics
from central.store import CentralStore, open_store

if TYPE_CHECKING:
    from central.web.server import WebServer

log = logging.getLogger("ektp.central")

EXIT_USAGE = 2


def run_central(config: CentralConfig) -> int:
    """Consume until SIGTERM or SIGINT; returns the process exit code (2: the web view cannot listen)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    keys = load_keyring(config.central_private_key)  # the current pair and the retired ones
    if len(keys.generations) > 1:
        log.info("%d retired centre key pairs: packets sealed to them still open", len(keys.generations) - 1)

    def configured_store() -> CentralStore:
        store = open_store(config.store_url)
        store.quarantine_cap_bytes = config.quarantine_cap_bytes
        return store

    metrics = CentreMetrics()
    consumer = CentralConsumer(config, keys, configured_store, metrics=metrics)
    web: WebServer | None = None
    if config.web.listen:
        from central.web.auth import WebAuthError
        from central.web.server import WebListenError

        try:
            web = start_web(config, configured_store, metrics)
        except (WebAuthError, WebListenError) as exc:
            print(f"ektp-central: {exc}", file=sys.stderr)
            return EXIT_USAGE

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        consumer.stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    try:
        consumer.run()
    finally:
        if web is not None:
            web.stop()
    log.info("stopped: %s", dict(consumer.counts))
    return 0


def start_web(
    config: CentralConfig, configured_store: Callable[[], CentralStore], metrics: CentreMetrics
) -> WebServer:
    """The web view serving in a thread of this process.

    :raises WebAuthError: a non-loopback listen without users, or a users file that cannot be used
    :raises WebListenError: the address cannot be listened on
    """
    from central.web.app import create_app
    from central.web.auth import check_exposure
    from central.web.server import WebServer, listen_socket

    host, port = config.web.address()
    check_exposure(host, config.web.users_file)  # the config loader refuses it too: a second guard
    app = create_app(config, configured_store, centre_metrics=metrics)
    server = WebServer(app, listen_socket(host, port))
    server.start()
    log.info("the fleet web view serves on %s", server.url)
    return server
