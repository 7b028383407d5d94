"""Lifecycle stage and health, with the reasons behind them in an account manager's words.

The rules follow client-relationship practice: keep regular check-ins, know and keep in touch with
every key stakeholder, surface risk early (overdue and blocked work, stalled delivery). Every
threshold comes from the mapping (``health:``) and the stage rules from ``lifecycle:``.

``now`` may be a ``Clock`` (``engagement.horizon``): every comparison with it then also records
when its answer would change, so the caller knows how long the stage and health hold.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from engagement.horizon import Clock
from engagement.mapping import LifecycleStage, Mapping
from engagement.model import (
    SEVERITY_ORDER,
    EngagementHealth,
    HealthLevel,
    Meetings,
    Progress,
    Reason,
    Severity,
    Stakeholder,
)
from engagement.records import Opportunity


def derive_stage(
    opportunity: Opportunity, progress: Progress, mapping: Mapping, now: datetime | Clock
) -> LifecycleStage:
    """The first lifecycle rule of the mapping that matches; ``execution`` when none does."""
    clock = Clock.of(now)
    fraction = progress.percent_complete / 100.0 if progress.total else 0.0
    close_passed: bool | None = None  # close_date < today, asked only of a rule that reads it
    for rule in mapping.lifecycle:
        if rule.opportunity_stages is not None and (opportunity.stage or "") not in rule.opportunity_stages:
            continue
        if rule.progress_at_least is not None and (not progress.total or fraction < rule.progress_at_least):
            continue
        if rule.progress_below is not None and fraction >= rule.progress_below:
            continue
        if rule.close_date_passed is not None:
            if close_passed is None:
                close_passed = opportunity.close_date is not None and clock.date_passed(opportunity.close_date)
            if close_passed != rule.close_date_passed:
                continue
        return rule.stage
    return "execution"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _checkin(meetings: Meetings, mapping: Mapping, clock: Clock) -> list[Reason]:
    cadence = mapping.health.checkin_cadence_days
    upcoming = meetings.next_client_meeting
    last = meetings.last_client_meeting
    # Nothing to say while the next meeting is soon or the last one recent. Each is asked of a clock
    # of its own, so that only the change that ends the silence bounds how long it holds: once soon,
    # the next meeting stays soon until it starts (which unify's meetings record); a recent meeting
    # ends the silence when it stops being recent unless the next one is soon by then.
    soon, recent = Clock(clock.now), Clock(clock.now)
    if upcoming is not None and soon.due_within(upcoming.start, timedelta(days=cadence)):  # start - now <= cadence
        return []
    if last is not None and not recent.more_days_since(last.start, cadence):  # (now - last.start).days <= cadence
        if soon.until is None or recent.until is None or recent.until < soon.until:
            clock.changes_at(recent.until)
        return []
    clock.changes_at(soon.until)
    if last is None:
        return [
            Reason(
                "no_client_meeting",
                "amber",
                f"No client meeting on record and none scheduled in the next {cadence} days.",
            )
        ]
    days = clock.days_since(last.start)  # more than cadence
    severity: Severity = "red" if days > 2 * cadence else "amber"
    scheduled = (
        f"the next is in {clock.days_until(upcoming.start)} days" if upcoming is not None else "none is scheduled"
    )
    return [
        Reason(
            "checkin_overdue",
            severity,
            f"No client check-in for {days} days (expected every {cadence} days); {scheduled}.",
        )
    ]


def _stakeholders(stakeholders: tuple[Stakeholder, ...], mapping: Mapping, clock: Clock) -> list[Reason]:
    key_roles = set(mapping.health.key_roles)
    key_people = [s for s in stakeholders if s.role in key_roles]
    if not key_people:
        return [
            Reason(
                "no_key_stakeholder",
                "amber",
                f"No {' / '.join(mapping.health.key_roles)} recorded on the opportunity.",
            )
        ]
    reasons = []
    quiet_days = mapping.health.stakeholder_quiet_days
    for person in key_people:
        if person.engaged:
            continue
        who = f"{person.role} {person.name or person.email or person.contact_id}"
        if person.last_touch is None:
            text = f"{who} has not attended a client meeting."
        else:
            text = f"{who} not seen in a meeting for {clock.days_since(person.last_touch)} days (limit {quiet_days})."
        reasons.append(Reason("stakeholder_quiet", "amber", text))
    unknown = [s for s in stakeholders if s.contact_id is None]
    if unknown:
        reasons.append(
            Reason(
                "unknown_stakeholders",
                "info",
                f"{_plural(len(unknown), 'client attendee')} not in the CRM: review and add them.",
            )
        )
    return reasons


def _delivery(progress: Progress, mapping: Mapping, stage: LifecycleStage) -> list[Reason]:
    """From the progress alone (its comparisons with now are made, and recorded, by unify)."""
    t = mapping.health
    reasons = []
    open_issues = progress.by_category.get("new", 0) + progress.by_category.get("indeterminate", 0)
    if progress.overdue:
        share = progress.overdue / open_issues if open_issues else 0.0
        days = progress.oldest_overdue_days
        oldest = f", the oldest {_plural(days, 'day')} past due" if days else ""
        text = f"{_plural(progress.overdue, 'overdue issue')}{oldest}."
        if progress.overdue >= t.overdue_red or (share >= t.overdue_share_red and progress.overdue >= t.overdue_amber):
            reasons.append(Reason("overdue_work", "red", text))
        elif progress.overdue >= t.overdue_amber:
            reasons.append(Reason("overdue_work", "amber", text))
    if progress.blocked >= t.blocked_red:
        reasons.append(Reason("blocked_work", "red", f"{_plural(progress.blocked, 'blocked issue')}."))
    elif progress.blocked >= t.blocked_amber:
        reasons.append(Reason("blocked_work", "amber", f"{_plural(progress.blocked, 'blocked issue')}."))
    recent = progress.throughput[-t.stalled_weeks :] if progress.throughput else ()
    if stage == "execution" and open_issues and not any(recent):
        reasons.append(
            Reason(
                "delivery_stalled",
                "amber",
                f"No issue completed in {_plural(t.stalled_weeks, 'week')} while {open_issues} remain open.",
            )
        )
    return reasons


def assess_health(
    stage: LifecycleStage,
    opportunity: Opportunity,
    progress: Progress,
    meetings: Meetings,
    stakeholders: tuple[Stakeholder, ...],
    mapping: Mapping,
    now: datetime | Clock,
) -> EngagementHealth:
    """Green, amber or red: the worst reason decides; info reasons never change the colour."""
    if stage == "closure":
        outcome = "lost" if (opportunity.stage or "").casefold() == "closed lost" else "completed"
        return EngagementHealth("green", (Reason("closed", "info", f"Engagement {outcome}."),))
    clock = Clock.of(now)
    reasons = _checkin(meetings, mapping, clock) + _stakeholders(stakeholders, mapping, clock)
    if stage in ("planning", "execution"):
        reasons += _delivery(progress, mapping, stage)
    reasons.sort(key=lambda r: (-SEVERITY_ORDER[r.severity], r.code, r.text))
    worst = max((SEVERITY_ORDER[r.severity] for r in reasons), default=0)
    level: HealthLevel = "red" if worst == 2 else "amber" if worst == 1 else "green"
    return EngagementHealth(level, tuple(reasons))
