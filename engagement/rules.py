"""Rules: from the engagement model to planned status updates and follow-up reminders.

Pure and deterministic: the same engagements, push state and ``now`` give the same plan. Each
planned item carries the reason it fired, in words, and a stable idempotency key built from what
triggered it (the *episode*: the meeting to follow up, the stakeholder who went quiet, ...), so a
reminder that was done or snoozed in the target tool is never recreated for the same episode.

The rules follow client-relationship practice: be transparent with timely status updates (only
when something that matters changed), follow up after meetings, keep a check-in within the
cadence, keep key stakeholders engaged, surface aging risk, and keep the relationship warm after
the project ends (+30 and +90 days). An open reminder nobody answers is escalated to the owner's
manager.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from collections.abc import Mapping as MappingType
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Literal

from engagement.mapping import Mapping
from engagement.model import Engagement

ReminderReason = Literal[
    "meeting_follow_up",
    "checkin_due",
    "stakeholder_quiet",
    "overdue_aging",
    "post_closure",
    "escalation",
]
ReminderStatus = Literal["open", "done", "snoozed"]


def short_hash(*parts: object) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode("utf-8")).hexdigest()[:10]


@dataclass(frozen=True)
class StatusFingerprint:
    """What a status update reports; a new update is due when this changes in a way that matters."""

    health: str
    stage: str
    progress_step: int  # percent complete, floored to the mapping's step
    overdue: int
    blocked: int
    next_meeting: str | None  # date of the next client meeting

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: MappingType[str, Any]) -> StatusFingerprint:
        return cls(
            str(data["health"]),
            str(data["stage"]),
            int(data["progress_step"]),
            int(data["overdue"]),
            int(data["blocked"]),
            data.get("next_meeting"),
        )


def fingerprint(engagement: Engagement, step: int) -> StatusFingerprint:
    upcoming = engagement.meetings.next_client_meeting
    return StatusFingerprint(
        health=engagement.health.level,
        stage=engagement.stage,
        progress_step=int(engagement.progress.percent_complete // step * step),
        overdue=engagement.progress.overdue,
        blocked=engagement.progress.blocked,
        next_meeting=upcoming.start.date().isoformat() if upcoming else None,
    )


def status_changes(previous: StatusFingerprint | None, current: StatusFingerprint) -> list[str]:
    """Why a status update is due, in words; empty when nothing that matters changed."""
    if previous is None:
        return ["first status update from Accord"]
    why = []
    if current.health != previous.health:
        why.append(f"health {previous.health} → {current.health}")
    if current.stage != previous.stage:
        why.append(f"stage {previous.stage} → {current.stage}")
    if current.progress_step != previous.progress_step:
        why.append(f"progress crossed {max(current.progress_step, previous.progress_step)}%")
    if current.overdue > previous.overdue:
        why.append(f"new overdue work ({previous.overdue} → {current.overdue})")
    if current.blocked > previous.blocked:
        why.append(f"new blocked work ({previous.blocked} → {current.blocked})")
    if current.next_meeting != previous.next_meeting:
        why.append(f"next client meeting {current.next_meeting or 'not scheduled'}")
    return why


@dataclass(frozen=True)
class StatusUpdate:
    key: str
    engagement_id: str
    fingerprint: StatusFingerprint
    why: tuple[str, ...]


@dataclass(frozen=True)
class Reminder:
    key: str  # also the External ID of the Task and the seed of the calendar event id
    engagement_id: str
    reason: ReminderReason
    why: str  # for the account manager
    owner_id: str | None  # CRM user the reminder is for
    owner_email: str | None
    contact_id: str | None  # who it is about (Task WhoId)
    due: date
    detail: dict[str, Any] = field(default_factory=dict)  # values the templates may use


@dataclass(frozen=True)
class KnownReminder:
    """A reminder that exists in the target (read back from Salesforce, or known from the outbox)."""

    key: str
    engagement_id: str
    reason: str
    status: ReminderStatus
    created_at: datetime
    due: date | None = None


@dataclass(frozen=True)
class Skip:
    engagement_id: str
    what: str
    why: str


@dataclass
class RulePlan:
    status_updates: list[StatusUpdate] = field(default_factory=list)
    reminders: list[Reminder] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)


@dataclass(frozen=True)
class People:
    """CRM users: who manages whom, and their addresses (for escalations and calendars)."""

    emails: MappingType[str, str]
    managers: MappingType[str, str]


def reminder_key(engagement_id: str, reason: str, episode: object) -> str:
    return f"acc-{engagement_id}-{reason}-{short_hash(engagement_id, reason, episode)}"


class _Planner:
    def __init__(
        self,
        mapping: Mapping,
        now: datetime,
        last_status: MappingType[str, StatusFingerprint],
        known: MappingType[str, KnownReminder],
        people: People,
    ) -> None:
        self.mapping = mapping
        self.rules = mapping.push.rules
        self.now = now
        self.today = now.date()
        self.last_status = last_status
        self.known = known
        self.people = people
        self.open_by_reason: dict[tuple[str, str], KnownReminder] = {}
        for reminder in sorted(known.values(), key=lambda r: r.key):
            if reminder.status != "done":
                self.open_by_reason.setdefault((reminder.engagement_id, reminder.reason), reminder)
        self.plan = RulePlan()

    def owner(self, e: Engagement) -> tuple[str | None, str | None]:
        owner_id = e.owner.id if e.owner else None
        return owner_id, (e.owner.email if e.owner else None)

    def remind(self, e: Engagement, reason: ReminderReason, episode: object, why: str, **kw: Any) -> None:
        key = reminder_key(e.id, reason, episode)
        known = self.known.get(key)
        if known is not None:
            self.plan.skipped.append(Skip(e.id, f"{reason} reminder", f"already exists ({known.status}): {key}"))
            return
        open_one = self.open_by_reason.get((e.id, reason))
        if open_one is not None:
            self.plan.skipped.append(
                Skip(e.id, f"{reason} reminder", f"an open {reason} reminder exists: {open_one.key}")
            )
            return
        owner_id, owner_email = kw.pop("owner", self.owner(e))
        self.plan.reminders.append(
            Reminder(
                key=key,
                engagement_id=e.id,
                reason=reason,
                why=why,
                owner_id=owner_id,
                owner_email=owner_email,
                contact_id=kw.pop("contact_id", None),
                due=kw.pop("due", self.today + timedelta(days=1)),
                detail=kw,
            )
        )

    # -- status ---------------------------------------------------------------------------------
    def status(self, e: Engagement) -> None:
        if not self.rules.status_update.enabled:
            return
        current = fingerprint(e, self.rules.status_update.progress_step)
        previous = self.last_status.get(e.id)
        if previous is None and e.stage == "closure":
            self.plan.skipped.append(Skip(e.id, "status update", "closed before Accord first saw it"))
            return
        why = status_changes(previous, current)
        if why:
            key = f"status-{e.id}-{short_hash(e.id, sorted(current.to_json().items()))}"
            self.plan.status_updates.append(StatusUpdate(key, e.id, current, tuple(why)))

    # -- reminders ------------------------------------------------------------------------------
    def meeting_follow_up(self, e: Engagement) -> None:
        rule = self.rules.meeting_follow_up
        last = e.meetings.last_client_meeting
        if not rule.enabled or last is None:
            return
        age = self.now - last.end
        if age < timedelta(days=rule.days) or age > timedelta(days=rule.days + 14):
            return
        followed = any(a.at > last.end and (a.kind == "meeting" or a.source == "salesforce") for a in e.activity)
        if followed:
            return
        primary = next((s for s in e.stakeholders if s.primary and s.contact_id), None)
        self.remind(
            e,
            "meeting_follow_up",
            last.id,
            f"No follow-up recorded {age.days} days after the client meeting “{last.summary}”.",
            contact_id=primary.contact_id if primary else None,
            meeting=last.summary,
            meeting_date=last.start.date().isoformat(),
        )

    def checkin_due(self, e: Engagement) -> None:
        if not self.rules.checkin_due.enabled or e.stage == "closure":
            return
        cadence = self.mapping.health.checkin_cadence_days
        upcoming = e.meetings.next_client_meeting
        if upcoming is not None and upcoming.start - self.now <= timedelta(days=cadence):
            return
        last = e.meetings.last_client_meeting
        if last is not None and self.now - last.start < timedelta(days=cadence) - timedelta(days=3):
            return  # not yet due: remind three days before the cadence runs out
        since = f"{(self.now - last.start).days} days since the last one" if last else "none on record"
        self.remind(
            e,
            "checkin_due",
            last.id if last else "never",
            f"No client check-in scheduled within the {cadence}-day cadence ({since}).",
            cadence_days=cadence,
        )

    def stakeholder_quiet(self, e: Engagement) -> None:
        rule = self.rules.stakeholder_quiet
        if not rule.enabled or e.stage == "closure":
            return
        key_roles = set(self.mapping.health.key_roles)
        quiet = [
            s
            for s in e.stakeholders
            if s.role in key_roles
            and s.contact_id
            and (s.last_touch is None or self.now - s.last_touch > timedelta(days=rule.days))
        ]
        if not quiet:
            return
        oldest = min(
            quiet,
            key=lambda s: (s.last_touch or datetime.min.replace(tzinfo=self.now.tzinfo), s.contact_id or ""),
        )
        when = f"for {(self.now - oldest.last_touch).days} days" if oldest.last_touch else "in any client meeting yet"
        self.remind(
            e,
            "stakeholder_quiet",
            (oldest.contact_id, oldest.last_touch.date().isoformat() if oldest.last_touch else None),
            f"{oldest.role} {oldest.name or 'contact'} has not been seen {when}.",
            contact_id=oldest.contact_id,
            stakeholder=oldest.name,
            role=oldest.role,
        )

    def overdue_aging(self, e: Engagement) -> None:
        rule = self.rules.overdue_aging
        days = e.progress.oldest_overdue_days
        if not rule.enabled or e.stage in ("closure", "initiation") or days is None or days < rule.days:
            return
        self.remind(
            e,
            "overdue_aging",
            e.progress.oldest_overdue_key,
            f"{e.progress.overdue} overdue issue(s); {e.progress.oldest_overdue_key} is {days} days past due.",
            issue=e.progress.oldest_overdue_key,
            overdue=e.progress.overdue,
        )

    def post_closure(self, e: Engagement) -> None:
        rule = self.rules.post_closure
        if not rule.enabled or e.stage != "closure" or e.close_date is None:
            return
        if (e.opportunity_stage or "").casefold() == "closed lost":
            return
        since = (self.today - e.close_date).days
        for offset in sorted(rule.days):
            if offset <= since < offset + rule.window_days:
                primary = next((s for s in e.stakeholders if s.primary and s.contact_id), None)
                self.remind(
                    e,
                    "post_closure",
                    offset,
                    f"Relationship follow-up {offset} days after the project closed.",
                    contact_id=primary.contact_id if primary else None,
                    days_after=offset,
                )

    def escalations(self, engagements: MappingType[str, Engagement]) -> None:
        rule = self.rules.escalation
        if not rule.enabled:
            return
        for known in sorted(self.known.values(), key=lambda r: r.key):
            if known.status != "open" or known.reason == "escalation" or known.key.endswith("-escalation"):
                continue
            if self.now - known.created_at < timedelta(days=rule.days):
                continue
            e = engagements.get(known.engagement_id)
            if e is None or e.owner is None or e.owner.id is None:
                continue
            key = f"{known.key}-escalation"
            if key in self.known:
                continue
            manager = self.people.managers.get(e.owner.id)
            if manager is None:
                self.plan.skipped.append(Skip(e.id, "escalation", f"{e.owner.name} has no manager in the CRM"))
                continue
            self.plan.reminders.append(
                Reminder(
                    key=key,
                    engagement_id=e.id,
                    reason="escalation",
                    why=f"A {known.reason.replace('_', ' ')} reminder for {e.owner.name} has been open for "
                    f"{(self.now - known.created_at).days} days.",
                    owner_id=manager,
                    owner_email=self.people.emails.get(manager),
                    contact_id=None,
                    due=self.today + timedelta(days=1),
                    detail={
                        "escalated_key": known.key,
                        "escalated_reason": known.reason,
                        "owner": e.owner.name,
                    },
                )
            )


def plan_rules(
    engagements: Iterable[Engagement],
    mapping: Mapping,
    now: datetime,
    *,
    last_status: MappingType[str, StatusFingerprint],
    known: MappingType[str, KnownReminder],
    people: People,
) -> RulePlan:
    """Status updates and reminders due now, and what was deliberately left alone."""
    planner = _Planner(mapping, now, last_status, known, people)
    by_id = {e.id: e for e in sorted(engagements, key=lambda e: e.id)}
    for e in by_id.values():
        planner.status(e)
        planner.meeting_follow_up(e)
        planner.checkin_due(e)
        planner.stakeholder_quiet(e)
        planner.overdue_aging(e)
        planner.post_closure(e)
    planner.escalations(by_id)
    return planner.plan
