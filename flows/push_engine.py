"""The push, as plain Python: plan from the stored engagements, queue in the outbox, apply.

``plan_push`` reads only the store (engagements, what was pushed before, reminders read back from
Salesforce) and writes nothing. ``push`` records the plan in the outbox in one transaction, then
applies every due outbox item through the target writers, marking each chunk as it lands. A crash
anywhere leaves items pending; the re-run repeats them and the targets recognise the keys.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from accord.settings import AccordSettings
from connectors.base import TargetWriter, WriteRequest
from connectors.errors import ConnectorError
from engagement.mapping import Mapping
from engagement.model import Engagement
from engagement.partition import GROUP_SIZE, partition_of, unify_groups
from engagement.records import (
    SourceRecord,
    iso,
    opportunity_key,
    parse_date,
    parse_datetime,
    reminder_engagement,
)
from engagement.rules import KnownReminder, People, Reminder, StatusFingerprint, StatusUpdate, plan_rules
from engagement.wording import Wording, templates_dir
from flows.memory import limit_malloc_arenas
from store import Delivery, OutboxItem, Store
from store.outbox import DUE_PAGE, batch_of, holder

log = logging.getLogger("accord.push")
TARGETS = ("salesforce", "jira", "google_calendar")
REMINDER_KINDS = ("task", "calendar_event")
CALENDAR_SUFFIX = "-cal"


@dataclass(frozen=True)
class Skipped:
    engagement_id: str
    what: str
    why: str

    def to_json(self) -> dict[str, str]:
        return {"engagement": self.engagement_id, "what": self.what, "why": self.why}


ROWS_KEPT = 300  # plan rows (actions, and what is left alone) a push keeps for its report
FAILURES_KEPT = 200  # failed writes (key and error) a push keeps per target; all are counted


def action_json(item: OutboxItem, retry: bool = False) -> dict[str, Any]:
    if retry:
        action = "retry"
        reason = f"{item.reason} (attempt {item.attempts + 1}; last error: {item.last_error or 'none'})"
    else:
        action = "update" if item.kind == "opportunity_status" else "create"
        reason = item.reason
    return {
        "target": item.target,
        "kind": item.kind,
        "key": item.key,
        "engagement": item.engagement_id,
        "action": action,
        "reason": reason,
    }


@dataclass
class GroupPlan:
    """What one group of engagements needs written: the items, the status fingerprints they carry,
    and what is deliberately left alone."""

    items: list[OutboxItem] = field(default_factory=list)
    statuses: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    retries: list[OutboxItem] = field(default_factory=list)  # earlier runs' writes due now (``walk_plan``)


@dataclass
class PushPlan:
    """A whole plan, held in memory: what ``accord plan`` shows. A push never holds it; it keeps a
    ``PlanSummary``."""

    now: datetime
    items: list[OutboxItem] = field(default_factory=list)
    statuses: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    retries: list[OutboxItem] = field(default_factory=list)  # failed or pending from earlier runs

    def actions_json(self) -> list[dict[str, Any]]:
        return [action_json(i) for i in self.items] + [action_json(i, retry=True) for i in self.retries]

    def to_json(self) -> dict[str, Any]:
        return {
            "actions": self.actions_json(),
            "left_alone": [s.to_json() for s in self.skipped],
        }


@dataclass
class PlanSummary:
    """What a push keeps of its plan, however large: counts per target, kind and calendar, and the
    first ``limit`` actions and skips for the report."""

    now: datetime
    limit: int = ROWS_KEPT
    planned: int = 0
    retries: int = 0
    left_alone: int = 0
    # (target, kind, calendar) -> writes planned and retried
    writes: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    actions: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @classmethod
    def of(cls, plan: PushPlan, limit: int = ROWS_KEPT) -> PlanSummary:
        summary = cls(plan.now, limit)
        summary.add(plan.items, plan.skipped)
        for item in plan.retries:
            summary.add_retry(item)
        return summary

    def _count(self, item: OutboxItem, retry: bool) -> None:
        self.writes[(item.target, item.kind, str(item.payload.get("calendar_id") or ""))] += 1
        if len(self.actions) < self.limit:
            self.actions.append(action_json(item, retry))

    def add(self, items: Sequence[OutboxItem], skipped: Sequence[Skipped] = ()) -> None:
        self.planned += len(items)
        for item in items:
            self._count(item, retry=False)
        self.left_alone += len(skipped)
        self.skipped += skipped[: max(0, self.limit - len(self.skipped))]

    def add_retry(self, item: OutboxItem) -> None:
        self.retries += 1
        self._count(item, retry=True)

    @property
    def total(self) -> int:
        return self.planned + self.retries

    def by_target(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for (target, _, _), n in self.writes.items():
            counts[target] += n
        return dict(sorted(counts.items()))

    def by_kind(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for (_, kind, _), n in self.writes.items():
            counts[kind] += n
        return dict(sorted(counts.items()))

    def to_json(self) -> dict[str, Any]:
        return {
            "planned": self.planned,
            "retries": self.retries,
            "by_target": self.by_target(),
            "actions": self.actions,
            "actions_total": self.total,
            "left_alone": [s.to_json() for s in self.skipped],
            "left_alone_total": self.left_alone,
        }


def _known_reminders(store: Store, mapping: Mapping, engagements: Sequence[str]) -> dict[str, KnownReminder]:
    """The reminders of ``engagements`` that exist: queued or delivered by us, and their state as
    read back from Salesforce."""
    done_statuses = {s.casefold() for s in mapping.push.salesforce.task_done_statuses}
    queued = store.outbox.keys(REMINDER_KINDS, engagements)
    known: dict[str, KnownReminder] = {}
    for item in queued.values():
        key = item.key.removesuffix(CALENDAR_SUFFIX)
        if key in known:
            continue
        known[key] = KnownReminder(
            key=key,
            engagement_id=item.engagement_id,
            reason=str(item.payload.get("reason") or item.reason.split(":")[0]),
            status="open",
            created_at=parse_datetime(item.planned_at) or datetime.now(UTC),
            due=parse_date(item.payload.get("due_date")),
        )
    if mapping.salesforce.reminders is None:
        return known
    records = store.records_by_keys("salesforce", "reminders", [opportunity_key(e) for e in engagements])
    for record in sorted(records, key=lambda r: r.id):
        key = str(record.data.get("key") or "")
        engagement = reminder_engagement(key)
        if engagement is None:
            continue
        previous = known.get(key)
        status = "open"
        due = parse_date(record.data.get("due"))
        if str(record.data.get("status") or "").casefold() in done_statuses:
            status = "done"
        elif previous is not None and previous.due is not None and due is not None and due > previous.due:
            status = "snoozed"
        parts = key.split("-")
        known[key] = KnownReminder(
            key=key,
            engagement_id=previous.engagement_id if previous else engagement,
            reason=previous.reason if previous else (parts[2] if len(parts) > 3 else "unknown"),
            status=status,  # type: ignore[arg-type]  # one of the three literals above
            created_at=previous.created_at if previous else record.updated_at,
            due=due,
        )
    return known


def _people(store: Store) -> People:
    emails: dict[str, str] = {}
    managers: dict[str, str] = {}
    for record in store.iter_records("salesforce", "users"):
        if record.data.get("email"):
            emails[record.id] = str(record.data["email"])
        if record.data.get("manager"):
            managers[record.id] = str(record.data["manager"])
    return People(emails, managers)


def _status_issues(store: Store, mapping: Mapping) -> dict[str, str]:
    """Project key -> the issue that carries status comments (from the stored Jira issues): per
    project (the key's prefix), the lowest-numbered epic (``first_epic``: issue type "epic" in any
    case) or issue labelled ``status_label`` (``labelled``).

    Only the issues that may qualify are read (``Store.records_mentioning``: the database skips every
    issue whose stored JSON does not mention "epic", or the label); each is then checked as before."""
    how = mapping.push.jira
    # A type that casefolds to "epic" is those four ASCII letters (no other character folds to any of
    # them), so its issue's JSON mentions "epic" up to ASCII case. A label in the labels is in it as is.
    needle = "epic" if how.status_issue == "first_epic" else how.status_label
    try:
        issues = store.records_mentioning("jira", "issues", needle)
    except ValueError:  # a label the database cannot look for in JSON text: every issue is read
        issues = store.iter_records("jira", "issues")
    return _lowest_status_issues(issues, mapping)


def _lowest_status_issues(issues: Iterable[SourceRecord], mapping: Mapping) -> dict[str, str]:
    """``_status_issues`` of the given issues (each checked: a superset of the candidates is fine)."""
    how = mapping.push.jira
    best: dict[str, tuple[int, str]] = {}
    for record in issues:
        data = record.data
        if how.status_issue == "first_epic":
            if str(data.get("issue_type", "")).casefold() != "epic":
                continue
        elif how.status_label not in (data.get("labels") or []):
            continue
        key = str(data.get("key") or "")
        project, _, number = key.rpartition("-")
        if not number.isdigit():
            continue
        if project not in best or int(number) < best[project][0]:
            best[project] = (int(number), key)
    return {project: key for project, (_, key) in best.items()}


def _reminder_window(mapping: Mapping, due: date) -> tuple[str, str]:
    start = datetime(due.year, due.month, due.day, mapping.push.google_calendar.reminder_hour_utc, tzinfo=UTC)
    end = start + timedelta(minutes=mapping.push.google_calendar.duration_minutes)
    return iso(start) or "", iso(end) or ""


def plan_groups(
    store: Store,
    mapping: Mapping,
    mapping_path: Path,
    now: datetime,
    *,
    partition: int = 0,
    partitions: int = 1,
    group_size: int = GROUP_SIZE,
) -> Iterator[GroupPlan]:
    """What a push would write now for one partition of clients (all by default), group by group
    (``engagement.partition``): engagements recomputed as of ``now``, with what was pushed before
    and the reminders read back for that group's engagements only. Writes nothing."""
    people = _people(store)
    wording = Wording(templates_dir(mapping_path, mapping.push.templates))
    status_issues = _status_issues(store, mapping)
    groups = unify_groups(store, mapping, now, partition=partition, partitions=partitions, group_size=group_size)
    for _, view in groups:
        ids = [e.id for e in view.engagements]
        last = {eid: StatusFingerprint.from_json(fp) for eid, (fp, _) in store.outbox.last_status(ids).items()}
        known = _known_reminders(store, mapping, ids)
        engagements = {e.id: e for e in view.engagements}
        rules = plan_rules(view.engagements, mapping, now, last_status=last, known=known, people=people)
        group = GroupPlan(skipped=[Skipped(s.engagement_id, s.what, s.why) for s in rules.skipped])
        for update in rules.status_updates:
            _plan_status(group, now, mapping, wording, engagements[update.engagement_id], update, status_issues)
        for reminder in rules.reminders:
            _plan_reminder(group, mapping, wording, engagements[reminder.engagement_id], reminder)
        yield group


