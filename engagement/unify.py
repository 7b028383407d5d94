"""Unify: from CRM, Jira and calendar records to one model per client engagement.

``unify(snapshot, mapping, now)`` is a pure function: no network, no clock, no randomness. The
same records in any order give the same ``UnifiedView`` (every collection is sorted by a total
order before it is used), which is what lets an incremental sync be checked against a fresh full
sync.
"""

from __future__ import annotations

import itertools
import re
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from engagement.health import assess_health, derive_stage
from engagement.horizon import Clock
from engagement.identity import IdentityIndex, IdentityMatch
from engagement.mapping import Mapping
from engagement.model import (
    Activity,
    AmbiguousMeeting,
    Engagement,
    MeetingRef,
    Meetings,
    Person,
    Progress,
    Stakeholder,
    UnifiedView,
    UnknownStakeholder,
)
from engagement.records import (
    Account,
    CalendarEvent,
    Contact,
    ContactRole,
    CrmUser,
    Opportunity,
    SourceRecord,
    WorkItem,
)

ACTIVITY_LIMIT = 50


@dataclass
class Snapshot:
    """The live (not deleted) records of all sources, typed."""

    accounts: list[Account] = field(default_factory=list)
    contacts: list[Contact] = field(default_factory=list)
    opportunities: list[Opportunity] = field(default_factory=list)
    roles: list[ContactRole] = field(default_factory=list)
    users: list[CrmUser] = field(default_factory=list)
    issues: list[WorkItem] = field(default_factory=list)
    events: list[CalendarEvent] = field(default_factory=list)

    @classmethod
    def from_records(cls, records: Iterable[SourceRecord]) -> Snapshot:
        snap = cls()
        for r in records:
            if r.deleted:
                continue
            match (r.source, r.stream):
                case ("salesforce", "accounts"):
                    snap.accounts.append(Account.from_record(r))
                case ("salesforce", "contacts"):
                    snap.contacts.append(Contact.from_record(r))
                case ("salesforce", "opportunities"):
                    snap.opportunities.append(Opportunity.from_record(r))
                case ("salesforce", "contact_roles"):
                    snap.roles.append(ContactRole.from_record(r))
                case ("salesforce", "users"):
                    snap.users.append(CrmUser.from_record(r))
                case ("jira", "issues"):
                    snap.issues.append(WorkItem.from_record(r))
                case ("google_calendar", "events"):
                    event = CalendarEvent.from_record(r)
                    if event is not None:
                        snap.events.append(event)
        return snap


@dataclass
class _UnknownAccumulator:
    account_id: str
    engagements: set[str] = field(default_factory=set)
    last: datetime | None = None


@dataclass
class _Attribution:
    event: CalendarEvent
    matches: list[tuple[IdentityMatch, str]]  # client-side attendees with their response


def _project_for(opportunity: Opportunity, mapping: Mapping) -> str | None:
    link = mapping.jira.projects
    if link.source == "lookup":
        return link.lookup.get(opportunity.id) or link.lookup.get(opportunity.name)
    return opportunity.jira_project.strip().upper() if opportunity.jira_project else None


def _mentions(summary: str, opportunity: Opportunity, project: str | None) -> bool:
    if project and re.search(rf"(?<![A-Za-z0-9]){re.escape(project)}(?![A-Za-z0-9])", summary):
        return True
    return opportunity.name.casefold() in summary.casefold()


@dataclass
class Reference:
    """The CRM side every group of clients needs: who is who (all accounts, contacts and users, for
    identity) and which engagements exist. Small next to the issues and meetings."""

    accounts: dict[str, Account]
    contacts: dict[str, Contact]
    users: dict[str, CrmUser]
    opportunities: list[Opportunity]  # sorted by id
    roles_by_opportunity: dict[str, list[ContactRole]]
    project: dict[str, str | None]  # opportunity id -> linked Jira project
    index: IdentityIndex

    @classmethod
    def build(cls, snapshot: Snapshot, mapping: Mapping) -> Reference:
        accounts = {a.id: a for a in sorted(snapshot.accounts, key=lambda a: a.id)}
        contacts = {c.id: c for c in sorted(snapshot.contacts, key=lambda c: c.id)}
        users = {u.id: u for u in sorted(snapshot.users, key=lambda u: u.id)}
        opportunities = sorted(snapshot.opportunities, key=lambda o: o.id)
        roles_by_opportunity: dict[str, list[ContactRole]] = defaultdict(list)
        for role in sorted(snapshot.roles, key=lambda r: r.id):
            roles_by_opportunity[role.opportunity_id].append(role)
        return cls(
            accounts=accounts,
            contacts=contacts,
            users=users,
            opportunities=opportunities,
            roles_by_opportunity=roles_by_opportunity,
            project={o.id: _project_for(o, mapping) for o in opportunities},
            index=IdentityIndex(mapping.identity, accounts.values(), contacts.values(), users.values()),
        )


