"""`ektp-agent run`: the service core that owns the peripherals, the outbox and the link.

One asyncio loop; blocking work on owner threads (one for the outbox, one per device,
paho's own for MQTT). Start-up order: simulator (with --simulate), keys, outbox (its
check and recovery), devices, API socket; then READY=1, without waiting for the
network. SIGTERM or SIGINT: stop taking requests, let the commit in progress finish,
publish the offline status, close everything, exit 0.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import errno
import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from agent import __version__
from agent.api import ApiError, ApiServer
from agent.capture import Applicant, CaptureError, capture_enrollment
from agent.clock import SIMULATE_ENV, STRETCH_FILE, clock_synced, forget_stretch, note_enrollment
from agent.config import AgentConfig
from agent.devices import SELF_TEST_TIMEOUT_S, Devices, build_drivers
from agent.health import NOT_YET_TESTED, HealthReporter
from agent.kiosk_keys import retired_public_keys
from agent.link import Link
from agent.log_buffer import LogBuffer
from agent.outbox import DiskFull, Outbox, OutboxError, OutboxStats, StoreFull
from agent.remote import RemoteCommands, status_json
from agent.remote_store import (
    Override,
    intervals_in_force,
    read_overrides,
    remove_overrides,
    settings_path,
    write_overrides,
)
from agent.sd_notify import Notifier
from agent.simulator import Simulator
from agent.synthetic import SyntheticRecords
from wire.command import Command
from wire.keys import load_central_public, load_kiosk_private
from wire.nik import InvalidNik
from wire.packet import seal
from wire.record import Demographics, EnrollmentRecord, InvalidRecord

log = logging.getLogger("ektp.service")

STATUS_EVERY_S = 5.0  # systemd STATUS= refresh
LINK_RESTART_S = 1.0
REMOTE_STOP_S = 20.0  # a remote command still running at a stop gets this long to finish
T = TypeVar("T")


REJECTED_IDS_LISTED = 100  # status names this many rejected packets; `queue` lists them all


class StartError(Exception):
    """The service cannot start here; the message says why and what to do."""


def check_data_dir(data_dir: Path, config_file: Path | None) -> None:
    """The data dir exists (made 0700 when missing) and this user can create files in it.

    :raises StartError: it cannot be made or written (read-only file system, permissions)
    """
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=data_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        why = "it is on a read-only file system" if exc.errno == errno.EROFS else exc.strerror
        where = f"kiosk.data_dir in {config_file}" if config_file else "kiosk.data_dir in the config"
        raise StartError(
            f"cannot write in the data dir {data_dir}: {why}. The service keeps its outbox, keys and "
            "state there. If the SD card went read-only after an error, check it (`dmesg`, fsck) and "
            f"reboot; otherwise make {data_dir} writable by the service's user "
            f"(`chown -R ektp:ektp {data_dir}`) or set {where} to a writable directory"
        ) from exc


REFUSED_FILE = "store-refused.json"  # in data_dir: the held bytes when the store last refused


def note_refusal(path: Path, held: int) -> None:
    """The store refused an enrollment with ``held`` bytes undelivered: kept on disk, so that a
    restarted service and the stopped-service status say full as the running one did.

    :raises OSError: the file cannot be written (the caller logs it)
    """
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"held_bytes": held}))
    os.replace(tmp, path)


def read_refusal(path: Path) -> int | None:
    """The held bytes of the last refusal noted in ``path``; None when none (or unreadable)."""
    try:
        held = json.loads(path.read_text())["held_bytes"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return held if type(held) is int and held >= 0 else None


def forget_refusal(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def queue_json(stats: OutboxStats, *, refused_at: int | None = None) -> dict[str, Any]:
    """The health document's ``queue``; ``refused_at``: the held bytes when the store last refused
    an enrollment (it stays full until something is freed, whatever the average packet says)."""
    full = stats.full or (refused_at is not None and stats.pending_bytes >= refused_at)
    return {
        "pending": stats.pending + stats.sent,
        "pending_bytes": stats.pending_bytes,
        "oldest_pending_age_s": stats.oldest_pending_age_s,
        "unsent": stats.pending,
        "sent_unacked": stats.sent,
        "rejected": stats.rejected,
        "damaged": stats.damaged,
        "delivered": stats.delivered,
        "near_full": stats.near_full or full,
        "full": full,
        "max_bytes": stats.max_bytes,
    }


class Service:
    def __init__(self, config: AgentConfig, *, simulate: bool, notifier: Notifier | None = None) -> None:
        self.config = config
        self.simulate = simulate
        self.notifier = notifier or Notifier()
        self.started = time.monotonic()
        self.db = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="outbox")
        self.stopping = asyncio.Event()
        self.commit_lock = asyncio.Lock()
        self.simulator: Simulator | None = None
        self.synthetic = SyntheticRecords()
        self._last_stats: OutboxStats | None = None
        self._refused_file = config.kiosk.data_dir / REFUSED_FILE
        # held bytes when the store last refused an enrollment (noted on disk: a restart keeps it)
        self._store_refused_at: int | None = read_refusal(self._refused_file)
        self._clock_stretch = config.kiosk.data_dir / STRETCH_FILE
        self.outbox: Outbox | None = None
        self.devices: Devices | None = None
        self.link: Link | None = None
        self.api: ApiServer | None = None
        self.remote: RemoteCommands | None = None
        self.log_buffer = LogBuffer()
        self._settings_file = settings_path(config.kiosk.data_dir)
        self.overrides: dict[str, Override] = {}  # intervals the centre set ({data_dir}/remote-settings.json)
        self._intervals_changed = asyncio.Event()
        self.reporter = HealthReporter(
            kiosk_id=config.kiosk.id,
            data_dir=config.kiosk.data_dir,
            outbox_path=config.outbox_path,
            devices=self._device_states,
            started=self.started,
        )

    # ------------------------------------------------------------------------- life cycle

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await self._start()
        except BaseException:
            await self._shutdown()
            raise
        assert self.outbox is not None
        self._last_stats = await self._db(self.outbox.stats)  # the READY status line shows the backlog
        self.notifier.ready(self._summary())
        log.info("ready: kiosk %s, %s", self.config.kiosk.id, self._summary())
        tasks = [
            asyncio.create_task(self._supervise_link(), name="link"),
            asyncio.create_task(self.remote.run(), name="remote"),  # type: ignore[union-attr]
            asyncio.create_task(self._monitor(), name="monitor"),
            asyncio.create_task(self._watchdog(), name="watchdog"),
        ]
        await self.stopping.wait()
        self.notifier.stopping()
        await self._shutdown(tasks)
        return 0

    async def _supervise_link(self) -> None:
        """The link handles network and outbox trouble itself; should a bug still end it,
        log it and start it again rather than run on silently without a link."""
        assert self.link is not None
        while True:
            try:
                await self.link.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the MQTT link stopped on an unexpected error; restarting it")
            if self.stopping.is_set():
                return
            await asyncio.sleep(LINK_RESTART_S)

    def _on_signal(self, sig: int) -> None:
        log.info("%s: stopping", signal.Signals(sig).name)
        self.stopping.set()

    async def _start(self) -> None:
        c = self.config
        logging.getLogger().addHandler(self.log_buffer)  # the `logs` command's lines, redacted
        check_data_dir(c.kiosk.data_dir, c.source)
        if os.environ.get(SIMULATE_ENV):
            log.warning(
                "$%s=%s: the clock is reported as that, whatever NTP says (a rehearsal setting; never on a"
                " production kiosk)",
                SIMULATE_ENV,
                os.environ[SIMULATE_ENV],
            )
        if self.simulate:
            self.simulator = Simulator(c.sim_dir)
            await asyncio.to_thread(self.simulator.attach_or_start)
        self.kiosk_key = load_kiosk_private(c.kiosk_private_key)
        # a salvage checks each packet with every key this kiosk signed with
        own_keys = [self.kiosk_key.public_key(), *retired_public_keys(c.kiosk_private_key)]
        self.central_keys = central = load_central_public(c.keys.central_public_key)
        self.outbox = await self._db(
            lambda: Outbox(c.outbox_path, max_bytes=c.store.max_bytes, kiosk_keys=own_keys)
        )
        self.devices = Devices(build_drivers(c, simulate=self.simulate), on_change=self._health_changed)
        self.link = Link(c, self.outbox, central, db=self.db, health=self.health)
        self.overrides = await asyncio.to_thread(read_overrides, self._settings_file)
        self._apply_intervals(publish=False)
        self.remote = RemoteCommands(
            c, self, self.log_buffer, kiosk_key=self.kiosk_key, centre_keys=[central.signing]
        )
        self.api = ApiServer(
            c.api_socket,
            self._handlers(),
            group=c.api.group,
            max_connections=c.api.max_connections,
            idle_timeout_s=c.api.idle_timeout_s,
        )
        await self.api.start()

    async def _shutdown(self, tasks: list[asyncio.Task[Any]] | None = None) -> None:
        if self.api is not None:
            await self.api.close()
        if self.remote is not None:  # a command running finishes (bounded); no new one starts
            await self.remote.stop()
            for task in tasks or []:
                if task.get_name() == "remote":
                    with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
                        await asyncio.wait_for(task, REMOTE_STOP_S)
        async with self.commit_lock:  # the commit in progress finishes; no new one starts
            pass
        if self.link is not None:
            await self.link.stop()
        for task in tasks or []:
            if task.get_name() == "link":
                with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
                    await asyncio.wait_for(task, 5)
            task.cancel()
        for task in tasks or []:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.devices is not None:
            await asyncio.to_thread(self.devices.close)
        if self.outbox is not None:
            await self._db(self.outbox.close)
        self.db.shutdown(wait=True)
        if self.simulator is not None:
            await asyncio.to_thread(self.simulator.stop)
        self.notifier.close()
        logging.getLogger().removeHandler(self.log_buffer)

    async def _monitor(self) -> None:
        """Self-test the devices at once (READY does not wait for them), then often enough
        that a fault shows within one health interval (or as the centre's selftest-interval says)."""
        assert self.devices is not None
        await self.devices.self_test_all()
        while True:
            self._intervals_changed.clear()
            try:  # a new interval from the centre counts from now
                await asyncio.wait_for(self._intervals_changed.wait(), self.selftest_interval_s())
                continue
            except TimeoutError:
                pass
            # Each self-test runs on its device's own thread, so it waits behind a capture in
            # progress and never interleaves with it; under a steady enrollment load the
            # devices are still tested every period.
            await self.devices.self_test_all()

    async def _watchdog(self) -> None:
        """WATCHDOG=1 only while the loop turns and the outbox's thread answers."""
        interval = self.notifier.watchdog_interval_s()
        last_status = 0.0
        while True:
            await asyncio.sleep(interval if interval else STATUS_EVERY_S)
            if interval:
                try:
                    await asyncio.wait_for(self._db(lambda: None), interval)
                except TimeoutError:
                    log.error(
                        "the outbox thread did not answer within %.1f s: not feeding the watchdog", interval
                    )
                    continue
                self.notifier.watchdog()
            if time.monotonic() - last_status >= STATUS_EVERY_S:
                if self.outbox is not None:
                    self._last_stats = await self._db(self.outbox.stats)
                self.notifier.status(self._summary())
                last_status = time.monotonic()

    # ------------------------------------------------------------------------- health

    def _device_states(self) -> dict[str, dict[str, str]]:
        if self.devices is None:
            return {}
        states = self.devices.states()
        for name, slot in self.devices.slots.items():
            if slot.checked_at is None:  # not a fault: its first self-test has not run yet
                states[name] = {"state": "absent", "detail": NOT_YET_TESTED}
        return states

    def _health_changed(self) -> None:
        if self.link is not None:
            self.link.health_changed()

    def _summary(self) -> str:
        link = self.link.stats if self.link else None
        state = "online" if link and link.connected else "offline"
        slots = self.devices.slots.values() if self.devices else []
        untested = [s.name for s in slots if s.checked_at is None]
        faulty = [s.name for s in slots if s.checked_at is not None and not s.health.passed]
        q = self._last_stats
        backlog = f"backlog {q.pending + q.sent} ({q.pending_bytes // 1_000_000} MB)" if q else "backlog ?"
        devices = f"faulty: {', '.join(faulty) or 'none'}"
        if untested:
            devices += f"; not yet tested: {', '.join(untested)}"
        return f"{backlog}; link {state}; {devices}"

    async def health(self) -> dict[str, Any]:
        assert self.outbox is not None and self.link is not None
        outbox = self.outbox
        stats = self._last_stats = await self._db(outbox.stats)
        if self._store_refused_at is not None and stats.pending_bytes < self._store_refused_at:
            self._store_refused_at = None  # something was freed since
            with contextlib.suppress(OSError):
                forget_refusal(self._refused_file)
        reason = None
        if stats.rejected:
            rows = await self._db(lambda: outbox.rejected(1))
            reason = rows[0].reason if rows else None
        doc = self.reporter.snapshot(
            queue=queue_json(stats, refused_at=self._store_refused_at),
            link=self.link.stats.to_json(),
            total=stats.total_committed,
            rejected_reason=reason,
        )
        if doc["host"]["clock_synchronised"]:
            await asyncio.to_thread(forget_stretch, self._clock_stretch)
        return doc

    # ------------------------------------------------------------------------- the local API

    def _handlers(self) -> dict[str, Callable[[dict[str, Any]], AsyncIterator[dict[str, Any]]]]:
        return {
            "status": self._api_status,
            "enroll": self._api_enroll,
            "sync": self._api_sync,
            "diag": self._api_diag,
            "queue": self._api_queue,
            "resubmit": self._api_resubmit,
            "reset-remote": self._api_reset_remote,
        }

    async def _api_status(self, _request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        assert self.outbox is not None
        doc = await self.health()
        doc["service"] = "running"
        outbox, count = self.outbox, doc["queue"]["rejected"]
        doc["rejected"] = await self._db(lambda: rejected_json(outbox, count))
        doc["remote"] = self.remote_status()
        yield doc

    async def _api_queue(self, _request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        assert self.outbox is not None
        rows = await self._db(self.outbox.undelivered)
        yield {"queue": [_queue_row(r) for r in rows]}

    async def _api_sync(self, _request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        assert self.link is not None and self.outbox is not None
        self.link.sync_now()
        outbox = self.outbox
        stats = await self._db(outbox.stats)
        rejected = await self._db(lambda: rejected_json(outbox, stats.rejected, listed=0))
        yield {
            "undelivered": stats.pending + stats.sent,
            "connected": self.link.stats.connected,
            "rejected": stats.rejected,
            "rejected_reason": rejected["reason"],
            "damaged": stats.damaged,
        }

    async def _api_resubmit(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        assert self.link is not None and self.outbox is not None
        packet_ids = request.get("packet_ids")
        every = request.get("rejected") is True
        if every == (packet_ids is not None):
            raise ApiError('give "packet_ids" (a list) or "rejected": true, one of the two', "bad-request")
        if packet_ids is not None and (
            not isinstance(packet_ids, list) or not all(isinstance(p, str) for p in packet_ids)
        ):
            raise ApiError('"packet_ids" must be a list of packet id strings', "bad-request")
        outbox = self.outbox
        result = await self._db(lambda: resubmit_packets(outbox, None if every else packet_ids))
        if result["resubmitted"]:
            self.link.sync_now()
        yield result

    async def _api_diag(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        assert self.devices is not None
        names = request.get("devices") or None
        unknown = [n for n in names or [] if n not in self.devices.slots]
        if unknown:
            raise ApiError(f"unknown or disabled device(s): {', '.join(unknown)}", "bad-request")
        async with self.commit_lock:
            results = await self.devices.self_test_all(names)
        for result in results.values():
            yield {"diag": result.to_json()}

    async def _api_enroll(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        count = int(request.get("count", 1))
        if not 1 <= count <= 100_000:
            raise ApiError("count must be 1..100000", "bad-request")
        seed = int(request.get("seed", 1))
        direct = bool(request.get("direct"))
        if direct and not request.get("synthetic"):
            raise ApiError(
                '"direct" builds synthetic records without the peripherals; it needs "synthetic"',
                "bad-request",
            )
        if request.get("synthetic") and not self.simulate:
            # Synthetic residents must never reach the centre looking like real ones.
            raise ApiError(
                "synthetic enrollments need simulated peripherals (`ektp-agent run --simulate`); this "
                "service runs with real peripherals and records real residents only",
                "not-simulated",
            )
        for i in range(count):
            if self.stopping.is_set():
                raise ApiError(
                    "the service is stopping; the remaining enrollments were not taken", "stopping"
                )
            async with self.commit_lock:
                try:
                    if direct:  # a load test: the generator's record, no peripherals
                        record = await asyncio.to_thread(self.synthetic.record, seed + i)
                    else:
                        applicant = await self._applicant(request, seed + i)
                        record = await capture_enrollment(self.devices, applicant)  # type: ignore[arg-type]
                    receipt = await self._commit(record)
                except CaptureError as exc:
                    raise ApiError(str(exc), exc.code) from exc
                except InvalidNik as exc:
                    raise ApiError(f"NIK: {exc}", "bad-request") from exc
                except InvalidRecord as exc:  # e.g. demographics that disagree with the NIK
                    raise ApiError(str(exc), "bad-request") from exc
                except StoreFull as exc:
                    if not isinstance(exc, DiskFull):
                        self._store_refused_at = exc.used_bytes
                        try:
                            note_refusal(self._refused_file, exc.used_bytes)
                        except OSError as note_exc:
                            log.warning(
                                "could not note the store's refusal in %s: %s", self._refused_file, note_exc
                            )
                    self._health_changed()
                    raise ApiError(str(exc), "store-full") from exc
                except OutboxError as exc:
                    raise ApiError(f"the outbox refused the enrollment: {exc}", "store-error") from exc
            self.link.wake()  # type: ignore[union-attr]
            yield {"receipt": receipt}

    async def _applicant(self, request: dict[str, Any], seed: int) -> Applicant:
        if request.get("synthetic"):
            if self.simulator is None:
                raise ApiError(
                    "synthetic enrollment needs simulated peripherals (`ektp-agent run --simulate`)",
                    "bad-request",
                )
            resident = await asyncio.to_thread(self.simulator.present, seed)
            demographics = Demographics(
                name=resident.name,
                sex=resident.sex,  # type: ignore[arg-type]
                birth_date=resident.birth_date,
                birth_place=resident.birth_place,
                address=resident.address,
                religion=resident.religion,
            )
            return Applicant(resident.nik, demographics)
        try:
            d = request["demographics"]
            demographics = Demographics(
                name=d["name"],
                sex=d["sex"],
                birth_date=dt.date.fromisoformat(d["birth_date"]),
                birth_place=d["birth_place"],
                address=d["address"],
                religion=d["religion"],
            )
            return Applicant(str(request["nik"]), demographics)
        except (KeyError, TypeError, ValueError) as exc:
            raise ApiError(
                f"an enrollment needs nik and demographics (name, sex, birth_date, ...): {exc}", "bad-request"
            ) from exc

    async def _commit(self, record: EnrollmentRecord) -> dict[str, Any]:
        assert self.outbox is not None
        c, key = self.config, self.kiosk_key
        central = self.central_keys.encryption
        synced = await asyncio.to_thread(clock_synced)

        def build(seq: int) -> Any:
            return seal(
                record,
                kiosk_id=c.kiosk.id,
                seq=seq,
                kiosk_key=key,
                central_public=central,
                clock_synced=synced,
                # a simulated kit's residents come from the simulator, whatever the request said
                synthetic=self.simulate,
            )

        outbox = self.outbox
        receipt = await self._db(lambda: outbox.commit(build))
        try:
            await asyncio.to_thread(note_enrollment, self._clock_stretch, synced=synced)
        except OSError as exc:  # only status's judgement of the clock depends on it
            log.warning("cannot note the unsynchronised clock in %s: %s", self._clock_stretch, exc)
        log.info(
            "committed enrollment seq %d (packet %s, %d bytes)", receipt.seq, receipt.packet_id, receipt.bytes
        )
        return {
            "packet_id": receipt.packet_id,
            "seq": receipt.seq,
            "created_at": receipt.created_at,
            "bytes": receipt.bytes,
        }

    async def _db(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.db, fn)

    # ------------------------------------------------------------------------- remote commands

    def api_handlers(self) -> dict[str, Callable[[dict[str, Any]], AsyncIterator[dict[str, Any]]]]:
        """The local API's handlers: the centre's diag, status, sync and resubmit run these."""
        return self._handlers()

    def enabled_devices(self) -> list[str]:
        return list(self.devices.slots) if self.devices is not None else []

    def health_interval_s(self) -> float:
        return intervals_in_force(self.config.health.interval_s, self.overrides)[0]

    def selftest_interval_s(self) -> float:
        """The centre's selftest-interval, else half the health interval in force."""
        return intervals_in_force(self.config.health.interval_s, self.overrides)[1]

    def remote_status(self) -> dict[str, Any]:
        return status_json(
            self.config,
            self.overrides,
            health_interval_s=self.health_interval_s(),
            selftest_interval_s=self.selftest_interval_s(),
            connection=self.remote.status_json() if self.remote is not None else None,
        )

    def _apply_intervals(self, *, publish: bool = True) -> None:
        """The intervals in force now, without a restart: the link's next health wait, the monitor's."""
        if self.link is not None:
            self.link.health_interval_s = self.health_interval_s()
            if publish:
                self.link.health_changed()  # at once, and the new interval counts from now
        self._intervals_changed.set()

    async def set_interval(self, verb: str, seconds: int, command: Command) -> dict[str, Any]:
        """The centre's selftest-interval or health-interval (bounds checked by wire.command)."""
        was = self.selftest_interval_s() if verb == "selftest-interval" else self.health_interval_s()
        overrides = {
            **self.overrides,
            verb: Override(seconds, command.issuer, command.issued_at, command.command_id),
        }
        await asyncio.to_thread(write_overrides, self._settings_file, overrides)
        self.overrides = overrides
        self._apply_intervals()
        log.info(
            "%s set to %d s by %s (was %g s); `ektp-agent config reset-remote` reverts it",
            verb,
            seconds,
            command.issuer,
            was,
        )
        return {
            "verb": verb,
            "seconds": seconds,
            "was": was,
            "health_interval_s": self.health_interval_s(),
            "selftest_interval_s": self.selftest_interval_s(),
            "revert": "ektp-agent config reset-remote",
        }

    async def _api_reset_remote(self, _request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        before = {
            "health-interval": self.health_interval_s(),
            "selftest-interval": self.selftest_interval_s(),
        }
        removed = await asyncio.to_thread(remove_overrides, self._settings_file)
        removed = {**removed, **self.overrides}
        self.overrides = {}
        self._apply_intervals()
        if removed:
            log.info("the centre's interval overrides reverted: %s", ", ".join(sorted(removed)))
        yield reset_json(removed, before, self.health_interval_s(), self.selftest_interval_s())

    async def reopen(self, device: str) -> dict[str, Any]:
        """Close and reopen a peripheral's port or handle on its own thread, then self-test it."""
        if self.devices is None or device not in self.devices.slots:
            return {
                "device": device,
                "state": "absent",
                "passed": False,
                "error": f"the {device} is disabled in the config (devices.{device}.enabled = false)",
            }
        devices = self.devices
        error = ""

        def close_and_open(driver: Any) -> None:
            driver.close()
            driver.open()

        async with self.commit_lock:  # never under an enrollment's capture
            try:
                await devices.call(device, close_and_open, timeout=SELF_TEST_TIMEOUT_S)
            except TimeoutError:
                error = f"reopening did not finish within {SELF_TEST_TIMEOUT_S:.0f} s"
            except Exception as exc:  # a driver error: the self-test below says what is wrong
                error = f"reopening failed: {exc}"
            result = await devices.self_test(device)
        log.info("%s reopened: %s%s", device, result.state.value, f" ({error})" if error else "")
        return {**result.to_json(), "reopened": not error, "error": error}


def reset_json(
    removed: dict[str, Override], before: dict[str, float], health_s: float, selftest_s: float
) -> dict[str, Any]:
    """What `config reset-remote` reverted: each override, the value it had and the one now in force."""
    now = {"health-interval": health_s, "selftest-interval": selftest_s}
    return {
        "reverted": [
            {"verb": verb, "seconds": o.seconds, "set_by": o.set_by, "set_at": o.set_at, "now_s": now[verb]}
            for verb, o in sorted(removed.items())
        ],
        "health_interval_s": health_s,
        "selftest_interval_s": selftest_s,
        "before": before,
    }


def _queue_row(r: Any) -> dict[str, Any]:
    row = {
        "packet_id": r.packet_id,
        "seq": r.seq,
        "created_at": r.created_at,
        "state": r.state,
        "bytes": r.bytes,
        "attempts": r.attempts,
    }
    if r.reason:
        row["reason"] = r.reason
    return row


def rejected_json(outbox: Outbox, count: int, *, listed: int = REJECTED_IDS_LISTED) -> dict[str, Any]:
    """The packets the centre rejected: how many, the first one's reason, the first ``listed`` ids."""
    rows = outbox.rejected(max(listed, 1)) if count else []
    return {
        "count": count,
        "reason": rows[0].reason if rows else None,
        "packet_ids": [r.packet_id for r in rows[:listed]],
    }


def resubmit_packets(outbox: Outbox, packet_ids: list[str] | None) -> dict[str, Any]:
    """Rejected -> pending for the ids named (None: every rejected packet).

    Returns ``{"resubmitted": N, "not_rejected": [{"packet_id", "state"}]}``, the latter
    naming each id that is not a rejected packet (state ``unknown`` when not in the store);
    those change nothing. The caller runs this on the outbox's owner thread (or with the
    service down), so no other write comes between the look and the change.
    """
    not_rejected: list[dict[str, str]] = []
    if packet_ids is not None:
        for packet_id in dict.fromkeys(packet_ids):
            info = outbox.info(packet_id)
            if info is None or info.state != "rejected":
                not_rejected.append({"packet_id": packet_id, "state": info.state if info else "unknown"})
        skip = {r["packet_id"] for r in not_rejected}
        packet_ids = [p for p in packet_ids if p not in skip]
    return {"resubmitted": outbox.resubmit(packet_ids), "not_rejected": not_rejected}


__all__ = [
    "Service",
    "StartError",
    "__version__",
    "check_data_dir",
    "queue_json",
    "rejected_json",
    "reset_json",
    "resubmit_packets",
]