def walk_plan(
    store: Store,
    mapping: Mapping,
    mapping_path: Path,
    now: datetime,
    *,
    partition: int = 0,
    partitions: int = 1,
) -> Iterator[GroupPlan]:
    """A push's plan as a dry run sees it, a piece at a time: each group's plan (``plan_groups``),
    then the earlier runs' writes it would retry, a page at a time. Writes nothing."""
    already: set[str] = set()  # planned keys an earlier run queued: not retries (rare)
    for group in plan_groups(store, mapping, mapping_path, now, partition=partition, partitions=partitions):
        already |= store.outbox.existing([i.key for i in group.items])
        yield group
    page = GroupPlan()
    for item in store.outbox.iter_due(engagements=partition_filter(store, partition, partitions)):
        if item.key in already:
            continue
        page.retries.append(item)
        if len(page.retries) >= DUE_PAGE:
            yield page
            page = GroupPlan()
    if page.retries:
        yield page


def plan_push(
    store: Store,
    mapping: Mapping,
    mapping_path: Path,
    now: datetime | None = None,
    *,
    partition: int = 0,
    partitions: int = 1,
) -> PushPlan:
    """The whole plan a push would make now, held (tests, small orgs), and the earlier writes it
    would retry. Writes nothing. ``plan_summary`` keeps only counts and the first rows."""
    plan = PushPlan(now=now or datetime.now(UTC))
    for group in walk_plan(store, mapping, mapping_path, plan.now, partition=partition, partitions=partitions):
        plan.items += group.items
        plan.statuses += group.statuses
        plan.skipped += group.skipped
        plan.retries += group.retries
    return plan