class _Unifier:
    """The engagements of ``opportunities`` from the issues and meetings given (which may be more
    than these engagements need). ``reports_for(account_ids)`` says whether a meeting with
    attendees of several clients is reported here: one group of clients reports each such meeting."""

    def __init__(
        self,
        reference: Reference,
        opportunities: Iterable[Opportunity],
        issues: Iterable[WorkItem],
        events: Iterable[CalendarEvent],
        mapping: Mapping,
        now: datetime,
        reports_for: Callable[[list[str]], bool] | None = None,
    ) -> None:
        self.mapping = mapping
        self.now = now
        self.accounts = reference.accounts
        self.contacts = reference.contacts
        self.users = reference.users
        self.index = reference.index
        self.project = reference.project
        self.roles_by_opportunity = reference.roles_by_opportunity
        self.opportunities = sorted(opportunities, key=lambda o: o.id)
        self.issues = sorted(issues, key=lambda i: i.id)
        self.events = sorted(events, key=lambda e: (e.start, e.id, e.calendar))
        self.reports_for = reports_for or (lambda accounts: True)
        self.by_account: dict[str, list[Opportunity]] = defaultdict(list)
        for o in self.opportunities:
            if o.account_id:
                self.by_account[o.account_id].append(o)

    # -- meetings ----------------------------------------------------------------------------------
    def attribute_meetings(self) -> tuple[dict[str, list[_Attribution]], list[AmbiguousMeeting], int]:
        attributed: dict[str, list[_Attribution]] = defaultdict(list)
        ambiguous: list[AmbiguousMeeting] = []
        internal = 0
        seen: set[tuple[str, str]] = set()
        for event in self.events:
            if event.status == "cancelled":
                continue
            matches = []
            for attendee in event.attendees:
                match = self.index.resolve(attendee.email)
                if match.kind in ("contact", "client_domain") and match.account_id:
                    matches.append((match, attendee.response))
            if not matches:
                internal += 1
                continue
            accounts = sorted({m.account_id for m, _ in matches if m.account_id})
            if len(accounts) > 1:
                if not self.reports_for(accounts):
                    continue
                ambiguous.append(
                    AmbiguousMeeting(
                        event.id,
                        event.calendar,
                        event.start,
                        tuple(accounts),
                        "attendees from several clients",
                    )
                )
                continue
            candidates = list(self.by_account.get(accounts[0], []))
            if not candidates:
                continue
            chosen = self._choose(event, matches, candidates)
            if chosen is None:
                ambiguous.append(
                    AmbiguousMeeting(
                        event.id,
                        event.calendar,
                        event.start,
                        tuple(o.id for o in candidates),
                        "the client has several engagements and nothing in the meeting tells which",
                    )
                )
                continue
            # One meeting shows on every invited owner's calendar under the same event id: count it once.
            if (chosen.id, event.id) in seen:
                continue
            seen.add((chosen.id, event.id))
            attributed[chosen.id].append(_Attribution(event, matches))
        return attributed, ambiguous, internal

    def _choose(
        self, event: CalendarEvent, matches: list[tuple[IdentityMatch, str]], candidates: list[Opportunity]
    ) -> Opportunity | None:
        if len(candidates) == 1:
            return candidates[0]
        contact_ids = {m.contact_id for m, _ in matches if m.contact_id}
        owner_emails = {self.index.normalize(event.calendar)} | (
            {self.index.normalize(event.organizer)} if event.organizer else set()
        )
        tests: tuple[Callable[[Opportunity], bool], ...] = (
            lambda o: _mentions(event.summary, o, self.project.get(o.id)),
            lambda o: any(r.contact_id in contact_ids for r in self.roles_by_opportunity.get(o.id, [])),
            lambda o: self._owner_email(o) in owner_emails,
        )
        pool = candidates
        for test in tests:
            narrowed = [o for o in pool if test(o)]
            if len(narrowed) == 1:
                return narrowed[0]
            if narrowed:
                pool = narrowed
        return None

    def _owner_email(self, opportunity: Opportunity) -> str | None:
        user = self.users.get(opportunity.owner_id or "")
        return self.index.normalize(user.email) if user and user.email else None

    # -- per engagement ---------------------------------------------------------------------------
    def progress(self, issues: list[WorkItem], clock: Clock) -> Progress:
        thresholds = self.mapping.health
        blocked_statuses = {s.casefold() for s in self.mapping.jira.blocked_statuses}
        blocked_labels = {s.casefold() for s in self.mapping.jira.blocked_labels}
        work = [i for i in issues if i.issue_type.casefold() != "epic"]
        by_category = {"new": 0, "indeterminate": 0, "done": 0}
        overdue = blocked = unassigned = 0
        oldest: int | None = None
        oldest_key: str | None = None
        for issue in work:
            category = issue.status_category if issue.status_category in by_category else "new"
            by_category[category] += 1
            if category == "done":
                continue
            if issue.due_date is not None and clock.date_passed(issue.due_date):  # due_date < today
                overdue += 1
                days = clock.days_since_date(issue.due_date)  # (today - due_date).days
                if oldest is None or days > oldest or (days == oldest and issue.key < (oldest_key or "")):
                    oldest, oldest_key = days, issue.key
            if issue.status.casefold() in blocked_statuses or blocked_labels & {
                label.casefold() for label in issue.labels
            }:
                blocked += 1
            if issue.assignee_email is None and issue.assignee_name is None:
                unassigned += 1
        weeks = thresholds.throughput_weeks
        throughput = [0] * weeks
        for issue in work:
            if issue.status_category == "done" and issue.resolved is not None:
                week = clock.week_of(issue.resolved, weeks)  # now - weeks <= resolved < now: which week
                if week is not None:
                    throughput[week] += 1
        total = len(work)
        return Progress(
            total=total,
            by_category=by_category,
            percent_complete=round(100.0 * by_category["done"] / total, 1) if total else 0.0,
            overdue=overdue,
            blocked=blocked,
            unassigned_open=unassigned,
            throughput=tuple(throughput),
            oldest_overdue_days=oldest,
            oldest_overdue_key=oldest_key,
        )

    def meetings(self, attributions: list[_Attribution], clock: Clock) -> Meetings:
        def ref(a: _Attribution) -> MeetingRef:
            e = a.event
            return MeetingRef(e.id, e.summary, e.start, e.end, len(a.matches))

        past: list[_Attribution] = []
        future: list[_Attribution] = []
        for a in attributions:
            (past if clock.passed(a.event.start) else future).append(a)  # start <= now
        recent = [a.event.start for a in past if clock.within(a.event.start, timedelta(days=90))]  # start >= now - 90d
        gaps = [(b - a).total_seconds() / 86400 for a, b in itertools.pairwise(recent)]
        return Meetings(
            last_client_meeting=ref(past[-1]) if past else None,
            next_client_meeting=ref(future[0]) if future else None,
            cadence_days=round(statistics.median(gaps), 1) if gaps else None,
            past_90_days=len(recent),
            scheduled=len(future),
        )

    def stakeholders(
        self, opportunity: Opportunity, attributions: list[_Attribution], clock: Clock
    ) -> tuple[Stakeholder, ...]:
        quiet = timedelta(days=self.mapping.health.stakeholder_quiet_days)
        touches: dict[str, datetime] = {}
        attendees: dict[str, IdentityMatch] = {}
        for a in attributions:
            for match, response in a.matches:
                attendees.setdefault(match.email, match)
                if response != "declined" and clock.passed(a.event.start):
                    previous = touches.get(match.email)
                    if previous is None or a.event.start > previous:
                        touches[match.email] = a.event.start
        people: dict[str, Stakeholder] = {}
        for role in self.roles_by_opportunity.get(opportunity.id, []):
            contact = self.contacts.get(role.contact_id)
            email = self.index.normalize(contact.email) if contact and contact.email else None
            key = email or f"contact:{role.contact_id}"
            existing = people.get(key)
            if existing and existing.primary and not role.primary:
                continue
            last = touches.get(email) if email else None
            people[key] = Stakeholder(
                email=email,
                name=contact.name if contact else None,
                contact_id=role.contact_id,
                role=role.role,
                primary=role.primary,
                last_touch=last,
                engaged=last is not None and clock.within(last, quiet),  # now - last <= quiet
                confidence="exact",
            )
        for email, match in sorted(attendees.items()):
            if email in people:
                continue
            contact = self.contacts.get(match.contact_id or "")
            last = touches.get(email)
            people[email] = Stakeholder(
                email=email,
                name=contact.name if contact else None,
                contact_id=match.contact_id,
                role=None,
                primary=False,
                last_touch=last,
                engaged=last is not None and clock.within(last, quiet),
                confidence="exact" if match.kind == "contact" else "domain",
            )
        return tuple(
            sorted(
                people.values(),
                key=lambda s: (
                    not s.primary,
                    s.role is None,
                    s.contact_id is None,
                    s.email or "",
                    s.contact_id or "",
                ),
            )
        )

    def activity(
        self, opportunity: Opportunity, issues: list[WorkItem], attributions: list[_Attribution], clock: Clock
    ) -> tuple[Activity, ...]:
        items = [
            Activity(
                opportunity.updated_at,
                "salesforce",
                "opportunity_updated",
                opportunity.id,
                f"Opportunity stage: {opportunity.stage}",
            )
        ]
        for a in attributions:
            if clock.passed(a.event.start):
                items.append(Activity(a.event.start, "google_calendar", "meeting", a.event.id, a.event.summary))
        for issue in issues:
            if issue.resolved is not None and issue.status_category == "done":
                items.append(Activity(issue.resolved, "jira", "issue_done", issue.key, issue.summary))
            if issue.created is not None:
                items.append(Activity(issue.created, "jira", "issue_created", issue.key, issue.summary))
        items = [i for i in items if clock.passed(i.at)]
        items.sort(key=lambda i: (i.at, i.source, i.kind, i.ref), reverse=True)
        return tuple(items[:ACTIVITY_LIMIT])

    def run(self) -> UnifiedView:
        issues_by_project: dict[str, list[WorkItem]] = defaultdict(list)
        for issue in self.issues:
            issues_by_project[issue.project.upper()].append(issue)
        attributed, ambiguous, internal = self.attribute_meetings()
        linked_projects = {p for p in self.project.values() if p}  # of every engagement, not only these
        engagements = []
        valid_until: dict[str, datetime | None] = {}
        unknown: dict[str, _UnknownAccumulator] = {}
        for opportunity in self.opportunities:
            project = self.project[opportunity.id]
            issues = issues_by_project.get(project, []) if project else []
            attributions = attributed.get(opportunity.id, [])
            clock = Clock(self.now)  # every comparison with now of this engagement goes through it
            progress = self.progress(issues, clock)
            meetings = self.meetings(attributions, clock)
            stakeholders = self.stakeholders(opportunity, attributions, clock)
            stage = derive_stage(opportunity, progress, self.mapping, clock)
            health = assess_health(stage, opportunity, progress, meetings, stakeholders, self.mapping, clock)
            account = self.accounts.get(opportunity.account_id or "")
            owner = self.users.get(opportunity.owner_id or "")
            engagements.append(
                Engagement(
                    id=opportunity.id,
                    name=opportunity.name,
                    client_id=opportunity.account_id,
                    client=account.name if account else "(unknown client)",
                    owner=Person(owner.id, owner.name, owner.email) if owner else None,
                    opportunity_stage=opportunity.stage,
                    close_date=opportunity.close_date,
                    jira_project=project,
                    stage=stage,
                    stakeholders=stakeholders,
                    progress=progress,
                    meetings=meetings,
                    activity=self.activity(opportunity, issues, attributions, clock),
                    health=health,
                )
            )
            valid_until[opportunity.id] = clock.until
            for s in stakeholders:
                if s.contact_id is None and s.email:
                    entry = unknown.setdefault(s.email, _UnknownAccumulator(opportunity.account_id or ""))
                    entry.engagements.add(opportunity.id)
                    if s.last_touch and (entry.last is None or s.last_touch > entry.last):
                        entry.last = s.last_touch
        meeting_counts: dict[str, int] = defaultdict(int)
        for attributions in attributed.values():
            for a in attributions:
                for match, _ in a.matches:
                    if match.kind == "client_domain":
                        meeting_counts[match.email] += 1
        unknown_list = tuple(
            UnknownStakeholder(
                email=email,
                account_id=entry.account_id,
                engagement_ids=tuple(sorted(entry.engagements)),
                meetings=meeting_counts[email],
                last_seen=entry.last,
            )
            for email, entry in sorted(unknown.items())
        )
        orphan_issues = sum(len(v) for k, v in issues_by_project.items() if k not in linked_projects)
        return UnifiedView(
            engagements=tuple(engagements),
            unknown_stakeholders=unknown_list,
            ambiguous_meetings=tuple(sorted(ambiguous, key=lambda a: (a.start, a.event_id, a.calendar))),
            issues_without_engagement=orphan_issues,
            meetings_internal=internal,
            valid_until=valid_until,
        )


def unify(snapshot: Snapshot, mapping: Mapping, now: datetime) -> UnifiedView:
    """The engagement model of everything in ``snapshot`` as of ``now`` (aware UTC)."""
    reference = Reference.build(snapshot, mapping)
    return _Unifier(reference, reference.opportunities, snapshot.issues, snapshot.events, mapping, now).run()


def unify_group(
    reference: Reference,
    opportunities: Iterable[Opportunity],
    issues: Iterable[WorkItem],
    events: Iterable[CalendarEvent],
    mapping: Mapping,
    now: datetime,
    reports_for: Callable[[list[str]], bool],
) -> UnifiedView:
    """The engagements of one group of clients (see ``engagement.partition``). Its
    ``issues_without_engagement`` and ``meetings_internal`` only count what it was given."""
    return _Unifier(reference, opportunities, issues, events, mapping, now, reports_for).run()
