"""The sync, as plain Python: pull each source into the store, unify, save the engagements.

``flows.sync`` wraps these steps as Prefect tasks; tests and the benchmarks call them directly.
Every batch is stored together with the cursor that covers it, so a run that dies at any point
leaves the store where a re-run continues correctly.
"""

from __future__ import annotations

import gc
import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from accord.settings import AccordSettings
from connectors.base import SourceConnector, WorkUnit
from connectors.incremental import Batch
from engagement.mapping import Mapping
from engagement.model import UnifiedView
from engagement.partition import load_directory, org_counts, partition_of, unify_groups
from engagement.records import iso, parse_datetime
from flows.memory import limit_malloc_arenas
from store import BatchResult, CursorUpdate, HealthChange, SeenScope, Store

log = logging.getLogger("accord.sync")
SOURCES = ("salesforce", "jira", "google_calendar")
RECONCILED_SUFFIX = "#reconciled"
HEALTH_ORDER = {"red": 0, "amber": 1, "green": 2}
ROWS_KEPT = 200  # engagements a run's table shows (the worst first); a run keeps no more rows


def row_order(row: dict[str, Any]) -> tuple[int, str, str]:
    """Red, then amber, then green; by client and id within each."""
    return HEALTH_ORDER.get(row["health"], 3), row["client"], row["id"]


@dataclass
class StreamStats:
    source: str
    stream: str
    partitions: int = 0
    pages: int = 0
    pulled: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    reconciled_deleted: int = 0
    seconds: float = 0.0

    def add_batch(self, batch: Batch, result: BatchResult) -> None:
        self.pages += batch.meta.get("pages", 1)
        self.pulled += len(batch.records)
        self.inserted += result.inserted
        self.updated += result.updated
        self.unchanged += result.unchanged
        self.deleted += result.deleted

    @property
    def changed(self) -> int:
        return self.inserted + self.updated


@dataclass
class SourceReport:
    source: str
    streams: dict[str, StreamStats] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    def stats(self, stream: str) -> StreamStats:
        return self.streams.setdefault(stream, StreamStats(self.source, stream))


@dataclass
class ViewSummary:
    """What a run learned about the engagements, without holding them: counts, and the short rows
    (``Engagement.summary_json``) of the ``ROWS_KEPT`` worst, which are all its table shows."""

    engagements: int = 0
    health: dict[str, int] = field(default_factory=lambda: {"green": 0, "amber": 0, "red": 0})
    unknown_stakeholders: int = 0
    ambiguous_meetings: int = 0
    issues_without_engagement: int = 0
    meetings_internal: int = 0
    groups: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, view: UnifiedView) -> None:
        self.groups += 1
        self.engagements += len(view.engagements)
        for e in view.engagements:
            self.health[e.health.level] += 1
            self.rows.append(e.summary_json())
        if len(self.rows) >= 2 * ROWS_KEPT:
            self.rows.sort(key=row_order)
            del self.rows[ROWS_KEPT:]
        self.unknown_stakeholders += len(view.unknown_stakeholders)
        self.ambiguous_meetings += len(view.ambiguous_meetings)

    def health_counts(self) -> dict[str, int]:
        return dict(self.health)


@dataclass
class SyncReport:
    started_at: datetime
    full: bool
    sources: dict[str, SourceReport] = field(default_factory=dict)
    view: ViewSummary | None = None
    health_changes: list[HealthChange] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[SourceReport]:
        return [s for s in self.sources.values() if s.error]

    def to_json(self) -> dict[str, Any]:
        view = self.view
        return {
            "started_at": iso(self.started_at),
            "full": self.full,
            "seconds": round(self.seconds, 3),
            "sources": {
                name: {
                    "seconds": round(report.seconds, 3),
                    "error": report.error,
                    "streams": {
                        stream: {k: v for k, v in vars(s).items() if k not in ("source", "stream")}
                        for stream, s in sorted(report.streams.items())
                    },
                }
                for name, report in sorted(self.sources.items())
            },
            "engagements": view.engagements if view else None,
            "health": view.health_counts() if view else None,
            "unknown_stakeholders": view.unknown_stakeholders if view else None,
            "ambiguous_meetings": view.ambiguous_meetings if view else None,
            "issues_without_engagement": view.issues_without_engagement if view else None,
            "meetings_internal": view.meetings_internal if view else None,
            "health_changes": [
                {"id": c.engagement_id, "from": c.previous, "to": c.current} for c in self.health_changes
            ],
        }


CONNECTOR_PACKAGES = {
    "salesforce": "connectors.salesforce",
    "jira": "connectors.jira",
    "google_calendar": "connectors.google_calendar",
}