def plan_summary(
    store: Store,
    mapping: Mapping,
    mapping_path: Path,
    now: datetime | None = None,
    *,
    partition: int = 0,
    partitions: int = 1,
    limit: int = ROWS_KEPT,
) -> PlanSummary:
    """A dry run of a push, however large the org: counts and the first ``limit`` rows."""
    summary = PlanSummary(now or datetime.now(UTC), limit)
    for group in walk_plan(store, mapping, mapping_path, summary.now, partition=partition, partitions=partitions):
        summary.add(group.items, group.skipped)
        for item in group.retries:
            summary.add_retry(item)
    return summary


def partition_filter(store: Store, partition: int, partitions: int) -> Callable[[str], bool] | None:
    """Which engagement ids belong to the partition (None: all do), by their stored client."""
    if partitions <= 1:
        return None
    clients = store.engagement_clients()
    return lambda engagement_id: partition_of(clients.get(engagement_id), partitions) == partition


def _plan_status(
    plan: GroupPlan,
    now: datetime,
    mapping: Mapping,
    wording: Wording,
    e: Engagement,
    update: StatusUpdate,
    status_issues: dict[str, str],
) -> None:
    why = "; ".join(update.why)
    targets = mapping.push.status_targets
    fields = mapping.push.salesforce.status_fields
    if "salesforce_opportunity" in targets:
        values = {
            "health": e.health.level.capitalize(),
            "stage": e.stage,
            "summary": wording.status_summary(e)[:32000],
            "updated": iso(now),
        }
        plan.items.append(
            OutboxItem(
                key=f"{update.key}-sf",
                target="salesforce",
                kind="opportunity_status",
                engagement_id=e.id,
                reason=f"status update: {why}",
                payload={"opportunity_id": e.id, "fields": {fields[name]: values[name] for name in fields}},
            )
        )
    if "jira_comment" in targets:
        issue = status_issues.get(e.jira_project or "")
        if issue is None:
            plan.skipped.append(
                Skipped(e.id, "Jira status comment", f"no status issue in project {e.jira_project or '(none)'}")
            )
        else:
            plan.items.append(
                OutboxItem(
                    key=f"{update.key}-jira",
                    target="jira",
                    kind="jira_status_comment",
                    engagement_id=e.id,
                    reason=f"status update: {why}",
                    payload={
                        "issue_key": issue,
                        "body": wording.status_comment(e, update),
                        "property_key": mapping.push.jira.property_key,
                        "property_value": {
                            "key": f"{update.key}-jira",
                            "health": e.health.level,
                            "stage": e.stage,
                            "posted_at": iso(now),
                        },
                    },
                )
            )
    plan.statuses.append((e.id, update.fingerprint.to_json(), update.key))


