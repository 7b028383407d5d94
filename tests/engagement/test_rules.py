"""Rules: status updates only when something that matters changed; reminders once per episode."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from engagement.mapping import Mapping, load_mapping
from engagement.model import Engagement
from engagement.rules import KnownReminder, People, fingerprint, plan_rules, status_changes
from engagement.unify import Snapshot, unify
from sandbox.generator import generate_world
from tests.engagement.world_records import world_records

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
NOBODY = People({}, {})


@pytest.fixture(scope="module")
def mapping() -> Mapping:
    return load_mapping("mappings/default.yaml")


@pytest.fixture(scope="module")
def engagements(mapping: Mapping) -> tuple[Engagement, ...]:
    world = generate_world("medium", 3, NOW)
    return unify(Snapshot.from_records(world_records(world)), mapping, NOW).engagements


def test_first_plan_posts_status_for_live_engagements_and_reminds(
    engagements: tuple[Engagement, ...], mapping: Mapping
) -> None:
    plan = plan_rules(engagements, mapping, NOW, last_status={}, known={}, people=NOBODY)
    live = [e for e in engagements if e.stage != "closure"]
    assert {u.engagement_id for u in plan.status_updates} == {e.id for e in live}
    assert all(u.why == ("first status update from Accord",) for u in plan.status_updates)
    reasons = {r.reason for r in plan.reminders}
    assert {"checkin_due", "stakeholder_quiet", "overdue_aging"} <= reasons
    keys = [r.key for r in plan.reminders]
    assert len(keys) == len(set(keys))
    per_reason = [(r.engagement_id, r.reason) for r in plan.reminders]
    assert len(per_reason) == len(set(per_reason))  # at most one per (engagement, reason)
    assert plan_rules(engagements, mapping, NOW, last_status={}, known={}, people=NOBODY) == plan  # deterministic


def test_nothing_changed_means_no_status_update(engagements: tuple[Engagement, ...], mapping: Mapping) -> None:
    step = mapping.push.rules.status_update.progress_step
    last = {e.id: fingerprint(e, step) for e in engagements}
    plan = plan_rules(engagements, mapping, NOW, last_status=last, known={}, people=NOBODY)
    assert plan.status_updates == []


def test_what_matters_for_a_status_update(engagements: tuple[Engagement, ...]) -> None:
    current = fingerprint(engagements[0], 10)
    assert status_changes(current, current) == []
    assert status_changes(replace(current, health="green" if current.health != "green" else "red"), current)
    assert status_changes(replace(current, overdue=current.overdue + 1), current) == []  # fewer overdue: no news
    assert status_changes(replace(current, overdue=current.overdue - 1), current) == [
        f"new overdue work ({current.overdue - 1} → {current.overdue})"
    ]
    assert status_changes(replace(current, progress_step=current.progress_step - 10), current)[0].startswith(
        "progress crossed"
    )


def test_reminders_are_not_recreated_and_open_ones_block_new_episodes(
    engagements: tuple[Engagement, ...], mapping: Mapping
) -> None:
    first = plan_rules(engagements, mapping, NOW, last_status={}, known={}, people=NOBODY)
    done = {r.key: KnownReminder(r.key, r.engagement_id, r.reason, "done", NOW) for r in first.reminders}
    again = plan_rules(engagements, mapping, NOW, last_status={}, known=done, people=NOBODY)
    assert again.reminders == []
    assert len([s for s in again.skipped if "already exists (done)" in s.why]) == len(first.reminders)
    # An open reminder for the same engagement and reason, from another episode, blocks a new one.
    other_episode = {
        f"{r.key}x": KnownReminder(f"{r.key}x", r.engagement_id, r.reason, "open", NOW) for r in first.reminders
    }
    blocked = plan_rules(engagements, mapping, NOW, last_status={}, known=other_episode, people=NOBODY)
    assert blocked.reminders == []


def test_escalation_after_days_unanswered(engagements: tuple[Engagement, ...], mapping: Mapping) -> None:
    first = plan_rules(engagements, mapping, NOW, last_status={}, known={}, people=NOBODY)
    reminder = next(r for r in first.reminders if r.owner_id)
    known = {reminder.key: KnownReminder(reminder.key, reminder.engagement_id, reminder.reason, "open", NOW)}
    people = People({"mgr": "boss@agency.example"}, {reminder.owner_id or "": "mgr"})
    days = mapping.push.rules.escalation.days
    early = plan_rules(engagements, mapping, NOW + timedelta(days=days - 1), last_status={}, known=known, people=people)
    assert not [r for r in early.reminders if r.reason == "escalation"]
    late = plan_rules(engagements, mapping, NOW + timedelta(days=days), last_status={}, known=known, people=people)
    escalations = [r for r in late.reminders if r.reason == "escalation"]
    assert [(r.key, r.owner_id, r.owner_email) for r in escalations] == [
        (f"{reminder.key}-escalation", "mgr", "boss@agency.example")
    ]
    done = {**known, reminder.key: replace(known[reminder.key], status="done")}
    assert not [
        r
        for r in plan_rules(
            engagements, mapping, NOW + timedelta(days=days), last_status={}, known=done, people=people
        ).reminders
        if r.reason == "escalation"
    ]


def test_rules_can_be_switched_off(engagements: tuple[Engagement, ...], mapping: Mapping) -> None:
    rules = mapping.push.rules
    off = rules.model_copy(
        update={name: getattr(rules, name).model_copy(update={"enabled": False}) for name in type(rules).model_fields}
    )
    quiet = mapping.model_copy(update={"push": mapping.push.model_copy(update={"rules": off})})
    plan = plan_rules(engagements, quiet, NOW, last_status={}, known={}, people=NOBODY)
    assert plan.status_updates == [] and plan.reminders == []


def test_post_closure_follow_ups_at_30_and_90_days(engagements: tuple[Engagement, ...], mapping: Mapping) -> None:
    closed = next(e for e in engagements if e.stage == "closure" and (e.opportunity_stage or "") != "Closed Lost")
    assert closed.close_date is not None
    for offset, expected in ((29, False), (30, True), (43, True), (44, False), (90, True)):
        when = datetime(closed.close_date.year, closed.close_date.month, closed.close_date.day, 9, tzinfo=UTC)
        plan = plan_rules([closed], mapping, when + timedelta(days=offset), last_status={}, known={}, people=NOBODY)
        found = [r for r in plan.reminders if r.reason == "post_closure"]
        assert bool(found) is expected, offset