def import_connectors(sources: tuple[str, ...]) -> None:
    """Import the sources' connector packages, and the client libraries under them, in this thread.

    Called before the pulls start their threads. ``build_connector`` imports lazily, so each pull
    thread of a fresh process (every flow run) imported its client library while the others did
    the same: CPython takes one lock per module, and a thread importing ``html.entities`` (which
    locks the submodule, then imports its parent) and another importing ``html`` (the parent,
    then the submodule) wait on each other; Python 3.11 raises ``_DeadlockError`` and that
    source's pull failed ("deadlock detected by _ModuleLock('html.entities')", seen in a
    benchmark's first sync)."""
    for source in sources:
        if source in CONNECTOR_PACKAGES:
            importlib.import_module(CONNECTOR_PACKAGES[source])


def build_connector(source: str, settings: AccordSettings, mapping: Mapping) -> SourceConnector:
    """The connector of ``source``, configured; a clear error when its settings are missing."""
    if source == "salesforce":
        from connectors.salesforce import SalesforceConnector

        if settings.salesforce is None:
            raise MissingSettingsError("salesforce", "ACCORD_SALESFORCE__*")
        return SalesforceConnector(settings.salesforce, mapping)
    if source == "jira":
        from connectors.jira import JiraConnector

        if settings.jira is None:
            raise MissingSettingsError("jira", "ACCORD_JIRA__SERVER, ACCORD_JIRA__EMAIL, ACCORD_JIRA__API_TOKEN")
        return JiraConnector(settings.jira, mapping)
    if source == "google_calendar":
        from connectors.google_calendar import CalendarConnector

        if settings.google_calendar is None:
            raise MissingSettingsError("google_calendar", "ACCORD_GOOGLE_CALENDAR__*")
        return CalendarConnector(settings.google_calendar, mapping)
    raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")


class MissingSettingsError(ValueError):
    def __init__(self, source: str, variables: str) -> None:
        super().__init__(f"{source}: no connection settings; set {variables} or ACCORD_SANDBOX_CONTROL")


def _reconcile_due(store: Store, source: str, unit: WorkUnit, every: timedelta, now: datetime) -> bool:
    last = parse_datetime(store.get_cursor(source, unit.stream + RECONCILED_SUFFIX, unit.partition))
    return last is None or now - last >= every


def pull_unit(
    connector: SourceConnector,
    store: Store,
    unit: WorkUnit,
    *,
    upper: datetime,
    full: bool,
    reconcile: bool,
    stats: StreamStats,
) -> None:
    """Pull one unit: each batch stored with its cursor. The ids a reconciling read says exist are
    staged in the store page by page, with the page's records; the batch with ``reconcile`` marks
    the rest of the unit's stored records deleted and moves the cursor, in one transaction.

    Only this pull's staged ids count (``SeenScope.run`` is unique to it); when it starts staging,
    what an earlier pull of the unit left (a crash before its reconcile) is dropped.
    """
    source = connector.source
    cursor = None if full else store.get_cursor(source, unit.stream, unit.partition)
    seen = SeenScope.new(source, unit.stream, unit.partition)
    staged = 0
    for batch in connector.read(unit, cursor, upper=upper, full=full, reconcile=reconcile):
        if (batch.stream, batch.partition) != (unit.stream, unit.partition):
            raise ValueError(f"{source}: a batch of {batch.stream}/{batch.partition} in the read of {unit}")
        update = CursorUpdate(source, unit.stream, unit.partition, batch.cursor) if batch.cursor else None
        existing = batch.existing_ids()
        if existing and not staged:
            store.clear_seen(seen)
        staged += len(existing)
        if batch.reconcile:
            result = store.apply_batch(batch.records, seen=seen, seen_ids=existing)
            reconciled = CursorUpdate(source, unit.stream + RECONCILED_SUFFIX, unit.partition, iso(upper))
            stats.reconciled_deleted += store.reconcile(
                seen, staged=staged, cursors=[c for c in (update, reconciled) if c], stamp=upper
            )
        else:
            result = store.apply_batch(batch.records, update, seen=seen, seen_ids=existing)
        stats.add_batch(batch, result)
        # Not held while the connector fetches and decodes the next page: at most one page per
        # thread is alive (``benchmarks/probe_pull.py``).
        del batch, existing


def pull_source(
    source: str,
    settings: AccordSettings,
    mapping: Mapping,
    store: Store,
    *,
    upper: datetime,
    full: bool,
    reconcile: bool | None = None,
    connector_factory: Callable[[str, AccordSettings, Mapping], SourceConnector] = build_connector,
) -> SourceReport:
    """Pull every unit of one source, up to the source's concurrency setting at a time."""
    report = SourceReport(source)
    started = time.perf_counter()
    connector = connector_factory(source, settings, mapping)
    try:
        units = connector.work_units()
        every = timedelta(hours=mapping.salesforce.reconcile_every_hours)
        source_settings = getattr(settings, source)
        workers = max(1, int(getattr(source_settings, "concurrency", 1)))

        def run(unit: WorkUnit) -> None:
            stats = report.stats(unit.stream)
            due = reconcile if reconcile is not None else _reconcile_due(store, source, unit, every, upper)
            unit_started = time.perf_counter()
            pull_unit(connector, store, unit, upper=upper, full=full, reconcile=due, stats=stats)
            stats.partitions += 1
            stats.seconds += time.perf_counter() - unit_started

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"pull-{source}") as pool:
            for future in [pool.submit(run, unit) for unit in units]:
                future.result()
    finally:
        connector.close()
        report.seconds = time.perf_counter() - started
    return report