def _plan_reminder(plan: GroupPlan, mapping: Mapping, wording: Wording, e: Engagement, reminder: Reminder) -> None:
    subject, body = wording.reminder(e, reminder)
    targets = mapping.push.reminder_targets
    reason = f"{reminder.reason}: {reminder.why}"
    if "salesforce_task" in targets:
        if reminder.owner_id is None:
            plan.skipped.append(Skipped(e.id, f"{reminder.reason} Task", "the engagement has no owner"))
        else:
            plan.items.append(
                OutboxItem(
                    key=reminder.key,
                    target="salesforce",
                    kind="task",
                    engagement_id=e.id,
                    reason=reason,
                    payload={
                        "reason": reminder.reason,
                        "subject": subject,
                        "description": body,
                        "due_date": reminder.due.isoformat(),
                        "owner_id": reminder.owner_id,
                        "who_id": reminder.contact_id,
                        "what_id": e.id,
                        "priority": "High" if reminder.reason in ("escalation", "overdue_aging") else "Normal",
                        "status": mapping.push.salesforce.task_open_status,
                    },
                )
            )
    if "calendar_event" in targets:
        if not reminder.owner_email:
            plan.skipped.append(Skipped(e.id, f"{reminder.reason} calendar reminder", "the owner has no email"))
        else:
            start, end = _reminder_window(mapping, reminder.due)
            plan.items.append(
                OutboxItem(
                    key=reminder.key + CALENDAR_SUFFIX,
                    target="google_calendar",
                    kind="calendar_event",
                    engagement_id=e.id,
                    reason=reason,
                    payload={
                        "reason": reminder.reason,
                        "calendar_id": reminder.owner_email,
                        "summary": subject,
                        "description": body,
                        "start": start,
                        "end": end,
                        "time_zone": "UTC",
                        "due_date": reminder.due.isoformat(),
                    },
                )
            )


