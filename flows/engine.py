"""The sync, as plain Python: pull each source into the store, unify, save the engagements.

``flows.sync`` wraps these steps as Prefect tasks; tests and the benchmarks call them directly.
Every batch is stored together with the cursor that covers it, so a run that dies at any point
leaves the store where a re-run continues correctly.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import gc
import hashlib
import importlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from accord.settings import AccordSettings
from connectors.base import SourceConnector, WorkUnit
from connectors.incremental import Batch
from connectors.retry import get_throttle
from engagement.mapping import Mapping
from engagement.model import UnifiedView
from engagement.partition import (
    ClientsTouched,
    Directory,
    client_ids,
    client_project_keys,
    group_counts,
    internal_meetings,
    load_directory,
    orphan_issues,
    partition_of,
    touched_clients,
    unify_groups,
)
from engagement.records import iso, parse_datetime
from flows.memory import limit_malloc_arenas, peak_rss_mb
from flows.unify_child import Failed, Hello, LogLine, Pending, Pull, Ready, Unify, relinked
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
    in_child: bool = False  # pulled by a unify child (``pull_in_child``), not the sync's process

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
    clients_recomputed: int | None = None  # the clients whose engagements were recomputed; None: all
    clients_during_pull: int = 0  # of those, unified while a slower pull went on (``EarlyUnify``)

    def add(self, view: UnifiedView) -> None:
        self.groups += 1
        self.engagements += len(view.engagements)
        for e in view.engagements:
            self.health[e.health.level] += 1
            self.rows.append(e.summary_json())
        if len(self.rows) >= 2 * ROWS_KEPT:
            self.keep_worst()
        self.unknown_stakeholders += len(view.unknown_stakeholders)
        self.ambiguous_meetings += len(view.ambiguous_meetings)

    def health_counts(self) -> dict[str, int]:
        return dict(self.health)

    def keep_worst(self) -> None:
        """Sort the rows and keep the ``ROWS_KEPT`` worst (``add`` lets up to twice as many pile up)."""
        self.rows.sort(key=row_order)
        del self.rows[ROWS_KEPT:]

    @classmethod
    def merged(cls, parts: Sequence[ViewSummary]) -> ViewSummary:
        """The summary of several partitions' runs: counts add, the worst rows of all are kept. The
        org-wide counts (``meetings_internal``, ``issues_without_engagement``) add too: exactly one
        partition computes them (``unify_and_store(counts=True)``), the others hold 0."""
        merged = cls()
        for part in parts:
            merged.engagements += part.engagements
            for level, n in part.health.items():
                merged.health[level] = merged.health.get(level, 0) + n
            merged.unknown_stakeholders += part.unknown_stakeholders
            merged.ambiguous_meetings += part.ambiguous_meetings
            merged.issues_without_engagement += part.issues_without_engagement
            merged.meetings_internal += part.meetings_internal
            merged.groups += part.groups
            merged.rows += part.rows
        merged.keep_worst()
        return merged


@dataclass
class SyncReport:
    started_at: datetime
    full: bool
    sources: dict[str, SourceReport] = field(default_factory=dict)
    view: ViewSummary | None = None
    health_changes: list[HealthChange] = field(default_factory=list)
    seconds: float = 0.0
    unify_children: list[PartitionFigures] = field(default_factory=list)  # the tail's child processes

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
                    "in_child": report.in_child,
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
            "clients_recomputed": view.clients_recomputed if view else None,
            "clients_during_pull": view.clients_during_pull if view else None,
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


# What a pull says of its progress: the source, and the touch keys its read may still write (``Batch.pending``).
Progress = Callable[[str, frozenset[str]], None]


def pull_unit(
    connector: SourceConnector,
    store: Store,
    unit: WorkUnit,
    *,
    upper: datetime,
    full: bool,
    reconcile: bool,
    stats: StreamStats,
    progress: Progress | None = None,
) -> None:
    """Pull one unit: each batch stored with its cursor. The ids a reconciling read says exist are
    staged in the store page by page, with the page's records; the batch with ``reconcile`` marks
    the rest of the unit's stored records deleted and moves the cursor, in one transaction.

    Only this pull's staged ids count (``SeenScope.run`` is unique to it); when it starts staging,
    what an earlier pull of the unit left (a crash before its reconcile) is dropped.

    A batch that says what is still ``pending`` is passed on to ``progress`` once it is stored, and
    from it on the read's writes are tracked, so that what it changes after a client was unified
    early is seen by the sync's final unify (``EarlyUnify``).
    """
    source = connector.source
    cursor = None if full else store.get_cursor(source, unit.stream, unit.partition)
    track = cursor is not None  # an incremental read: the store notes which clients its changes touch
    seen = SeenScope.new(source, unit.stream, unit.partition)
    staged = 0
    for batch in connector.read(unit, cursor, upper=upper, full=full, reconcile=reconcile):
        if (batch.stream, batch.partition) != (unit.stream, unit.partition):
            raise ValueError(f"{source}: a batch of {batch.stream}/{batch.partition} in the read of {unit}")
        track = track or batch.pending is not None
        update = CursorUpdate(source, unit.stream, unit.partition, batch.cursor) if batch.cursor else None
        existing = batch.existing_ids()
        if existing and not staged:
            store.clear_seen(seen)
        staged += len(existing)
        if batch.reconcile:
            result = store.apply_batch(batch.records, seen=seen, seen_ids=existing, track=track)
            reconciled = CursorUpdate(source, unit.stream + RECONCILED_SUFFIX, unit.partition, iso(upper))
            stats.reconciled_deleted += store.reconcile(
                seen, staged=staged, cursors=[c for c in (update, reconciled) if c], stamp=upper, track=track
            )
        else:
            result = store.apply_batch(batch.records, update, seen=seen, seen_ids=existing, track=track)
        stats.add_batch(batch, result)
        if batch.pending is not None and progress is not None:
            progress(source, batch.pending)
        # Not held while the connector fetches and decodes the next page: at most one page per
        # thread is alive (``benchmarks/probe_pull.py``).
        del batch, existing


# The unify pool of the sync whose pull is under way, seen by ``pull_source`` in the pull's threads
# and Prefect tasks (both run in a copy of the sync's context): it pulls the sources its children take.
PULLS_ELSEWHERE: contextvars.ContextVar[UnifyPool | None] = contextvars.ContextVar(
    "accord_pulls_elsewhere", default=None
)


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
    progress: Progress | None = None,
) -> SourceReport:
    """Pull every unit of one source, up to the source's concurrency setting at a time: here, or in a
    unify child of the sync when one takes ``source`` (``UnifyPool.pull``) and no request budget
    throttles it (the budget's throttle lives in this process). ``progress``: see ``pull_unit``."""
    started = time.perf_counter()
    elsewhere = PULLS_ELSEWHERE.get()
    if (
        elsewhere is not None
        and connector_factory is build_connector
        and get_throttle(source) is None
        and elsewhere.takes(source)
    ):
        pulled = elsewhere.pull(source, settings, mapping, upper=upper, full=full, reconcile=reconcile)
        # As this sync saw it: with the wait for the child to start and for its answer.
        pulled.seconds = max(pulled.seconds, time.perf_counter() - started)
        return pulled
    report = SourceReport(source)
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
            pull_unit(connector, store, unit, upper=upper, full=full, reconcile=due, stats=stats, progress=progress)
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
    store: Store,
    mapping: Mapping,
    now: datetime,
    *,
    partition: int = 0,
    partitions: int = 1,
    counts: bool = True,
    clients: AbstractSet[str] | None = None,
    directory: Directory | None = None,
    internal: int | None = None,
    changes: list[HealthChange] | None = None,
) -> tuple[ViewSummary, list[HealthChange]]:
    """Recompute and store the engagements of one partition of clients, group by group, so memory
    holds one group's issues and meetings at a time; drop the partition's vanished engagements.
    ``counts``: also compute the org-wide counts (``org_counts``), which do not depend on the
    partition: one of the partitions of a run computes them, the others leave them 0; ``internal``:
    the meetings without a client attendee, when counted already (``EarlyUnify``). ``clients``:
    only those clients' (``plan_recompute``); the summary then covers those only (``stored_summary``
    gives the whole one). ``changes``: the list the health changes are added to as each group is
    stored (also when a later group fails: what was stored is reported); returned."""
    directory = directory or load_directory(store, mapping)
    summary = ViewSummary()
    changes = [] if changes is None else changes
    per_client: dict[str, tuple[int, int]] = {}
    groups = unify_groups(
        store, mapping, now, partition=partition, partitions=partitions, directory=directory, clients=clients
    )
    for group, view in groups:
        changes.extend(store.save_engagements(view.engagements, now, view.valid_until))
        per_client.update(group_counts(group, view))
        summary.add(view)

    def in_partition(client: str | None) -> bool:
        return partition_of(client, partitions) == partition

    store.save_client_counts(per_client, replacing=in_partition if clients is None else None)
    live = {o.id for o in directory.opportunities}
    changes.extend(store.drop_engagements_except(live, in_partition))
    if counts:
        summary.meetings_internal = internal_meetings(store, directory) if internal is None else internal
        summary.issues_without_engagement = orphan_issues(store, directory)
    summary.keep_worst()
    return summary, changes


