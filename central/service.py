"""`ektp-central run`: the consumer as a long-running process with clean signal handling."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType

from central.config import CentralConfig
from central.consumer import CentralConsumer
from central.keyring import load_keyring
from central.store import CentralStore, open_store

log = logging.getLogger("ektp.central")


def run_central(config: CentralConfig) -> int:
    """Consume until SIGTERM or SIGINT; returns the process exit code."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    keys = load_keyring(config.central_private_key)  # the current pair and the retired ones
    if len(keys.generations) > 1:
        log.info("%d retired centre key pairs: packets sealed to them still open", len(keys.generations) - 1)

    def configured_store() -> CentralStore:
        store = open_store(config.store_url)
        store.quarantine_cap_bytes = config.quarantine_cap_bytes
        return store

    consumer = CentralConsumer(config, keys, configured_store)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        consumer.stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    consumer.run()
    log.info("stopped: %s", dict(consumer.counts))
    return 0