# -- apply ----------------------------------------------------------------------------------------------
WriterFactory = Callable[[str, AccordSettings, Mapping], TargetWriter]


def build_writer(target: str, settings: AccordSettings, mapping: Mapping) -> TargetWriter:
    if target == "salesforce" and settings.salesforce is not None:
        from connectors.salesforce import SalesforceWriter

        return SalesforceWriter(settings.salesforce, mapping)
    if target == "jira" and settings.jira is not None:
        from connectors.jira import JiraWriter

        return JiraWriter(settings.jira, mapping)
    if target == "google_calendar" and settings.google_calendar is not None:
        from connectors.google_calendar import CalendarWriter

        return CalendarWriter(settings.google_calendar, mapping)
    raise ValueError(f"{target}: no connection settings to write with")


@dataclass
class TargetReport:
    target: str
    attempted: int = 0
    delivered: int = 0
    failed: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    batches: int = 0  # writer calls: one batch of writes each, which the writer makes in one or more API requests
    error: str | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)  # (key, error): the first FAILURES_KEPT
    seconds: float = 0.0
    refused: int = 0  # failures the target gave record by record (not a whole call's)
    refused_final: int = 0  # of those, the ones it will not take again (not retriable)

    def fail(self, key: str, error: str, *, refused: bool = False, retriable: bool = True) -> None:
        """Count a failed write; keep its key and error while fewer than ``FAILURES_KEPT`` are kept."""
        self.failed += 1
        if refused:
            self.refused += 1
            self.refused_final += not retriable
        if len(self.failures) < FAILURES_KEPT:
            self.failures.append((key, error))


@dataclass
class PushReport:
    plan: PlanSummary
    queued: int = 0
    targets: dict[str, TargetReport] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return sum(t.failed for t in self.targets.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "planned": self.plan.planned,
            "retries": self.plan.retries,
            "queued": self.queued,
            "left_alone": self.plan.left_alone,
            "targets": {
                name: {
                    "attempted": t.attempted,
                    "delivered": t.delivered,
                    "failed": t.failed,
                    "outcomes": t.outcomes,
                    "batches": t.batches,
                    "error": t.error,
                    "failures": [{"key": k, "error": e} for k, e in t.failures[:50]],
                }
                for name, t in sorted(self.targets.items())
            },
        }


JIRA_ROUNDS = 10  # a Jira chunk: this many comments per writer thread


def chunk_size(target: str, mapping: Mapping, settings: AccordSettings) -> int:
    """Items per claimed chunk: a batch of the target's API, or for Jira (a comment and a property
    per item, no batch API) ``JIRA_ROUNDS`` items per writer thread. The writer waits for a chunk's
    last item before the next chunk is claimed: chunks of 10 on 4 threads left a thread idle for a
    third of every chunk's last round (the medium push's Jira apply took 19.9 s for a 15 s bound)."""
    if target == "jira":
        return JIRA_ROUNDS * (settings.jira.concurrency if settings.jira is not None else 1)
    return {
        "salesforce": mapping.push.salesforce.batch_size,
        "google_calendar": mapping.push.google_calendar.batch_size,
    }.get(target, 10)


def chunks(items: Iterable[OutboxItem], size: int) -> Iterator[list[OutboxItem]]:
    """Chunks that map onto the targets' batches (``batch_of``: one kind and one calendar per chunk),
    at most ``size`` each, planned order kept within each. Items of one batch that come together
    (``Outbox.iter_due`` reads them so) fill chunks across pages; only what is held is a chunk each."""
    open_chunks: dict[str, list[OutboxItem]] = {}
    for item in items:
        batch = batch_of(item.kind, item.payload)
        chunk = open_chunks.setdefault(batch, [])
        chunk.append(item)
        if len(chunk) >= size:
            yield open_chunks.pop(batch)
        elif len(open_chunks) > 1:  # a new batch began: the others are complete (they come together)
            for other in [b for b in open_chunks if b != batch]:
                yield open_chunks.pop(other)
    yield from open_chunks.values()


