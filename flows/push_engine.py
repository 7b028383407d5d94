"""The push, as plain Python: plan from the stored engagements, queue in the outbox, apply.

``plan_push`` reads only the store (engagements, what was pushed before, reminders read back from
Salesforce) and writes nothing. ``push`` records the plan in the outbox in one transaction, then
applies every due outbox item through the target writers, marking each chunk as it lands. A crash
anywhere leaves items pending; the re-run repeats them and the targets recognise the keys.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from accord.settings import AccordSettings
from connectors.base import TargetWriter, WriteRequest
from connectors.errors import ConnectorError
from engagement.mapping import Mapping
from engagement.model import Engagement
from engagement.partition import partition_of, unify_groups
from engagement.records import iso, parse_date, parse_datetime
from engagement.rules import KnownReminder, People, Reminder, StatusFingerprint, StatusUpdate, plan_rules
from engagement.wording import Wording, templates_dir
from flows.memory import limit_malloc_arenas
from store import Delivery, OutboxItem, Store
from store.outbox import holder

log = logging.getLogger("accord.push")
TARGETS = ("salesforce", "jira", "google_calendar")
REMINDER_KINDS = ("task", "calendar_event")
CALENDAR_SUFFIX = "-cal"


@dataclass(frozen=True)
class Skipped:
    engagement_id: str
    what: str
    why: str


@dataclass
class PushPlan:
    now: datetime
    items: list[OutboxItem] = field(default_factory=list)
    statuses: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    retries: list[OutboxItem] = field(default_factory=list)  # failed or pending from earlier runs

    def actions_json(self) -> list[dict[str, Any]]:
        return [
            {
                "target": i.target,
                "kind": i.kind,
                "key": i.key,
                "engagement": i.engagement_id,
                "action": "update" if i.kind == "opportunity_status" else "create",
                "reason": i.reason,
            }
            for i in self.items
        ] + [
            {
                "target": i.target,
                "kind": i.kind,
                "key": i.key,
                "engagement": i.engagement_id,
                "action": "retry",
                "reason": f"{i.reason} (attempt {i.attempts + 1}; last error: {i.last_error or 'none'})",
            }
            for i in self.retries
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "actions": self.actions_json(),
            "left_alone": [{"engagement": s.engagement_id, "what": s.what, "why": s.why} for s in self.skipped],
        }


def _known_reminders(store: Store, mapping: Mapping) -> dict[str, KnownReminder]:
    """Reminders that exist: queued or delivered by us, and their state as read back from Salesforce."""
    done_statuses = {s.casefold() for s in mapping.push.salesforce.task_done_statuses}
    queued = store.outbox.keys(REMINDER_KINDS)
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
    for record in store.iter_records("salesforce", "reminders"):
        key = str(record.data.get("key") or "")
        if not key.startswith("acc-"):
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
            engagement_id=previous.engagement_id if previous else (parts[1] if len(parts) > 2 else ""),
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
    """Project key -> the issue that carries status comments (from the stored Jira issues)."""
    how = mapping.push.jira
    best: dict[str, tuple[int, str]] = {}
    for record in store.iter_records("jira", "issues"):
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


def plan_push(
    store: Store,
    mapping: Mapping,
    mapping_path: Path,
    now: datetime | None = None,
    *,
    partition: int = 0,
    partitions: int = 1,
) -> PushPlan:
    """What a push would write now for one partition of clients (all by default), and what it
    leaves alone and why. Writes nothing. Engagements are recomputed as of now, group by group."""
    moment = now or datetime.now(UTC)
    last = {
        eid: StatusFingerprint.from_json(fingerprint) for eid, (fingerprint, _) in store.outbox.last_status().items()
    }
    known = _known_reminders(store, mapping)
    people = _people(store)
    wording = Wording(templates_dir(mapping_path, mapping.push.templates))
    plan = PushPlan(now=moment)
    status_issues = _status_issues(store, mapping)
    for _, view in unify_groups(store, mapping, moment, partition=partition, partitions=partitions):
        engagements = {e.id: e for e in view.engagements}
        rules = plan_rules(view.engagements, mapping, moment, last_status=last, known=known, people=people)
        plan.skipped += [Skipped(s.engagement_id, s.what, s.why) for s in rules.skipped]
        for update in rules.status_updates:
            _plan_status(plan, mapping, wording, engagements[update.engagement_id], update, status_issues)
        for reminder in rules.reminders:
            _plan_reminder(plan, mapping, wording, engagements[reminder.engagement_id], reminder)
    planned = {i.key for i in plan.items}
    owned = partition_filter(store, partition, partitions)
    plan.retries = [i for i in store.outbox.due(engagements=owned) if i.key not in planned]
    return plan


def partition_filter(store: Store, partition: int, partitions: int) -> Callable[[str], bool] | None:
    """Which engagement ids belong to the partition (None: all do), by their stored client."""
    if partitions <= 1:
        return None
    clients = store.engagement_clients()
    return lambda engagement_id: partition_of(clients.get(engagement_id), partitions) == partition


def _plan_status(
    plan: PushPlan,
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
            "updated": iso(plan.now),
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
                            "posted_at": iso(plan.now),
                        },
                    },
                )
            )
    plan.statuses.append((e.id, update.fingerprint.to_json(), update.key))


def _plan_reminder(plan: PushPlan, mapping: Mapping, wording: Wording, e: Engagement, reminder: Reminder) -> None:
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
    calls: int = 0  # writer calls (each may be a batch)
    error: str | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)  # (key, error)
    seconds: float = 0.0


@dataclass
class PushReport:
    plan: PushPlan
    queued: int = 0
    targets: dict[str, TargetReport] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return sum(t.failed for t in self.targets.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "planned": len(self.plan.items),
            "queued": self.queued,
            "left_alone": len(self.plan.skipped),
            "targets": {
                name: {
                    "attempted": t.attempted,
                    "delivered": t.delivered,
                    "failed": t.failed,
                    "outcomes": t.outcomes,
                    "calls": t.calls,
                    "error": t.error,
                    "failures": [{"key": k, "error": e} for k, e in t.failures[:50]],
                }
                for name, t in sorted(self.targets.items())
            },
        }


def chunk_size(target: str, mapping: Mapping) -> int:
    return {
        "salesforce": mapping.push.salesforce.batch_size,
        "google_calendar": mapping.push.google_calendar.batch_size,
        "jira": 10,
    }.get(target, 10)


def chunks(items: Sequence[OutboxItem], size: int) -> list[list[OutboxItem]]:
    """Chunks that map onto the targets' batches: one kind and one calendar per chunk (a Salesforce
    composite call takes one kind, a Calendar batch one calendar), planned order kept within each."""
    groups: dict[tuple[str, str], list[OutboxItem]] = defaultdict(list)
    for item in items:
        groups[(item.kind, str(item.payload.get("calendar_id") or ""))].append(item)
    return [group[i : i + size] for group in groups.values() for i in range(0, len(group), size)]


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
    due = store.outbox.due(target, engagements=engagements)
    if not due:
        return report
    writer = writer_factory(target, settings, mapping)
    try:
        with holder() as me:  # the attempts this run claims stay its own while it lives
            for planned in chunks(due, chunk_size(target, mapping)):
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
                    report.failed += len(chunk)
                    report.failures += [(i.key, str(exc)) for i in chunk]
                    log.error("%s: writes stopped: %s", target, exc)
                    break
                report.calls += 1
                deliveries = [Delivery(r.key, r.ok, r.outcome, r.target_id, r.error, r.retriable) for r in results]
                store.outbox.mark(deliveries)
                for r in results:
                    report.outcomes[r.outcome] = report.outcomes.get(r.outcome, 0) + 1
                    if r.ok:
                        report.delivered += 1
                    else:
                        report.failed += 1
                        report.failures.append((r.key, r.error or "failed"))
    finally:
        writer.close()
        report.seconds = time.perf_counter() - started
    return report


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
) -> PushReport:
    """Plan, queue the plan in the outbox, then apply everything due (of one partition of clients)."""
    limit_malloc_arenas()
    plan = plan_push(store, mapping, mapping_path, now, partition=partition, partitions=partitions)
    report = PushReport(plan)
    report.queued = store.outbox.enqueue(plan.items, plan.statuses)
    engagements = partition_filter(store, partition, partitions)
    run = apply or (
        lambda target: apply_target(target, store, settings, mapping, writer_factory, engagements=engagements)
    )
    for target in targets:
        report.targets[target] = run(target)
    by_target: dict[str, int] = defaultdict(int)
    for item in plan.items:
        by_target[item.target] += 1
    log.info("push: %d planned %s, %d failed", len(plan.items), dict(by_target), report.failed)
    return report
