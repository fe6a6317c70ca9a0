"""The web view's store: one thread owns it, and its fleet reading is kept a moment.

Every request's reads run on that thread, one after another (a store object is not shared
between threads). The fleet reading is reused for FLEET_CACHE_S: a room of browsers
refreshing the page and a Prometheus scraping /metrics cost one store reading, and while
one is being made the others wait for it instead of making their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from central.store import StoreUnavailable

if TYPE_CHECKING:
    from central.fleet import FleetRow
    from central.store import CentralStore

log = logging.getLogger("ektp.central.web")

FLEET_CACHE_S = 2.0
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FleetReading:
    rows: list[FleetRow]
    read_at: float  # epoch seconds, the centre's clock
    seconds: float  # how long the store took


class StoreReader:
    """Runs store reads on its own thread; opens the store on first use and again after it was lost."""

    def __init__(
        self,
        open_store: Callable[[], CentralStore],
        *,
        backlog_problem_hours: float,
        cache_s: float = FLEET_CACHE_S,
    ) -> None:
        self._open = open_store
        self.backlog_problem_hours = backlog_problem_hours
        self.cache_s = cache_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ektp-web-store")
        self._store: CentralStore | None = None  # only touched on the executor's thread
        self._fleet: FleetReading | None = None  # likewise

    async def call(self, read: Callable[[CentralStore], T]) -> T:
        """``read(store)`` on the store's thread. :raises StoreError: as the store raises it"""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, read)

    async def fleet(self) -> FleetReading:
        """The fleet's rows, read at most FLEET_CACHE_S ago."""
        return await self.call(self.cached_fleet)

    def cached_fleet(self, store: CentralStore) -> FleetReading:
        """(On the store's thread.) The fleet reading, made again when older than cache_s."""
        now = time.time()
        if self._fleet is None or not 0 <= now - self._fleet.read_at < self.cache_s:
            started = time.monotonic()
            rows = store.fleet(backlog_problem_hours=self.backlog_problem_hours)
            self._fleet = FleetReading(rows, time.time(), time.monotonic() - started)
        return self._fleet

    def _run(self, read: Callable[[CentralStore], T]) -> T:
        if self._store is None:
            self._store = self._open()
        try:
            return read(self._store)
        except StoreUnavailable:
            self._drop_store()  # the next request opens it again (PostgreSQL restarted, say)
            raise

    def _drop_store(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            try:
                store.close()
            except Exception as exc:  # closing a lost connection may fail in any way the driver likes
                log.debug("closing the lost store: %s", exc)

    def close(self) -> None:
        """Close the store on its thread and end the thread."""
        self._executor.submit(self._drop_store).result()
        self._executor.shutdown(wait=True)


class CachedFleetStore:
    """The store as /metrics sees it: ``fleet()`` of the whole fleet comes from the page's reading."""

    def __init__(self, store: CentralStore, reader: StoreReader) -> None:
        self._store = store
        self._reader = reader

    def fleet(self, kiosk: str | None = None, **kwargs: Any) -> list[FleetRow]:
        hours = kwargs.get("backlog_problem_hours", self._reader.backlog_problem_hours)
        if (
            kiosk is None
            and hours == self._reader.backlog_problem_hours
            and set(kwargs) <= {"backlog_problem_hours"}
        ):
            return self._reader.cached_fleet(self._store).rows
        return self._store.fleet(kiosk, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)