def apply_target(
    target: str,
    store: Store,
    settings: AccordSettings,
    mapping: Mapping,
    writer_factory: WriterFactory = build_writer,
    *,
    engagements: Callable[[str], bool] | None = None,
) -> TargetReport:
    """Apply every due outbox item of ``target`` (of the engagements ``engagements`` accepts, when
    given); each chunk is claimed before and marked as soon as it lands. Items another run claimed
    in the meantime are left to it."""
    report = TargetReport(target)
    started = time.perf_counter()
    planning = PLANNING.get()
    size = chunk_size(target, mapping, settings)
    taken: set[str] = set()  # while the plan is queued: what this apply took (a failure waits for the next run)

    def due() -> Iterator[list[OutboxItem]]:
        """Chunks of what is due; while the plan is being queued (``Planning``), again after each
        queued group, until a pass that began after the last group was queued."""
        if planning is None:
            yield from chunks(store.outbox.iter_due(target, engagements=engagements), size)
            return
        version, done = planning.now()
        while True:
            since = None if done else planning.since
            rows = store.outbox.iter_due(target, engagements=engagements, planned_since=since)
            fresh = (i for i in rows if i.key not in taken)
            for chunk in chunks(fresh, size):
                taken.update(i.key for i in chunk)
                yield chunk
            if done:
                return
            version, done = planning.wait(version)

    pending = due()
    first = next(pending, None)
    if first is None:
        return report
    writer = writer_factory(target, settings, mapping)
    try:
        with holder() as me:  # the attempts this run claims stay its own while it lives
            for planned in itertools.chain([first], pending):
                chunk = store.outbox.claim(planned, by=me)
                if not chunk:
                    continue
                requests = [WriteRequest(i.key, i.kind, i.payload, fresh=i.attempts == 0) for i in chunk]
                report.attempted += len(chunk)
                try:
                    results = writer.write(requests)
                except ConnectorError as exc:
                    report.error = str(exc)
                    # The whole call failed (credentials, configuration, quota): keep every item for the
                    # next run; what broke is fixed outside Accord, and nothing may be dropped meanwhile.
                    store.outbox.mark([Delivery(i.key, False, "failed", error=str(exc), retriable=True) for i in chunk])
                    for i in chunk:
                        report.fail(i.key, str(exc))
                    log.error("%s: writes stopped: %s", target, exc)
                    break
                report.batches += 1
                deliveries = [Delivery(r.key, r.ok, r.outcome, r.target_id, r.error, r.retriable) for r in results]
                store.outbox.mark(deliveries)
                for r in results:
                    report.outcomes[r.outcome] = report.outcomes.get(r.outcome, 0) + 1
                    if r.ok:
                        report.delivered += 1
                    else:
                        report.fail(r.key, r.error or "failed", refused=True, retriable=r.retriable)
    finally:
        writer.close()
        report.seconds = time.perf_counter() - started
    return report


# Applied while the plan is being queued: Jira's writes (two requests each, no batch API) are the
# push's slowest; the others wait for the whole plan, so their batches are full.
PIPELINED = frozenset({"jira"})