UNIFY_BASIS = CursorUpdate("accord", "unify_basis", "", None)  # the cursor row holding ``unify_basis``
ENGAGEMENT_CODE = Path(__file__).resolve().parent.parent / "engagement"


@functools.cache
def _engagement_code_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(ENGAGEMENT_CODE.glob("*.py")):
        digest.update(path.name.encode("utf-8") + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def unify_basis(mapping: Mapping) -> str:
    """What stored engagements were computed with besides the records and the time: the mapping and
    the code of ``engagement/``. When it differs from the stored one, every engagement is recomputed."""
    return hashlib.sha256(f"{_engagement_code_digest()}:{mapping.model_dump_json()}".encode()).hexdigest()


@dataclass(frozen=True)
class RecomputePlan:
    """Which clients' engagements a sync's unify recomputes: those the pulled changes touch
    (``Store.touched_keys``, ``engagement.partition.touched_clients``) and those with an engagement
    whose horizon has passed (``Store.engagements_due``); every client (None) when the stored ones
    were computed with another mapping or code, or the changes touch everyone (a full read)."""

    clients: frozenset[str] | None
    upto: int  # the last ``touched`` row read: cleared once every partition is stored
    basis: str
    directory: Directory
    touched: int  # distinct touch keys read
    meetings_internal: int | None = None  # counted already (``EarlyUnify``): the unify need not


def plan_recompute(store: Store, mapping: Mapping, now: datetime) -> RecomputePlan:
    directory = load_directory(store, mapping)
    basis = unify_basis(mapping)
    upto, keys = store.touched_keys()
    clients: set[str] | None = None
    if store.get_cursor(UNIFY_BASIS.source, UNIFY_BASIS.stream) == basis:
        clients = touched_clients(store, directory, keys, store.engagement_clients())
        if clients is not None:
            clients.update(client or "" for client in store.engagements_due(now).values())
    return RecomputePlan(frozenset(clients) if clients is not None else None, upto, basis, directory, len(keys))


def stored_summary(store: Store, computed: ViewSummary, recomputed: int | None) -> ViewSummary:
    """The summary of every stored engagement after a unify that recomputed some clients (``computed``
    is what it recomputed; its org-wide counts are kept)."""
    unknown, ambiguous = store.client_count_totals()
    health = store.health_counts()
    return ViewSummary(
        engagements=sum(health.values()),
        health=health,
        unknown_stakeholders=unknown,
        ambiguous_meetings=ambiguous,
        issues_without_engagement=computed.issues_without_engagement,
        meetings_internal=computed.meetings_internal,
        groups=computed.groups,
        rows=store.engagement_rows(row_order, ROWS_KEPT),
        clients_recomputed=recomputed,
    )


def recompute(
    store: Store, mapping: Mapping, now: datetime, pool: UnifyPool | None = None, early: EarlyUnify | None = None
) -> tuple[ViewSummary, list[HealthChange], list[PartitionFigures]]:
    """The sync's unify: recompute and store the engagements of the clients ``plan_recompute`` names
    (in the pool's processes, or here), then forget the touches it read and note the basis. A unify
    that fails forgets nothing, and the next one recomputes every client. After ``early`` rounds
    (``EarlyUnify``), the clients they did not unify and those touched since are recomputed."""
    recomputed: int | None = None
    if early is not None and early.plan is not None:
        plan, recomputed = early.final_plan(now)
    else:
        plan = plan_recompute(store, mapping, now)
        recomputed = None if plan.clients is None else len(plan.clients)
    figures: list[PartitionFigures] = []
    try:
        if pool is not None:
            summary, changes, figures = pool.unify_and_store(store, mapping, now, plan)
        else:
            summary, changes = unify_and_store(
                store, mapping, now, clients=plan.clients, directory=plan.directory, internal=plan.meetings_internal
            )
        if early is not None and early.plan is not None:
            early.settle_counts()
    except Exception:
        # Some partitions may be stored, others not: the next sync recomputes every client.
        try:
            store.set_cursor(UNIFY_BASIS)
        except Exception as exc:  # the store itself failing: its error is the one raised
            log.warning("could not forget the unify basis after a failed unify: %s", _one_line(exc))
        raise
    if plan.clients is not None:
        summary = stored_summary(store, summary, recomputed)
    if early is not None:
        changes = early.changes + changes
        summary.clients_during_pull = len(early.clients)
    log.info(
        "engagements of %s clients recomputed (%d touch keys)",
        "all" if recomputed is None else recomputed,
        plan.touched,
    )
    if plan.upto:
        store.clear_touched(plan.upto)
    store.set_cursor(replace(UNIFY_BASIS, value=plan.basis))
    return summary, changes, figures


class EarlyUnify:
    """The sync's unify of the clients whose records are all stored, while a slower pull in a unify
    child goes on: Jira's full read settles its projects chunk by chunk (``Batch.pending``), and the
    sync's own process is idle once its pulls have ended.

    ``run``, in the sync's thread after its own pulls: each time the child says fewer projects are
    pending (``UnifyPool.pull`` hands ``pending`` over), the clients still to recompute none of whose
    projects is pending are unified here, one round, while the child reads on. The first round takes
    the plan (``plan_recompute``: the touches so far, up to id ``upto``, and the basis); ``recompute``
    then unifies the clients no round did, and every client the writes after ``upto`` touch (a read
    that says ``pending`` is tracked: an issue moved out of a settled project, or deleted by the
    read's reconcile, names it). That is sound because the pull's batches are stored one after
    another by one thread, after every other pull ended: a touch not yet committed when ``upto`` was
    read gets a larger id, on SQLite and PostgreSQL alike.
    """

    def __init__(self, store: Store, mapping: Mapping, now: datetime) -> None:
        self.store, self.mapping, self.now = store, mapping, now
        # Only the latest of what each pull has pending is kept: at large a round can take seconds
        # while chunks end, and each says up to thousands of project keys (a queue of every message
        # held 40 MB more at the first round).
        self._news = threading.Condition()
        self._latest: dict[str, frozenset[str]] = {}
        self._ended: set[str] = set()
        self._version = 0
        self.plan: RecomputePlan | None = None  # the first round's
        self.candidates: frozenset[str] = frozenset()  # the clients that plan recomputes
        self.clients: set[str] = set()  # those unified by the rounds
        self._rounds: list[tuple[int, frozenset[str]]] = []  # each round's last touch id before it read, and clients
        self.changes: list[HealthChange] = []
        self.rounds = 0
        self.seconds = 0.0
        self.cpu_s = 0.0
        self.failed = False
        self._projects: dict[str, frozenset[str]] = {}
        self.internal: int | None = None  # meetings without a client attendee

    def pending(self, source: str, keys: frozenset[str]) -> None:
        """Thread-safe: what ``source``'s read may still write (``Batch.pending``), now stored."""
        with self._news:
            self._latest[source] = keys
            self._version += 1
            self._news.notify()

    def finished(self, source: str) -> None:
        """Thread-safe: ``source``'s pull has ended (done or failed)."""
        with self._news:
            self._ended.add(source)
            self._version += 1
            self._news.notify()

    def run(self, running: AbstractSet[str]) -> None:
        """Until every source of ``running`` has finished: a round after each change of what they
        have pending, once each of them has said it (a source that says nothing allows no round).
        Run it on a thread of its own: on Linux it lowers that thread's priority (``ROUND_NICE``), so
        the cores go to the pulls first, and the rounds take what they leave."""
        nice = ROUND_NICE if sys.platform.startswith("linux") else 0
        if nice:  # this thread only (Linux's per-thread priority); a thread cannot take it back
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        seen = 0
        while True:
            with self._news:
                while self._version == seen:
                    self._news.wait()
                seen = self._version
                waiting = set(running) - self._ended
                pending = [self._latest[source] for source in waiting if source in self._latest]
            if not waiting:
                break
            if len(pending) == len(waiting):
                self.unify_settled(frozenset().union(*pending))
        log.info(
            "during the pull: %d clients unified in %d rounds, %.2f s (%.2f s of CPU)",
            len(self.clients),
            self.rounds,
            self.seconds,
            self.cpu_s,
        )

    def unify_settled(self, pending: frozenset[str]) -> int:
        """One round: the clients still to recompute none of whose projects is ``pending``; how many.
        A round that fails ends the rounds (its clients are left to ``recompute``)."""
        if self.failed or any(key[:2] != "p:" for key in pending):
            return 0  # after a failure, or keys other than projects (nothing known settled)
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            settled = self._unify_settled(pending)
        except Exception as exc:
            self.failed = True
            log.warning("unify during the pull failed, left to the unify after it: %s", _one_line(exc))
            return 0
        finally:
            self.seconds += time.perf_counter() - started
            self.cpu_s += time.thread_time() - cpu
        if settled:
            log.info(
                "unified %d clients during the pull (round %d, %d pending projects)",
                len(settled),
                self.rounds,
                len(pending),
            )
        return len(settled)

    def _unify_settled(self, pending: frozenset[str]) -> frozenset[str]:
        if self.plan is None:
            plan = plan_recompute(self.store, self.mapping, self.now)
            projects = client_project_keys(plan.directory)
            internal = internal_meetings(self.store, plan.directory)  # the calendars are pulled
            self.candidates = frozenset(client_ids(plan.directory) if plan.clients is None else plan.clients)
            self.plan, self._projects, self.internal = plan, projects, internal
            upto = plan.upto
        else:
            upto = self.store.touched_upto()
        settled = frozenset(
            client for client in self.candidates - self.clients if not self._projects.get(client, frozenset()) & pending
        )
        if settled:
            # The changes of the groups a failing round stored are reported too (the final unify
            # finds those engagements as stored).
            unify_and_store(
                self.store,
                self.mapping,
                self.now,
                counts=False,
                clients=settled,
                directory=self.plan.directory,
                changes=self.changes,
            )
            self.clients |= settled
            self._rounds.append((upto, settled))
            self.rounds += 1
        return settled

    def final_plan(self, now: datetime) -> tuple[RecomputePlan, int | None]:
        """What ``recompute`` unifies after the rounds, and how many clients the sync recomputed in
        all (None: every one): the clients to recompute that no round unified; any other client a
        write after the first round's start touched, unless a round unified it and no write after
        that round's start touched it; and those due. The later touches are read once; each round's
        are those of them after its start (the latest round first, adding keys as the start falls)."""
        first = self.plan
        if first is None:
            raise RuntimeError("no round was planned")
        last = self.store.touched_since(first.upto)  # key -> its latest touch id
        touched = ClientsTouched(self.store, first.directory, self.store.engagement_clients())
        later = sorted(last, key=last.__getitem__, reverse=True)
        seen, since, every = 0, set[str](), False  # keys so far (latest first), their clients, or all
        stale: set[str] = set()

        def take(start: int) -> None:  # the keys touched after ``start`` that are not in yet
            nonlocal seen, every
            fresh = seen
            while seen < len(later) and last[later[seen]] > start:
                seen += 1
            named = touched.of(set(later[fresh:seen])) if seen > fresh and not every else set()
            every = every or named is None
            since.update(named or ())

        for start, unified in sorted(self._rounds, key=lambda r: r[0], reverse=True):
            take(start)
            stale |= unified if every else since & unified
        take(first.upto)  # every later touch: the clients no round unified
        final: frozenset[str] | None = None
        if not every:
            stale |= (set(self.candidates) | since) - self.clients
            stale.update(client or "" for client in self.store.engagements_due(now).values())
            final = frozenset(stale)
        upto = max([first.upto, *last.values()])
        plan = RecomputePlan(final, upto, first.basis, first.directory, first.touched + len(last), self.internal)
        if final is None or first.clients is None:
            return plan, None
        return plan, len(final | self.clients)

    def settle_counts(self) -> None:
        """After a first plan of every client, drop the stored counts of clients that are gone, as a
        unify of every client does (``unify_and_store``'s ``replacing``)."""
        if self.plan is not None and self.plan.clients is None:
            everyone = client_ids(self.plan.directory)
            self.store.save_client_counts({}, replacing=lambda client: client not in everyone)


def forget_touches(store: Store) -> None:
    """For a sync whose engagements are recomputed elsewhere, all of them (``flows.partition``): the
    touches so far need no unify, and the next one here recomputes every client (no basis)."""
    store.clear_touched()
    store.set_cursor(UNIFY_BASIS)


class PullProcessEndedError(RuntimeError):
    """The unify child pulling a source ended during the pull (killed, out of memory). What it stored
    is kept with its cursors, as after a sync's own process ends; the next sync continues from there."""


class UnifyFailedError(RuntimeError):
    """A partition of the unify tail failed in its child process. The other partitions' engagements
    are stored; a re-run recomputes every engagement (each group is saved in one transaction, and
    unify compares digests, so what a failed run half-wrote is simply rewritten or kept)."""


@dataclass(frozen=True)
class PartitionFigures:
    """What a child process of the unify tail measured of itself, for the report and the benchmarks."""

    partition: int
    wall_s: float
    cpu_s: float  # the partition's unify, without the process's start-up
    peak_rss_mb: float  # the child process's VmHWM over its life (start-up, warm-up and unify)


@dataclass
class PartitionResult:
    summary: ViewSummary
    changes: list[HealthChange]
    figures: PartitionFigures


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int) -> None:
    """Run as each unify child starts (``flows.unify_child``): on Linux the kernel sends the child
    SIGKILL when the sync's process ends, however it ends (``kill -9`` included), so no child goes on
    writing engagements for a run that is gone. A parent that already ended before this ran is seen
    by ``getppid`` and the child leaves at once. Elsewhere a child ends when its input closes, after
    the partition it may be unifying."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("unify child: prctl(PR_SET_PDEATHSIG) failed (errno %d)", ctypes.get_errno())
    if os.getppid() != parent:
        os._exit(1)


def warm_unify_child(url: str, pulls: tuple[str, ...] = ()) -> int:
    """Run first in each child, before the pull ends: importing this module imports the engagement
    model and the store; building a ``Store`` loads the database's dialect and driver; the connectors
    of the sources it may pull are imported. What is left is the pull and the unify themselves."""
    Store(url).dispose()
    import_connectors(pulls)
    return os.getpid()


@contextmanager
def child_store(url: str) -> Iterator[Store]:
    """A store of a unify child's own, opened from ``url``, with the memory and garbage-collector
    settings of the sync, for one request."""
    limit_malloc_arenas()
    store = Store(url)
    try:
        with fewer_collections():
            yield store
    finally:
        store.dispose()


def pull_in_child(url: str, request: Pull, progress: Progress | None = None) -> SourceReport:
    """A source's pull in a unify child; its errors go back as they are (``portable``); ``progress``
    sends what its read says is pending to the sync's process."""
    with child_store(url) as store:
        report = pull_source(
            request.source,
            request.settings,
            request.mapping,
            store,
            upper=request.upper,
            full=request.full,
            reconcile=request.reconcile,
            progress=progress,
        )
    report.in_child = True
    return report


