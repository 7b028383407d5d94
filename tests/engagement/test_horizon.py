"""How long an engagement holds with no new data (``UnifiedView.valid_until``).

Sound: unify over the same records at any instant before an engagement's horizon gives the same
engagement (and at any later instant when the horizon is None). Tight on crafted cases: at the
horizon itself the engagement is different, and the horizon is the instant the rule says.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engagement.horizon import TICK, Clock
from engagement.mapping import Mapping, StageRule, load_mapping
from engagement.model import Engagement, UnifiedView
from engagement.partition import unify_all
from engagement.records import (
    Account,
    CalendarEvent,
    Contact,
    ContactRole,
    CrmUser,
    EventAttendee,
    Opportunity,
    WorkItem,
)
from engagement.unify import Snapshot, unify
from sandbox.generator import generate_world
from tests.engagement.test_partition import MemorySource
from tests.engagement.world_records import world_records

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)
LATER = (DAY, timedelta(days=3 * 365), timedelta(days=40 * 365))  # for engagements time never changes


@functools.cache
def default_mapping() -> Mapping:
    return load_mapping("mappings/default.yaml")


def mapping_with(
    cadence: int = 14,
    quiet: int = 30,
    weeks: int = 4,
    stalled: int = 3,
    close_rules: bool = False,
) -> Mapping:
    """The default mapping with other thresholds and, with ``close_rules``, stage rules that read
    whether the close date has passed."""
    base = default_mapping()
    health = base.health.model_copy(
        update={
            "checkin_cadence_days": cadence,
            "stakeholder_quiet_days": quiet,
            "throughput_weeks": weeks,
            "stalled_weeks": stalled,
        }
    )
    lifecycle = list(base.lifecycle)
    if close_rules:
        lifecycle = [
            StageRule(
                stage="closure", opportunity_stages=["Closed Won"], close_date_passed=True, progress_at_least=0.5
            ),
            StageRule(stage="planning", opportunity_stages=["Qualification"], close_date_passed=True),
            *lifecycle,
        ]
    return base.model_copy(update={"health": health, "lifecycle": lifecycle})


def engagements_at(snapshot: Snapshot, mapping: Mapping, t: datetime) -> dict[str, Engagement]:
    return {e.id: e for e in unify(snapshot, mapping, t).engagements}


def assert_sound(snapshot: Snapshot, mapping: Mapping, now: datetime, view: UnifiedView, fraction: float) -> None:
    """Every engagement of ``view`` (unify at ``now``) is the same at its horizon minus a tick, at a
    point ``fraction`` of the way to it, and much later when it has none."""
    expected = {e.id: e for e in view.engagements}
    assert set(view.valid_until) == set(expected)
    seen: dict[datetime, dict[str, Engagement]] = {}

    def at(t: datetime) -> dict[str, Engagement]:
        if t not in seen:
            seen[t] = engagements_at(snapshot, mapping, t)
        return seen[t]

    for engagement_id, until in view.valid_until.items():
        if until is None:
            instants = [now + later for later in LATER]
        else:
            assert until > now
            inside = now + (until - now) * fraction
            instants = [until - TICK, min(inside, until - TICK)]
        for t in instants:
            assert at(t)[engagement_id] == expected[engagement_id], (engagement_id, now, until, t)


# -- soundness over generated orgs ----------------------------------------------------------------------
@functools.cache
def world_snapshot(seed: int) -> Snapshot:
    return Snapshot.from_records(world_records(generate_world("small", seed, NOW)))


def interesting_instants(snapshot: Snapshot) -> list[datetime]:
    """Where comparisons with now flip or nearly do: meetings, issue stamps, midnights of due dates."""
    out = [e.start for e in snapshot.events]
    out += [i.resolved for i in snapshot.issues if i.resolved is not None]
    out += [i.created for i in snapshot.issues if i.created is not None]
    out += [datetime.combine(i.due_date, datetime.min.time(), UTC) + DAY for i in snapshot.issues if i.due_date]
    out += [o.updated_at for o in snapshot.opportunities]
    return sorted(set(out))


mappings = st.builds(
    mapping_with,
    cadence=st.integers(1, 30),
    quiet=st.integers(1, 60),
    weeks=st.integers(1, 8),
    stalled=st.integers(1, 6),
    close_rules=st.booleans(),
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from([4, 9, 11]),
    mapping=mappings,
    data=st.data(),
    fraction=st.floats(0, 1, exclude_max=True),
)
def test_generated_orgs_hold_until_their_horizon(
    seed: int, mapping: Mapping, data: st.DataObject, fraction: float
) -> None:
    snapshot = world_snapshot(seed)
    instants = interesting_instants(snapshot)
    # now: anywhere around the org's present, or on (or a tick either side of) an instant where a
    # comparison flips, a whole number of days or weeks later, so that boundaries are hit exactly.
    now = data.draw(
        st.one_of(
            st.integers(-60 * 86400 * 10**6, 60 * 86400 * 10**6).map(lambda us: NOW + timedelta(microseconds=us)),
            st.builds(
                lambda t, shift, tick: t + shift + tick,
                st.sampled_from(instants),
                st.sampled_from([timedelta(0), DAY, 14 * DAY, 30 * DAY, timedelta(weeks=1), 90 * DAY]),
                st.sampled_from([-TICK, timedelta(0), TICK]),
            ),
        ),
        label="now",
    )
    view = unify(snapshot, mapping, now)
    assert_sound(snapshot, mapping, now, view, fraction)


# -- soundness over tiny hand-shaped orgs ---------------------------------------------------------------
ACCOUNT = Account("001A", "Client", ("client.com",), "005A")
USER = CrmUser("005A", "Pat Manager", "pat@agency.example", None, True)
CONTACTS = (
    Contact("003A", "001A", "Jane Doe", "jane@client.com", None, NOW),
    Contact("003B", "001A", "Sam Roe", "sam@client.com", None, NOW),
)
ROLES = (
    ContactRole("00KA", "006A", "003A", "Decision Maker", True),
    ContactRole("00KB", "006A", "003B", "Executive Sponsor", False),
)


def opportunity(stage: str = "Closed Won", close: date | None = None, updated: datetime = NOW) -> Opportunity:
    return Opportunity("006A", "Site", "001A", stage, "005A", close, 1.0, "SITE", updated)


def issue(
    n: int,
    category: str = "new",
    due: date | None = None,
    created: datetime | None = None,
    resolved: datetime | None = None,
) -> WorkItem:
    status = {"new": "To Do", "indeterminate": "In Progress", "done": "Done"}[category]
    return WorkItem(
        f"i{n}",
        f"SITE-{n}",
        "SITE",
        f"Task {n}",
        "Task",
        status,
        category,
        None,
        None,
        due,
        (),
        None,
        created,
        NOW,
        resolved,
    )


def meeting(
    n: int, start: datetime, who: tuple[str, ...] = ("jane@client.com",), response: str = "accepted"
) -> CalendarEvent:
    client = tuple(EventAttendee(email, response) for email in who)
    attendees = (EventAttendee("pat@agency.example", "accepted", True), *client)
    return CalendarEvent(
        f"e{n}", "pat@agency.example", "Check-in", start, start + timedelta(hours=1), "confirmed", attendees
    )


def snapshot_of(opp: Opportunity, issues: Sequence[WorkItem] = (), events: Sequence[CalendarEvent] = ()) -> Snapshot:
    return Snapshot(
        accounts=[ACCOUNT],
        contacts=list(CONTACTS),
        opportunities=[opp],
        roles=list(ROLES),
        users=[USER],
        issues=list(issues),
        events=list(events),
    )


# Instants relative to now that line up with the rules' boundaries: whole days, weeks, hours, and a
# tick either side.
offsets = st.builds(
    lambda k, unit, tick: k * unit + tick,
    st.integers(-100, 100),
    st.sampled_from([DAY, timedelta(weeks=1), timedelta(hours=1), timedelta(hours=7)]),
    st.sampled_from([-TICK, timedelta(0), TICK]),
)
now_instants = st.one_of(
    st.just(NOW),
    st.just(datetime(2026, 11, 22, tzinfo=UTC)),  # a midnight
    st.just(datetime(2026, 11, 22, tzinfo=UTC) - TICK),
    st.integers(0, 86400 * 10**6 - 1).map(lambda us: datetime(2026, 11, 22, tzinfo=UTC) + timedelta(microseconds=us)),
)


@st.composite
def tiny_orgs(draw: st.DrawFn) -> tuple[Snapshot, datetime]:
    now = draw(now_instants)
    today = now.date()
    days = st.integers(-40, 40).map(lambda k: today + timedelta(days=k))
    opp = opportunity(
        draw(st.sampled_from(["Closed Won", "Qualification", "Closed Lost"])),
        draw(st.none() | days),
        now + draw(offsets),
    )
    issues = []
    for n in range(draw(st.integers(0, 6))):
        category = draw(st.sampled_from(["new", "indeterminate", "done"]))
        issues.append(
            issue(
                n,
                category,
                draw(st.none() | days),
                draw(st.none() | offsets.map(lambda d: now + d)),
                now + draw(offsets) if category == "done" and draw(st.booleans()) else None,
            )
        )
    events = []
    for n in range(draw(st.integers(0, 6))):
        who = draw(
            st.sampled_from([("jane@client.com",), ("sam@client.com",), ("jane@client.com", "new.person@client.com")])
        )
        events.append(meeting(n, now + draw(offsets), who, draw(st.sampled_from(["accepted", "declined"]))))
    return snapshot_of(opp, issues, events), now


@settings(max_examples=150, deadline=None)
@given(org=tiny_orgs(), mapping=mappings, fraction=st.floats(0, 1, exclude_max=True))
def test_tiny_orgs_hold_until_their_horizon(org: tuple[Snapshot, datetime], mapping: Mapping, fraction: float) -> None:
    snapshot, now = org
    view = unify(snapshot, mapping, now)
    assert_sound(snapshot, mapping, now, view, fraction)


# -- tight on crafted cases --------------------------------------------------------------------------
def horizon(snapshot: Snapshot, now: datetime, mapping: Mapping | None = None) -> datetime | None:
    return unify(snapshot, mapping or default_mapping(), now).valid_until["006A"]


def changes_at(snapshot: Snapshot, now: datetime, until: datetime, mapping: Mapping | None = None) -> bool:
    """The engagement is the same just before ``until`` and different at it."""
    m = mapping or default_mapping()
    before, just_before, at = (engagements_at(snapshot, m, t)["006A"] for t in (now, until - TICK, until))
    return before == just_before != at


def recent_meetings(now: datetime) -> list[CalendarEvent]:
    """Meetings a few days ago with both key people: nothing about check-ins or stakeholders moves soon."""
    return [meeting(90 + k, now - (k + 1) * DAY, ("jane@client.com", "sam@client.com")) for k in range(2)]


def test_a_meeting_ahead_holds_until_it_starts() -> None:
    start = NOW + timedelta(hours=5, minutes=3)
    snap = snapshot_of(opportunity(), events=[*recent_meetings(NOW), meeting(1, start)])
    assert horizon(snap, NOW) == start
    assert changes_at(snap, NOW, start)
    after = engagements_at(snap, default_mapping(), start)["006A"].meetings
    assert after.last_client_meeting is not None and after.last_client_meeting.start == start


def test_an_issue_becomes_overdue_at_the_midnight_after_its_due_date() -> None:
    due = NOW.date() + timedelta(days=3)
    snap = snapshot_of(
        opportunity(),
        issues=[issue(1, "indeterminate", due=due), issue(2, "done", resolved=NOW - DAY)],
        events=[*recent_meetings(NOW), meeting(1, NOW + 30 * DAY)],
    )
    midnight = datetime(due.year, due.month, due.day, tzinfo=UTC) + DAY
    assert horizon(snap, NOW) == midnight
    assert changes_at(snap, NOW, midnight)
    assert engagements_at(snap, default_mapping(), midnight)["006A"].progress.overdue == 1


def test_an_overdue_issue_ages_at_every_midnight() -> None:
    snap = snapshot_of(
        opportunity(),
        issues=[issue(1, "new", due=NOW.date() - 2 * DAY), issue(2, "done", resolved=NOW - DAY)],
        events=[*recent_meetings(NOW), meeting(1, NOW + 30 * DAY)],
    )
    midnight = datetime(2026, 11, 23, tzinfo=UTC)
    assert horizon(snap, NOW) == midnight
    assert changes_at(snap, NOW, midnight)


def test_a_day_count_in_a_reason_holds_for_a_whole_day() -> None:
    """Sam (Executive Sponsor) was last seen 40 days and 5 hours ago: "not seen for 40 days" until
    last_touch + 41 days."""
    last_touch = NOW - 40 * DAY - timedelta(hours=5)
    events = [meeting(1, last_touch, ("sam@client.com",)), *[meeting(10 + k, NOW - (k + 1) * DAY) for k in range(2)]]
    snap = snapshot_of(opportunity(), events=[*events, meeting(2, NOW + 5 * DAY)])
    e = engagements_at(snap, default_mapping(), NOW)["006A"]
    assert any("not seen in a meeting for 40 days" in r.text for r in e.health.reasons)
    assert horizon(snap, NOW) == last_touch + 41 * DAY
    assert changes_at(snap, NOW, last_touch + 41 * DAY)


def test_a_stakeholder_goes_quiet_just_after_the_quiet_days() -> None:
    last_touch = NOW - 20 * DAY
    events = [meeting(1, last_touch, ("sam@client.com",)), *[meeting(10 + k, NOW - (k + 1) * DAY) for k in range(2)]]
    snap = snapshot_of(opportunity(), events=[*events, meeting(2, NOW + 40 * DAY)])
    until = last_touch + 30 * DAY + TICK  # now - last <= 30 days holds at exactly 30 days
    assert horizon(snap, NOW) == until
    assert changes_at(snap, NOW, until)


def test_a_check_in_becomes_overdue_after_the_cadence() -> None:
    last = NOW - 10 * DAY + timedelta(hours=2)
    snap = snapshot_of(
        opportunity(), events=[meeting(1, last, ("jane@client.com", "sam@client.com")), meeting(2, NOW + 60 * DAY)]
    )
    until = last + 15 * DAY  # (now - last).days > 14
    assert horizon(snap, NOW) == until
    assert changes_at(snap, NOW, until)
    assert any(
        r.code == "checkin_overdue" for r in engagements_at(snap, default_mapping(), until)["006A"].health.reasons
    )


def test_a_recent_check_in_then_one_soon_say_nothing_until_the_next_starts() -> None:
    """The last meeting stays recent until now + 10 days, the next (now + 18 days) is soon from now + 4
    days: no check-in reason until that meeting starts, and none of those instants is a horizon."""
    upcoming = NOW + 18 * DAY
    snap = snapshot_of(
        opportunity(), events=[meeting(1, NOW - 5 * DAY, ("jane@client.com", "sam@client.com")), meeting(2, upcoming)]
    )
    assert horizon(snap, NOW) == upcoming
    assert changes_at(snap, NOW, upcoming)


def test_the_stage_changes_when_the_close_date_passes() -> None:
    mapping = mapping_with(close_rules=True)
    close = NOW.date() + timedelta(days=2)
    snap = snapshot_of(
        opportunity("Qualification", close),
        issues=[issue(1, "done", resolved=NOW - DAY)],
        events=[*recent_meetings(NOW), meeting(1, NOW + 10 * DAY)],
    )
    midnight = datetime(close.year, close.month, close.day, tzinfo=UTC) + DAY
    assert engagements_at(snap, mapping, NOW)["006A"].stage == "initiation"
    assert horizon(snap, NOW, mapping) == midnight
    assert changes_at(snap, NOW, midnight, mapping)
    assert engagements_at(snap, mapping, midnight)["006A"].stage == "planning"
    # The default rules never read the close date: its midnight is no horizon of theirs.
    assert horizon(snap, NOW) != midnight


def test_throughput_moves_a_week_back_one_tick_after_a_whole_number_of_weeks() -> None:
    resolved = NOW - timedelta(days=2, hours=3)
    snap = snapshot_of(
        opportunity(),
        issues=[issue(1, "done", resolved=resolved, created=NOW - 60 * DAY), issue(2, "new")],
        events=[*recent_meetings(NOW), meeting(1, NOW + 30 * DAY)],
    )
    # start = now - 4 weeks; resolved - start = 3 weeks + 4 days 21 h: bucket 3 until that is 3 weeks.
    until = resolved + timedelta(days=7) + TICK
    assert engagements_at(snap, default_mapping(), NOW)["006A"].progress.throughput == (0, 0, 0, 1)
    assert horizon(snap, NOW) == until
    assert changes_at(snap, NOW, until)
    assert engagements_at(snap, default_mapping(), until)["006A"].progress.throughput == (0, 0, 1, 0)


def test_an_engagement_time_cannot_change_has_no_horizon() -> None:
    snap = snapshot_of(opportunity("Closed Lost"), issues=[issue(1, "done", resolved=NOW - 400 * DAY)])
    view = unify(snap, default_mapping(), NOW)
    assert view.valid_until == {"006A": None}
    assert engagements_at(snap, default_mapping(), NOW + 100 * 365 * DAY) == {e.id: e for e in view.engagements}


def test_groups_give_the_horizons_of_everything() -> None:
    records = world_records(generate_world("small", 9, NOW))
    expected = unify(Snapshot.from_records(records), default_mapping(), NOW)
    got = unify_all(MemorySource(records), default_mapping(), NOW, partitions=3, group_size=2)
    assert got.valid_until == expected.valid_until
    assert any(v is not None for v in got.valid_until.values())


# -- the Clock itself --------------------------------------------------------------------------------
@pytest.mark.parametrize("weeks", [1, 2, 4, 13, 26])
def test_the_week_of_an_instant_holds_until_it_moves_a_week_back(weeks: int) -> None:
    """At every week boundary unify can meet (up to 26 weeks), and a tick either side: the answer is
    unify's expression, ``int((t - start) / week)`` with a float quotient, and it changes exactly at
    the horizon."""
    week = timedelta(weeks=1)
    start = NOW - weeks * week
    for k in range(weeks + 1):
        for t in (start + k * week - TICK, start + k * week, start + k * week + TICK, NOW + TICK):
            clock = Clock(NOW)
            index = clock.week_of(t, weeks)
            assert index == (min(weeks - 1, int((t - start) / week)) if start <= t < NOW else None)
            if clock.until is None:
                assert index is None and t < start
                continue
            assert Clock(clock.until - TICK).week_of(t, weeks) == index != Clock(clock.until).week_of(t, weeks)


@pytest.mark.parametrize(
    ("ask", "flips"),
    [
        (lambda c, t: c.passed(t), lambda t: t),
        (lambda c, t: c.before(t), lambda t: t + TICK),
        (lambda c, t: c.days_until(t), lambda t: t - 3 * DAY + TICK),  # t = now + 3 days 5 hours
        (lambda c, t: c.due_within(t, 2 * DAY), lambda t: t - 2 * DAY),
    ],
)
def test_each_answer_changes_exactly_at_its_horizon(ask: Any, flips: Any) -> None:
    t = NOW + timedelta(days=3, hours=5)
    clock = Clock(NOW)
    answer = ask(clock, t)
    assert clock.until == flips(t)
    assert ask(Clock(clock.until - TICK), t) == answer != ask(Clock(clock.until), t)


def test_answers_past_the_last_representable_instant_record_nothing() -> None:
    clock = Clock(datetime.max.replace(tzinfo=UTC) - DAY)
    assert not clock.date_passed(date.max)
    assert clock.within(clock.now, timedelta(days=10))
    assert clock.until is None
    assert clock.days_since(clock.now - timedelta(hours=5)) == 0
    assert clock.until == clock.now + timedelta(hours=19)
