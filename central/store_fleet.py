"""The fleet's tables in the central store: each kiosk's last status and health, and its health
history, kept bounded.

History is what the kiosk page plots: one row per kiosk per 5-minute step (centre's clock) in
``health_steps`` for ``[store] health_detail_hours``, then one per hour in ``health_hours`` until
``[store] health_retention_days``. A step keeps the number of snapshots it merged, the highest
backlog (packets, bytes, oldest age) and the worst state of each device: a fault of a minute
still shows in the hour that held it. At 10,000 kiosks publishing every 30 s that is 2.9 M
steps a day instead of 29 M snapshots, and after the first day 240,000 hourly rows a day.

A mixin of CentralStore (central.store): it uses the store's transaction and DDL types.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from central.fleet import (
    DEFAULT_BACKLOG_PROBLEM_HOURS,
    RANK_STATE,
    FleetRow,
    build_fleet,
    device_rank,
    health_fields,
)

if TYPE_CHECKING:
    from central.store import Sql

log = logging.getLogger("central.store")

STEP_S = 300  # the detailed history's step
HOUR_S = 3600
HISTORY_DEVICES = ("fingerprint", "signature", "iris", "camera")  # CONTRACT.md, Health JSON
CHANGED_BATCH = 500  # kiosks per query when a reading fetches the documents that changed
STATUS_RANK = {"online": 0, "offline": 1}  # within one connection, online comes before offline
FLEET_DOC_KINDS = ("status", "health")
_MEASURES = ("backlog", "backlog_bytes", "oldest_age_s")


def _history_ddl(table: str, float_type: str) -> str:
    devices = "".join(f" dev_{d} SMALLINT," for d in HISTORY_DEVICES)
    return (
        f"CREATE TABLE IF NOT EXISTS {table} ("
        " kiosk TEXT NOT NULL, bucket BIGINT NOT NULL, samples BIGINT NOT NULL,"
        f" backlog BIGINT, backlog_bytes BIGINT, oldest_age_s {float_type},{devices}"
        " PRIMARY KEY (kiosk, bucket))"
    )


class FleetTables:
    """Status, health and health history of the kiosks (mixed into CentralStore)."""

    FLOAT = "REAL"
    GREATEST = "MAX"  # the two-argument maximum of the backend (SQLite: max, PostgreSQL: GREATEST)
    display: str

    if TYPE_CHECKING:

        def _tx(self, *, write: bool = True) -> AbstractContextManager[Sql]: ...

    def _fleet_schema(self) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS kiosk_status ("
            " kiosk TEXT PRIMARY KEY, state TEXT NOT NULL, connection BIGINT,"
            " state_rank INTEGER NOT NULL, ts TEXT NOT NULL, doc TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS kiosk_health ("
            " kiosk TEXT PRIMARY KEY, ts TEXT NOT NULL, received_at TEXT NOT NULL, doc TEXT NOT NULL)",
            _history_ddl("health_steps", self.FLOAT),
            _history_ddl("health_hours", self.FLOAT),
            # compaction and retention select by time across kiosks
            "CREATE INDEX IF NOT EXISTS health_steps_bucket ON health_steps (bucket)",
            "CREATE INDEX IF NOT EXISTS health_hours_bucket ON health_hours (bucket)",
        ]

    # ------------------------------------------------------------------ writing

    def record_status(self, kiosk: str, doc: dict[str, Any]) -> bool:
        """Apply a kiosk's status document unless it is stale; returns whether it was applied.

        ``doc["state"]`` is "online" or "offline"; ``doc["connection"]``, the kiosk's
        per-connect counter, orders them: a document of a lower counter than the
        applied one is stale (a late Last Will), and within one connection offline
        follows online. A document without a counter is always applied.
        :raises StoreInputError: not a status document
        """
        return self.record_fleet_docs([(kiosk, "status", doc)])[0]

    def record_health(self, kiosk: str, doc: dict[str, Any]) -> None:
        """Keep ``doc`` as the kiosk's latest health snapshot and add it to its history.

        :raises StoreInputError: not a JSON object
        """
        self.record_fleet_docs([(kiosk, "health", doc)])

    def record_fleet_docs(
        self, items: Sequence[tuple[str, str, dict[str, Any]]], *, now: datetime | None = None
    ) -> list[bool]:
        """Status and health documents of any kiosks in one transaction (the consumer's batch).

        Each is checked first; one that fails its check raises before anything is written.
        Returns, for each, whether it was applied (a stale status is not). ``now`` (the centre's
        clock) is for tests and benchmarks that replay time.
        :raises StoreInputError: a bad kiosk id or document (naming which)
        """
        when = now or datetime.now(UTC)
        checked = [_checked(kiosk, kind, doc) for kiosk, kind, doc in items]
        stamp = _utc_text(when)
        epoch = int(when.timestamp())
        step = epoch - epoch % STEP_S
        # Every consumer records every kiosk's documents: two transactions must take their row
        # locks in one order (statuses, then health, each by kiosk; a kiosk's own documents keep
        # their order), or PostgreSQL ends one of them as a deadlock.
        order = sorted(range(len(checked)), key=lambda i: (checked[i][1] != "status", checked[i][0]))
        done: dict[int, bool] = {}
        with self._tx() as sql:
            for i in order:
                kiosk, kind, doc, text = checked[i]
                if kind == "status":
                    done[i] = self._apply_status(sql, kiosk, doc, text, stamp)
                else:
                    self._apply_health(sql, kiosk, doc, text, stamp, step)
                    done[i] = True
        applied = [done[i] for i in range(len(checked))]
        for (kiosk, kind, doc, _), done in zip(checked, applied, strict=True):
            if kind == "status" and not done:
                log.info(
                    "stale status of kiosk %s ignored: %s (connection %s)",
                    kiosk,
                    doc["state"],
                    doc.get("connection"),
                )
        return applied

    def _apply_status(self, sql: Sql, kiosk: str, doc: dict[str, Any], text: str, stamp: str) -> bool:
        state = doc["state"]
        return bool(
            sql(
                "INSERT INTO kiosk_status (kiosk, state, connection, state_rank, ts, doc) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (kiosk) DO UPDATE SET state = excluded.state, connection = excluded.connection,"
                " state_rank = excluded.state_rank, ts = excluded.ts, doc = excluded.doc"
                " WHERE excluded.connection IS NULL OR kiosk_status.connection IS NULL"
                " OR excluded.connection > kiosk_status.connection"
                " OR (excluded.connection = kiosk_status.connection AND excluded.state_rank >= kiosk_status.state_rank)",
                [kiosk, state, doc.get("connection"), STATUS_RANK[state], stamp, text],
            ).rowcount
        )

    def _apply_health(
        self, sql: Sql, kiosk: str, doc: dict[str, Any], text: str, stamp: str, step: int
    ) -> None:
        ts = doc["ts"] if isinstance(doc.get("ts"), str) else stamp
        sql(
            "INSERT INTO kiosk_health (kiosk, ts, received_at, doc) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (kiosk) DO UPDATE SET ts = excluded.ts, received_at = excluded.received_at,"
            " doc = excluded.doc",
            [kiosk, ts[:64], stamp, text],
        )
        sql(
            self._merge_sql(
                "health_steps",
                "VALUES (" + ", ".join("?" * (3 + len(_MEASURES) + len(HISTORY_DEVICES))) + ")",
            ),
            [kiosk, step, 1, *_measures(doc), *_device_ranks(doc)],
        )

    def _merge_sql(self, table: str, source: str) -> str:
        """An upsert into a history table that keeps the sum of samples and the highest of the rest."""
        g = self.GREATEST
        columns = ["kiosk", "bucket", "samples", *_MEASURES, *(f"dev_{d}" for d in HISTORY_DEVICES)]
        highest = [
            # SQLite's max() is NULL when either is NULL; PostgreSQL's GREATEST ignores NULLs: same result both
            f"{c} = {g}(COALESCE(excluded.{c}, {table}.{c}), COALESCE({table}.{c}, excluded.{c}))"
            for c in columns[3:]
        ]
        return (
            f"INSERT INTO {table} ({', '.join(columns)}) {source}"
            f" ON CONFLICT (kiosk, bucket) DO UPDATE SET samples = {table}.samples + excluded.samples, "
            + ", ".join(highest)
        )

    def compact_health_history(
        self, detail_hours: int, retention_days: int, *, now: datetime | None = None
    ) -> dict[str, int]:
        """Fold 5-minute steps older than ``detail_hours`` into hours; delete what is older than
        ``retention_days``. Whole hours only, so an hour is folded once. Returns the row counts
        ``{"folded", "hours_written", "deleted"}``."""
        epoch = int((now or datetime.now(UTC)).timestamp())
        fold_before = epoch - detail_hours * HOUR_S
        fold_before -= fold_before % HOUR_S
        keep_after = epoch - retention_days * 86400
        devices = ", ".join(f"MAX(dev_{d})" for d in HISTORY_DEVICES)
        select = (
            "SELECT kiosk, (bucket / 3600) * 3600, SUM(samples), MAX(backlog), MAX(backlog_bytes),"
            f" MAX(oldest_age_s), {devices} FROM health_steps WHERE bucket < ?"
            " GROUP BY kiosk, (bucket / 3600) * 3600"
        )
        with self._tx() as sql:
            written = sql(self._merge_sql("health_hours", select), [fold_before]).rowcount
            folded = sql("DELETE FROM health_steps WHERE bucket < ?", [fold_before]).rowcount
            deleted = sql("DELETE FROM health_hours WHERE bucket < ?", [keep_after]).rowcount
            deleted += sql("DELETE FROM health_steps WHERE bucket < ?", [keep_after]).rowcount
        return {"folded": folded, "hours_written": written, "deleted": deleted}

    # ------------------------------------------------------------------ reading

    def status(self, kiosk: str) -> dict[str, Any] | None:
        """The applied status of ``kiosk``: ``state, connection, ts`` (centre's time), or None."""
        with self._tx(write=False) as sql:
            row = sql("SELECT state, connection, ts FROM kiosk_status WHERE kiosk = ?", [kiosk]).fetchone()
        return None if row is None else {"state": row[0], "connection": row[1], "ts": row[2]}

    def health(self, kiosk: str) -> dict[str, Any] | None:
        """The kiosk's latest health snapshot as it sent it, or None."""
        with self._tx(write=False) as sql:
            row = sql("SELECT doc FROM kiosk_health WHERE kiosk = ?", [kiosk]).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def health_history(self, kiosk: str, since_s: float) -> list[dict[str, Any]]:
        """The kiosk's history from ``since_s`` (epoch seconds), hourly then 5-minute steps, in time order:
        ``bucket`` (epoch seconds, the step's start), ``span_s``, ``samples``, ``backlog``,
        ``backlog_bytes``, ``oldest_pending_age_s`` (the highest of the step) and ``devices``
        ({name: the worst state of the step, or None})."""
        start = int(since_s)
        columns = "bucket, samples, backlog, backlog_bytes, oldest_age_s, " + ", ".join(
            f"dev_{d}" for d in HISTORY_DEVICES
        )
        points = []
        with self._tx(write=False) as sql:
            for table, span in (("health_hours", HOUR_S), ("health_steps", STEP_S)):
                rows = sql(
                    f"SELECT {columns} FROM {table} WHERE kiosk = ? AND bucket >= ? ORDER BY bucket",
                    [kiosk, start - start % span],
                ).fetchall()
                points += [_point(row, span) for row in rows]
        points.sort(key=lambda p: (p["bucket"], p["span_s"]))
        return points

    def deliveries(self, kiosk: str, since_s: float, step_s: int) -> list[dict[str, int]]:
        """Packets of ``kiosk`` stored from ``since_s`` on, per step of ``step_s`` seconds of the centre's
        receive time: ``bucket`` (epoch seconds), ``packets``, ``bytes``; steps without any are left out."""
        since = _utc_text(datetime.fromtimestamp(since_s, UTC))
        with self._tx(write=False) as sql:
            rows = sql(
                "SELECT received_at, bytes FROM packets WHERE kiosk = ? AND received_at >= ?", [kiosk, since]
            ).fetchall()
        steps: dict[int, list[int]] = {}
        for received_at, size in rows:
            epoch = int(datetime.fromisoformat(received_at.replace("Z", "+00:00")).timestamp())
            step = steps.setdefault(epoch - epoch % step_s, [0, 0])
            step[0] += 1
            step[1] += int(size)
        return [{"bucket": b, "packets": n, "bytes": s} for b, (n, s) in sorted(steps.items())]

    def fleet(
        self,
        kiosk: str | None = None,
        *,
        backlog_problem_hours: float = DEFAULT_BACKLOG_PROBLEM_HOURS,
        now: datetime | None = None,
    ) -> list[FleetRow]:
        """One row per kiosk known from its key, status, health or packets (see central.fleet);
        with ``kiosk``, that kiosk's row only (none if the centre knows nothing of it)."""
        with _gc_paused():
            return self._fleet(kiosk, backlog_problem_hours, now)

    def _fleet(self, kiosk: str | None, backlog_problem_hours: float, now: datetime | None) -> list[FleetRow]:
        where, by_hint, params = "", "", [] if kiosk is None else [kiosk]
        if kiosk is not None:
            where, by_hint = " WHERE kiosk = ?", " AND kiosk_hint = ?"
        with self._tx(write=False) as sql:
            registered = [
                r[0]
                for r in sql(
                    "SELECT id FROM kiosks" + ("" if kiosk is None else " WHERE id = ?"), params
                ).fetchall()
            ]
            status = sql("SELECT kiosk, state, ts FROM kiosk_status" + where, params).fetchall()
            health = self._health_rows(sql, kiosk)
            counts = sql(
                "SELECT kiosk, COUNT(*), SUM(synthetic), MIN(seq), MAX(seq), MAX(received_at) FROM packets"
                + where
                + " GROUP BY kiosk",
                params,
            ).fetchall()
            # gaps in each kiosk's seq, by a window over the (kiosk, seq) index: never all seqs in memory
            gaps = sql(
                "SELECT kiosk, prev + 1, seq - 1 FROM ("
                " SELECT kiosk, seq, LAG(seq) OVER (PARTITION BY kiosk ORDER BY seq) AS prev FROM packets"
                + where
                + ") AS s WHERE seq - prev > 1 ORDER BY kiosk, seq",
                params,
            ).fetchall()
            counters = sql(
                "SELECT kiosk, duplicate_deliveries, quarantine_dropped FROM kiosk_counters" + where, params
            ).fetchall()
            quarantine = sql(
                "SELECT kiosk_hint, COUNT(*), SUM(bytes) FROM quarantine WHERE kiosk_hint IS NOT NULL"
                + by_hint
                + " GROUP BY kiosk_hint",
                params,
            ).fetchall()
        return build_fleet(
            registered=registered,
            status=status,
            health=health,
            counts=counts,
            gaps=gaps,
            counters=counters,
            quarantine=quarantine,
            now=now,
            backlog_problem_hours=backlog_problem_hours,
        )

    def _health_rows(self, sql: Sql, kiosk: str | None) -> list[tuple[str, str, str, dict[str, Any]]]:
        """(kiosk, ts, received_at, health_fields) of each kiosk's last health document.

        A whole-fleet reading parses only the documents whose ``received_at`` changed since this
        store object's last one (a web view reads every few seconds; at 10,000 kiosks parsing
        every document is most of a reading's time); the others come from what it kept.
        """
        if kiosk is not None:
            rows = sql(
                "SELECT kiosk, ts, received_at, doc FROM kiosk_health WHERE kiosk = ?", [kiosk]
            ).fetchall()
            return [(k, ts, at, health_fields(doc)) for k, ts, at, doc in rows]
        kept: dict[str, tuple[str, str, int, dict[str, Any]]] = getattr(self, "_health_kept", {})
        # a document's stamps and length tell whether it changed (two documents of one kiosk
        # in one millisecond, of one length, would show the first until its next one)
        stamps = sql("SELECT kiosk, ts, received_at, LENGTH(doc) FROM kiosk_health").fetchall()
        changed = [k for k, ts, at, n in stamps if kept.get(k, ("", "", -1))[:3] != (ts, at, n)]
        fresh: dict[str, tuple[str, str, int, dict[str, Any]]] = {}
        if len(changed) > len(stamps) // 2:
            query = [("SELECT kiosk, ts, received_at, doc FROM kiosk_health", [])]
        else:
            query = [
                (
                    "SELECT kiosk, ts, received_at, doc FROM kiosk_health WHERE kiosk IN ("
                    + ", ".join("?" * len(part))
                    + ")",
                    part,
                )
                for part in (changed[i : i + CHANGED_BATCH] for i in range(0, len(changed), CHANGED_BATCH))
            ]
        for text, params in query:
            for k, ts, at, doc in sql(text, params).fetchall():
                fresh[k] = (ts, at, len(doc), health_fields(doc))
        now_kept = {k: fresh.get(k) or kept[k] for k, _, _, _ in stamps if k in fresh or k in kept}
        self._health_kept = now_kept  # type: ignore[attr-defined]
        return [(k, ts, at, fields) for k, (ts, at, _, fields) in sorted(now_kept.items())]

    def totals(self) -> dict[str, int]:
        """Whole-store counts for /metrics: ``kiosks`` (registered), ``packets`` and ``synthetic``
        stored, ``quarantine_rows`` and ``quarantine_bytes``."""
        with self._tx(write=False) as sql:
            (kiosks,) = sql("SELECT COUNT(*) FROM kiosks").fetchone()
            packets, synthetic = sql("SELECT COUNT(*), SUM(synthetic) FROM packets").fetchone()
            rows, size = sql("SELECT COUNT(*), SUM(bytes) FROM quarantine").fetchone()
        return {
            "kiosks": int(kiosks),
            "packets": int(packets),
            "synthetic": int(synthetic or 0),
            "quarantine_rows": int(rows),
            "quarantine_bytes": int(size or 0),
        }

    def history_rows(self) -> dict[str, int]:
        """How many rows each history table holds (for `kiosk show` and the benchmarks)."""
        with self._tx(write=False) as sql:
            return {
                t: int(sql(f"SELECT COUNT(*) FROM {t}").fetchone()[0])
                for t in ("health_steps", "health_hours")
            }


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a reading builds its 10,000 rows: it makes no cycles,
    and the collector's passes over every new object were 40 % of a reading's time."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _checked(kiosk: str, kind: str, doc: Any) -> tuple[str, str, dict[str, Any], str]:
    """(kiosk, kind, doc, its JSON text) once all is checked. :raises StoreInputError:"""
    from central.store import StoreInputError, check_kiosk_id

    check_kiosk_id(kiosk)
    if kind not in FLEET_DOC_KINDS:
        raise StoreInputError(f"{kind!r} is not a fleet document kind ({', '.join(FLEET_DOC_KINDS)})")
    if not isinstance(doc, dict):
        raise StoreInputError(f"{kind} of kiosk {kiosk} is a {type(doc).__name__}, not a JSON object")
    if kind == "status":
        state = doc.get("state")
        if state not in STATUS_RANK:
            raise StoreInputError(f"status of kiosk {kiosk}: state {state!r} is not 'online' or 'offline'")
        connection = doc.get("connection")
        if connection is not None and (not isinstance(connection, int) or isinstance(connection, bool)):
            raise StoreInputError(f"status of kiosk {kiosk}: connection {connection!r} is not a whole number")
    try:
        text = json.dumps(doc, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StoreInputError(f"{kind} of kiosk {kiosk} is not plain JSON of finite numbers: {exc}") from None
    return kiosk, kind, doc, text


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _measures(doc: dict[str, Any]) -> list[Any]:
    queue = doc.get("queue") if isinstance(doc.get("queue"), dict) else {}
    pending, size, age = (_number(queue.get(k)) for k in ("pending", "pending_bytes", "oldest_pending_age_s"))
    big = 2**62  # a kiosk's number must fit a BIGINT column
    return [
        None if pending is None else int(min(max(pending, 0), big)),
        None if size is None else int(min(max(size, 0), big)),
        None if age is None else min(max(age, 0.0), 1e12),
    ]


def _device_ranks(doc: dict[str, Any]) -> list[int | None]:
    from central.fleet import NOT_YET_TESTED, UNTESTED

    devices = doc.get("devices") if isinstance(doc.get("devices"), dict) else {}
    ranks = []
    for name in HISTORY_DEVICES:
        device = devices.get(name)
        if not isinstance(device, dict):
            ranks.append(None)
            continue
        state = UNTESTED if device.get("detail") == NOT_YET_TESTED else device.get("state")
        ranks.append(device_rank(state if isinstance(state, str) else None))
    return ranks


def _point(row: Sequence[Any], span: int) -> dict[str, Any]:
    bucket, samples, backlog, size, age, *devices = row
    return {
        "bucket": int(bucket),
        "span_s": span,
        "samples": int(samples),
        "backlog": None if backlog is None else int(backlog),
        "backlog_bytes": None if size is None else int(size),
        "oldest_pending_age_s": None if age is None else float(age),
        "devices": {
            name: None if rank is None else RANK_STATE.get(int(rank))
            for name, rank in zip(HISTORY_DEVICES, devices, strict=True)
        },
    }


def _utc_text(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