def unify_partition_in_child(
    url: str, mapping: Mapping, now: datetime, partition: int, partitions: int, clients: frozenset[str] | None = None
) -> PartitionResult:
    """One partition's unify in a child process, on a store of its own opened from ``url``, with the
    memory and garbage-collector settings of the sync; the org-wide counts are the parent's."""
    clock, cpu = time.perf_counter(), time.process_time()
    with child_store(url) as store:
        summary, changes = unify_and_store(
            store, mapping, now, partition=partition, partitions=partitions, counts=False, clients=clients
        )
    figures = PartitionFigures(
        partition,
        wall_s=round(time.perf_counter() - clock, 3),
        cpu_s=round(time.process_time() - cpu, 3),
        peak_rss_mb=peak_rss_mb(),
    )
    return PartitionResult(summary, changes, figures)


def _one_line(exc: BaseException) -> str:
    """An exception in a line, for the run's error: SQLAlchemy's message carries the statement and its
    parameters (record ids, addresses), so of its errors only the driver's first line."""
    orig = getattr(exc, "orig", None)  # sqlalchemy.exc.DBAPIError: the driver's exception
    shown = orig if isinstance(orig, BaseException) else exc
    lines = str(shown).strip().splitlines()
    text = lines[0][:300] if lines else ""
    if shown is not exc:
        return f"{type(exc).__name__} ({type(shown).__name__}: {text})"
    return f"{type(exc).__name__}: {text}"