def unify_and_store(
    store: Store, mapping: Mapping, now: datetime, *, partition: int = 0, partitions: int = 1
) -> tuple[ViewSummary, list[HealthChange]]:
    """Recompute and store the engagements of one partition of clients, group by group, so memory
    holds one group's issues and meetings at a time; drop the partition's vanished engagements."""
    directory = load_directory(store, mapping)
    summary = ViewSummary()
    changes: list[HealthChange] = []
    for _, view in unify_groups(store, mapping, now, partition=partition, partitions=partitions, directory=directory):
        changes += store.save_engagements(view.engagements, now)
        summary.add(view)
    live = {o.id for o in directory.opportunities}
    changes += store.drop_engagements_except(live, lambda client: partition_of(client, partitions) == partition)
    summary.meetings_internal, summary.issues_without_engagement = org_counts(store, directory)
    return summary, changes


# Starts the pull of every source and returns, per source, a function that waits for its report.
PullAll = Callable[[tuple[str, ...], datetime, bool, "bool | None"], dict[str, Callable[[], SourceReport]]]


def threaded_pull_all(settings: AccordSettings, mapping: Mapping, store: Store) -> PullAll:
    """Pull the sources on plain threads (tests, benchmarks); the flow uses Prefect tasks instead."""

    def pull_all(
        sources: tuple[str, ...], upper: datetime, full: bool, reconcile: bool | None
    ) -> dict[str, Callable[[], SourceReport]]:
        pool = ThreadPoolExecutor(max_workers=len(sources), thread_name_prefix="pull")
        futures = {
            s: pool.submit(pull_source, s, settings, mapping, store, upper=upper, full=full, reconcile=reconcile)
            for s in sources
        }
        pool.shutdown(wait=False)
        return {s: f.result for s, f in futures.items()}

    return pull_all


_gc_lock = threading.Lock()
_gc_users = 0
_gc_before: tuple[int, int, int] = (700, 10, 10)


@contextmanager
def fewer_collections(threshold: int = 50_000) -> Iterator[None]:
    """Collect garbage less often while a sync builds hundreds of thousands of short-lived objects
    (records are acyclic; reference counting frees them): the start-up objects are frozen out of
    every collection and generation 0 collects after ``threshold`` allocations instead of 700.
    Measured on the medium org: pull CPU 23 s -> 19 s. Restored when the last concurrent sync of
    the process ends."""
    global _gc_users, _gc_before
    with _gc_lock:
        if _gc_users == 0:
            _gc_before = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(max(_gc_before[0], threshold), _gc_before[1], _gc_before[2])
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0:
                gc.set_threshold(*_gc_before)
                gc.unfreeze()


def run_sync(
    settings: AccordSettings,
    mapping: Mapping,
    store: Store,
    *,
    full: bool = False,
    reconcile: bool | None = None,
    now: datetime | None = None,
    sources: tuple[str, ...] = SOURCES,
    pull_all: PullAll | None = None,
    unify: bool = True,
) -> SyncReport:
    """Pull all sources concurrently, then unify; failures of one source are reported, not hidden.

    A source that fails leaves its cursors where its last stored page put them; the others are
    stored and the engagements recomputed, and the report (and the run's status) says what failed.
    """
    limit_malloc_arenas()
    with fewer_collections():
        return _run_sync(settings, mapping, store, full, reconcile, now, sources, pull_all, unify)


def _run_sync(
    settings: AccordSettings,
    mapping: Mapping,
    store: Store,
    full: bool,
    reconcile: bool | None,
    now: datetime | None,
    sources: tuple[str, ...],
    pull_all: PullAll | None,
    unify: bool,
) -> SyncReport:
    started = now or datetime.now(UTC)
    report = SyncReport(started_at=started, full=full)
    clock = time.perf_counter()
    run_id = store.start_run(full)
    import_connectors(sources)
    waits = (pull_all or threaded_pull_all(settings, mapping, store))(sources, started, full, reconcile)
    for source, wait in waits.items():
        try:
            report.sources[source] = wait()
        except Exception as exc:
            log.error("%s pull failed: %s", source, exc)
            report.sources[source] = SourceReport(source, error=f"{type(exc).__name__}: {exc}")
    if unify:  # else the caller has the engagements recomputed elsewhere (flows.partition)
        report.view, report.health_changes = unify_and_store(store, mapping, started)
    report.seconds = time.perf_counter() - clock
    store.finish_run(run_id, "failed" if report.failed else "completed", report.to_json())
    return report