class Planning:
    """How far a push has queued its plan, for an apply that runs meanwhile (``PIPELINED``): the
    planner says each group it queued and the end; the apply takes what is due, then waits for more.
    Until the end it takes only what this run planned (since ``since``): the earlier runs' writes
    it would retry are counted at the end of the plan (``PlanSummary.add_retry``), still due."""

    def __init__(self, since: str) -> None:
        self.since = since
        self._changed = threading.Condition()
        self._version = 0
        self._done = False

    def queued(self) -> None:
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    def finish(self) -> None:
        with self._changed:
            self._version += 1
            self._done = True
            self._changed.notify_all()

    def now(self) -> tuple[int, bool]:
        with self._changed:
            return self._version, self._done

    def wait(self, version: int) -> tuple[int, bool]:
        """Until something was queued after ``version`` (or the plan ended)."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != version)
            return self._version, self._done


# The plan an apply runs beside (None: the plan is queued whole). A context variable, so that it
# reaches the apply through the thread (``contextvars.copy_context``) and a Prefect task run (its
# task runner runs each task in a copy of the submitter's context) without being a task parameter.
PLANNING: contextvars.ContextVar[Planning | None] = contextvars.ContextVar("accord_push_planning", default=None)


def apply_concurrently(
    run: Callable[[str], TargetReport],
    targets: Sequence[str],
    plan: Callable[[Planning], None] | None = None,
) -> dict[str, TargetReport]:
    """``run`` for every target at the same time, one thread each: the targets are different APIs
    with their own writers, outbox items and rate budgets, and the bound of a push is the slowest
    target's, not their sum. Applied one after another, the medium org's push spent Salesforce's and
    Google Calendar's applies (about 3 s at 50 ms) on top of Jira's. Each thread runs in a copy of
    the caller's context (a Prefect flow run's, so a target's apply can be a task of that run).

    ``plan``: queues the plan, here, while the ``PIPELINED`` targets already apply what it queued
    (``PLANNING`` in their context); the other targets start once it has returned. The medium org's
    push planned for 2.1 s before any write, the large org's for about 33 s. A plan that fails
    starts no other target and is raised once the running ones finished.

    Every target finishes (a failed target never stops the others, as before); the reports come in
    ``targets`` order, and the first error, in that order, is raised after all have finished."""
    if plan is None and len(targets) <= 1:
        return {target: run(target) for target in targets}
    futures: dict[str, Future[TargetReport]] = {}
    planned: BaseException | None = None
    with ThreadPoolExecutor(max_workers=max(1, len(targets)), thread_name_prefix="push-apply") as pool:
        if plan is not None:
            planning = Planning(iso(datetime.now(UTC)) or "")
            for target in targets:
                if target in PIPELINED:
                    context = contextvars.copy_context()
                    context.run(PLANNING.set, planning)
                    futures[target] = pool.submit(context.run, run, target)
            try:
                plan(planning)
            except BaseException as exc:  # raised once the running applies end
                planned = exc
            finally:
                planning.finish()
        if planned is None:
            for target in targets:
                if target not in futures:
                    futures[target] = pool.submit(contextvars.copy_context().run, run, target)
    if planned is not None:
        raise planned
    reports: dict[str, TargetReport] = {}
    failure: BaseException | None = None
    for target in targets:
        try:
            reports[target] = futures[target].result()
        except BaseException as exc:  # raised below, after every target finished
            failure = failure or exc
    if failure is not None:
        raise failure
    return reports


def push(
    store: Store,
    settings: AccordSettings,
    mapping: Mapping,
    mapping_path: Path,
    *,
    now: datetime | None = None,
    writer_factory: WriterFactory = build_writer,
    targets: Sequence[str] = TARGETS,
    apply: Callable[[str], TargetReport] | None = None,
    partition: int = 0,
    partitions: int = 1,
    group_size: int = GROUP_SIZE,
) -> PushReport:
    """Plan, queue the plan in the outbox, then apply everything due (of one partition of clients).

    Group by group: each group's plan is queued in one transaction as soon as it is made, and only
    counts and the first rows are kept (``PlanSummary``), so memory does not grow with the org. A
    crash between groups leaves the queued groups pending; the re-run plans the rest (what is queued
    is known: its status fingerprints and reminders) and applies everything due."""
    limit_malloc_arenas()
    moment = now or datetime.now(UTC)
    summary = PlanSummary(moment)
    report = PushReport(summary)
    # Earlier runs' writes are those planned before this run queues anything (milliseconds: a run
    # queues long after the one before it ended).
    queued_before = iso(datetime.now(UTC))
    already: set[str] = set()  # planned keys an earlier run had queued (rare: an old status again)
    engagements = partition_filter(store, partition, partitions)

    def plan(planning: Planning) -> None:
        groups = plan_groups(
            store, mapping, mapping_path, moment, partition=partition, partitions=partitions, group_size=group_size
        )
        for group in groups:
            summary.add(group.items, group.skipped)
            added, known = store.outbox.add(group.items, group.statuses)
            report.queued += added
            already.update(known)
            planning.queued()
        for item in store.outbox.iter_due(engagements=engagements, planned_before=queued_before):
            if item.key not in already:
                summary.add_retry(item)

    run = apply or (
        lambda target: apply_target(target, store, settings, mapping, writer_factory, engagements=engagements)
    )
    report.targets.update(apply_concurrently(run, targets, plan))
    planned, retried = summary.planned, summary.retries
    log.info("push: %d planned %s, %d retried, %d failed", planned, summary.by_target(), retried, report.failed)
    return report