PROJECT_ROOT = Path(__file__).resolve().parents[1]  # where ``python -m flows.unify_child`` finds the packages
CLOSE_WAIT_S = 600.0  # a child still unifying when the pool closes gets this long to finish

ENDED_ABRUPTLY = "its process ended abruptly (killed by a signal, or out of memory) before it returned"


class UnifyPool:
    """Child processes that share the unify tail with the sync's process: the clients are split into
    ``processes`` partitions (``engagement.partition.partition_of``); partition 0 is unified here,
    each other one in a child, at the same time, and the results merged. The stored engagements,
    the summary and the set of health changes are those of one process.

    Started at the start of the sync, before the pull: a child interpreter's start-up and imports
    (about 0.6 s of CPU) happen while the pull waits on the network, not after it. Each child is
    ``python -m flows.unify_child`` talking pickles over its standard streams (see there why not a
    ``multiprocessing`` child), dies with this process (``die_with_parent``), and opens the store
    from its URL. Medium org, the tail alone on 2 cores (``benchmarks/probe_unify.py --processes 2``,
    best of 3): 1.98 s wall in one process, 1.13 s in two (1.09 s of CPU here, 0.88 s in the child;
    the directory is read by both); peak RSS 102 MB in one, 101 MB + 99 MB in two.
    """

    def __init__(self, url: str, processes: int, pulls: Sequence[str] = ()) -> None:
        if processes < 2:
            raise ValueError(f"a unify pool needs 2 processes or more, not {processes}")
        self.url = url
        self.processes = processes
        # Which child pulls which source: the first source to the first child, and so on.
        self.pulls = {source: k for k, source in enumerate(pulls[: processes - 1])}
        self._children: list[subprocess.Popen[bytes]] = []
        self._pids: list[int | None] = []
        level = logging.getLogger("accord").getEffectiveLevel()
        try:
            for k in range(processes - 1):
                child = subprocess.Popen(  # our own interpreter and module
                    [sys.executable, "-m", "flows.unify_child"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    cwd=PROJECT_ROOT,
                )
                self._children.append(child)
                mine = tuple(source for source, child_index in self.pulls.items() if child_index == k)
                self._send(child, Hello(os.getpid(), url, mine, level))
        except BaseException:
            self.close()
            raise
        self._started = False
        self._start_lock = threading.Lock()
        self.early: EarlyUnify | None = None  # told what the children's pulls have pending
        self.own_s = self.waited_s = 0.0  # the last tail: this process's partition, then the wait for the others

    @staticmethod
    def _send(child: subprocess.Popen[bytes], message: Any) -> bool:
        """Write ``message`` to ``child``; False when it has ended (its pipe is closed)."""
        assert child.stdin is not None
        try:
            pickle.dump(message, child.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            child.stdin.flush()
        except (BrokenPipeError, OSError):
            return False
        return True

    @staticmethod
    def _receive(child: subprocess.Popen[bytes]) -> Any:
        """The child's next message other than a log record, or None when it ended before sending one.
        Its log records are handled here, by this process's logger of the same name, as they come."""
        assert child.stdout is not None
        while True:
            try:
                message = pickle.load(child.stdout)  # noqa: S301  # our own child's answers, on a pipe only we read
            except (EOFError, OSError, pickle.UnpicklingError):
                return None
            if not isinstance(message, LogLine):
                return message
            logger = logging.getLogger(message.record.name)
            if logger.isEnabledFor(message.record.levelno):
                logger.handle(message.record)

    @classmethod
    def start(cls, store: Store, processes: int, *, split_from: int = 0, pulls: Sequence[str] = ()) -> UnifyPool | None:
        """A pool for ``store``, or None when the tail runs in this process alone: one process asked
        for, a store that other processes cannot open (in-memory SQLite), or fewer stored engagements
        than ``split_from`` (a small org, whose tail does not repay a child's start-up; an empty
        store, a first sync of unknown size, is split)."""
        if processes < 2:
            return None
        if not store.shared_across_processes:
            log.info("unify in one process: the store is in memory, other processes cannot open it")
            return None
        if split_from > 0:
            held = store.engagement_count()
            if 0 < held < split_from:
                log.info("unify in one process: %d engagements, fewer than unify_split_from (%d)", held, split_from)
                return None
        return cls(store.url, processes, pulls)

    def wait_started(self) -> list[int]:
        """Wait until every child has started and imported; their process ids (benchmarks, tests).
        A child that ended before saying so is left as it is: its partition fails as ended abruptly."""
        with self._start_lock:  # the pulls' threads may ask at once
            if not self._started:
                for child in self._children:
                    ready = self._receive(child)
                    self._pids.append(ready.pid if isinstance(ready, Ready) else None)
                self._started = True
        return [pid for pid in self._pids if pid is not None]

    def takes(self, source: str) -> bool:
        """Whether a child of this pool pulls ``source``: one is assigned and has started (this waits
        for it). One that did not start leaves the pull to this process."""
        if source not in self.pulls:
            return False
        self.wait_started()
        if self._pids[self.pulls[source]] is None:
            log.warning("%s: the child process that was to pull it did not start; pulling here", source)
            return False
        return True

    def pull(
        self,
        source: str,
        settings: AccordSettings,
        mapping: Mapping,
        *,
        upper: datetime,
        full: bool,
        reconcile: bool | None,
    ) -> SourceReport:
        """``pull_source`` of ``source`` in its child, while this process pulls the others: each pull
        has an interpreter lock of its own (medium org at 50 ms: the Jira pull's requests wait less
        for it). The child's error is raised here as the child raised it (a ``ConnectorError`` keeps
        its type and attributes); its log records are logged here. One that ends during the pull
        fails it (``PullProcessEndedError``); its cursors are where its last stored page put them."""
        child = self._children[self.pulls[source]]
        answer = None
        if self._send(child, Pull(source, settings, mapping, upper, full, reconcile)):
            answer = self._receive(child)
            while isinstance(answer, Pending):
                if self.early is not None:
                    self.early.pending(answer.source, answer.keys)
                answer = self._receive(child)
        if isinstance(answer, SourceReport):
            return answer
        if isinstance(answer, Failed):
            log.warning("%s pull failed in its child process:\n%s", source, answer.detail)
            error = relinked(answer)
            if error is None:
                raise PullProcessEndedError(f"{source}: the pull failed in its child process: {answer.line}")
            raise error
        raise PullProcessEndedError(f"{source}: the child process pulling it: {ENDED_ABRUPTLY}")

    def unify_and_store(
        self, store: Store, mapping: Mapping, now: datetime, plan: RecomputePlan | None = None
    ) -> tuple[ViewSummary, list[HealthChange], list[PartitionFigures]]:
        """Every partition's unify, merged; health changes in partition order. Raises
        ``UnifyFailedError`` naming each child partition that failed, after this process's partition
        is stored."""
        n = self.processes
        self.wait_started()
        errors: list[str] = []
        asked: dict[int, subprocess.Popen[bytes]] = {}
        for k, (child, pid) in enumerate(zip(self._children, self._pids, strict=True), start=1):
            clients = plan.clients if plan is not None else None
            if pid is not None and self._send(child, Unify(mapping, now, k, n, clients)):
                asked[k] = child
            else:
                errors.append(f"partition {k} of {n}: {ENDED_ABRUPTLY}")
        clock = time.perf_counter()
        summary, changes = unify_and_store(
            store,
            mapping,
            now,
            partition=0,
            partitions=n,
            counts=True,
            clients=plan.clients if plan is not None else None,
            directory=plan.directory if plan is not None else None,
            internal=plan.meetings_internal if plan is not None else None,
        )
        self.own_s = time.perf_counter() - clock
        parts = [(summary, changes)]
        figures: list[PartitionFigures] = []
        for k, child in asked.items():
            answer = self._receive(child)
            if isinstance(answer, Failed):
                log.error("unify of partition %d of %d failed in its process:\n%s", k, n, answer.detail)
                errors.append(f"partition {k} of {n}: {answer.line}")
            elif isinstance(answer, PartitionResult):
                parts.append((answer.summary, answer.changes))
                figures.append(answer.figures)
            else:
                errors.append(f"partition {k} of {n}: {ENDED_ABRUPTLY}")
        self.waited_s = time.perf_counter() - clock - self.own_s
        log.info(
            "unify in %d processes: partition 0 here in %.2f s, then %.2f s waiting for the others",
            n,
            self.own_s,
            self.waited_s,
        )
        if errors:
            raise UnifyFailedError(
                "the engagements of "
                + "; ".join(errors)
                + f" (the other partitions are stored; the next sync recomputes all {n})"
            )
        merged = ViewSummary.merged([s for s, _ in parts])
        return merged, [c for _, part in parts for c in part], figures

    def close(self) -> None:
        """Stop the children: their input closes, they finish what they are doing and end; one that
        does not within ``CLOSE_WAIT_S`` is killed. Reaped here, so their CPU counts as this
        process's children's (``RUSAGE_CHILDREN``)."""
        for child in self._children:
            for stream in (child.stdin, child.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        for child in self._children:
            try:
                child.wait(timeout=CLOSE_WAIT_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self._children = []


# Starts the pull of every source and returns, per source, a function that waits for its report.
PullAll = Callable[[tuple[str, ...], datetime, bool, "bool | None"], dict[str, Callable[[], SourceReport]]]


def keeping_errors(pull_all: PullAll, errors: dict[str, BaseException]) -> PullAll:
    """``pull_all`` whose waits keep each failed source's exception in ``errors`` before raising it:
    ``run_sync`` reports a failed source as a line, its caller explains the exception itself."""

    def keeping(source: str, wait: Callable[[], SourceReport]) -> Callable[[], SourceReport]:
        def result() -> SourceReport:
            try:
                return wait()
            except Exception as exc:
                errors[source] = exc
                raise

        return result

    def kept(
        sources: tuple[str, ...], upper: datetime, full: bool, reconcile: bool | None
    ) -> dict[str, Callable[[], SourceReport]]:
        return {s: keeping(s, wait) for s, wait in pull_all(sources, upper, full, reconcile).items()}

    return kept


def threaded_pull_all(settings: AccordSettings, mapping: Mapping, store: Store) -> PullAll:
    """Pull the sources on plain threads (tests, benchmarks); the flow uses Prefect tasks instead."""

    def pull_all(
        sources: tuple[str, ...], upper: datetime, full: bool, reconcile: bool | None
    ) -> dict[str, Callable[[], SourceReport]]:
        pool = ThreadPoolExecutor(max_workers=len(sources), thread_name_prefix="pull")
        futures = {  # each in a copy of the caller's context: it holds the sync's pool (PULLS_ELSEWHERE)
            s: pool.submit(
                contextvars.copy_context().run,
                partial(pull_source, s, settings, mapping, store, upper=upper, full=full, reconcile=reconcile),
            )
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


def _report_of(source: str, wait: Callable[[], SourceReport]) -> SourceReport:
    """The pull's report, or one that says how it failed."""
    try:
        return wait()
    except Exception as exc:
        log.error("%s pull failed: %s", source, exc)
        return SourceReport(source, error=f"{type(exc).__name__}: {exc}")


def wait_for_pulls(
    waits: dict[str, Callable[[], SourceReport]], early: EarlyUnify | None, elsewhere: AbstractSet[str]
) -> dict[str, SourceReport]:
    """Each source's report, in the order of ``waits``. With ``early``: the pulls of this process
    first, then ``early.run`` while those of ``elsewhere`` (the unify children's) go on, each waited
    for on a thread of its own that says when it ended."""
    late = [source for source in waits if source in elsewhere] if early is not None else []
    reports = {source: _report_of(source, wait) for source, wait in waits.items() if source not in late}
    if early is not None and late:

        def wait_late(source: str) -> None:
            try:
                reports[source] = _report_of(source, waits[source])
            finally:
                early.finished(source)

        threads = [threading.Thread(target=wait_late, args=(s,), name=f"wait-{s}", daemon=True) for s in late]
        # The rounds on a thread of their own, which lowers its priority (``EarlyUnify.run``).
        threads.append(threading.Thread(target=early.run, args=(set(late),), name="early-unify", daemon=True))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return {source: reports[source] for source in waits}


ROUND_NICE = 10  # the early unify's thread yields the cores to the pulls still under way


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
    # Started before the pull, so that its processes start while the pull waits on the network.
    pool = (
        UnifyPool.start(
            store,
            settings.unify_processes,
            split_from=settings.unify_split_from,
            pulls=[s for s in settings.child_pulls if s in sources],
        )
        if unify
        else None
    )
    try:
        import_connectors(sources)
        elsewhere = PULLS_ELSEWHERE.set(pool)
        early = None
        if pool is not None and pool.pulls:
            early = pool.early = EarlyUnify(store, mapping, started)
        try:
            waits = (pull_all or threaded_pull_all(settings, mapping, store))(sources, started, full, reconcile)
            report.sources.update(wait_for_pulls(waits, early, set(pool.pulls) if pool is not None else set()))
        finally:
            PULLS_ELSEWHERE.reset(elsewhere)
        if unify:  # else the caller has the engagements recomputed elsewhere (flows.partition)
            try:
                report.view, report.health_changes, report.unify_children = recompute(
                    store, mapping, started, pool, early
                )
            except UnifyFailedError as exc:
                report.seconds = time.perf_counter() - clock
                store.finish_run(run_id, "failed", report.to_json() | {"error": str(exc)})
                raise
        else:
            forget_touches(store)
    finally:
        if pool is not None:
            pool.close()
    report.seconds = time.perf_counter() - clock
    store.finish_run(run_id, "failed" if report.failed else "completed", report.to_json())
    return report
