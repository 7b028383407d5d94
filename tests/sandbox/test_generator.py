"""The org generator: deterministic, shaped like real engagements, sized as promised."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from sandbox.generator import SIZES, generate_world
from sandbox.world import STATUS_CATEGORY

ANCHOR = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def test_same_seed_same_world_and_other_seed_other_world() -> None:
    assert generate_world("small", 7, ANCHOR) == generate_world("small", 7, ANCHOR)
    assert generate_world("small", 7, ANCHOR) != generate_world("small", 8, ANCHOR)


def test_unknown_size_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown org size 'huge'"):
        generate_world("huge", 1, ANCHOR)


def test_naive_anchor_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        generate_world("small", 1, datetime(2026, 1, 1))


def test_medium_has_the_promised_size() -> None:
    world = generate_world("medium", 1, ANCHOR)
    counts = world.counts()
    assert counts["clients"] == SIZES["medium"].clients == 500
    assert 4_500 <= counts["contacts"] <= 5_500
    assert 49_000 <= counts["issues"] <= 51_000
    assert counts["meetings"] == 20_000


def test_references_are_consistent_and_keys_unique() -> None:
    world = generate_world("small", 3, ANCHOR)
    users = {u.key for u in world.users}
    clients = {c.key for c in world.clients}
    contacts = {c.key: c for c in world.contacts}
    engagements = {e.key: e for e in world.engagements}
    assert len(users) == len(world.users) and len(clients) == len(world.clients)
    assert len({i.key for i in world.issues}) == len(world.issues)
    assert len({e.jira_project_key for e in world.engagements}) == len(world.engagements)
    assert len({c.email.lower() for c in world.contacts}) == len(world.contacts)
    for contact in world.contacts:
        assert contact.client_key in clients
    for role in world.roles:
        assert role.engagement_key in engagements and role.contact_key in contacts
        assert contacts[role.contact_key].client_key == engagements[role.engagement_key].client_key
    projects = {e.jira_project_key for e in world.engagements}
    for issue in world.issues:
        assert issue.project_key in projects
        assert issue.assignee_key is None or issue.assignee_key in users
        assert (issue.resolution_date is not None) == (issue.status == "Done")
        assert issue.created <= issue.updated < ANCHOR
    for meeting in world.meetings:
        assert meeting.calendar_owner_key in users
        assert meeting.start < meeting.end


def test_realistic_mix_of_states() -> None:
    world = generate_world("medium", 2, ANCHOR)
    statuses = Counter(i.status for i in world.issues)
    assert set(statuses) == set(STATUS_CATEGORY)
    assert statuses["Blocked"] > 0
    overdue = [i for i in world.issues if i.status != "Done" and i.due_date and i.due_date < ANCHOR.date()]
    assert overdue
    assert any(i.assignee_key is None for i in world.issues)
    meetings = world.meetings
    assert any(m.recurrence for m in meetings)
    assert any(m.cancelled_occurrences for m in meetings)
    assert any(m.moved_occurrences for m in meetings)
    assert any(m.status == "cancelled" for m in meetings)
    assert any(m.engagement_key is None for m in meetings)  # internal-only
    assert any(a.response == "declined" for m in meetings for a in m.attendees)
    assert any(m.start > ANCHOR for m in meetings) and any(m.end < ANCHOR for m in meetings)
    stages = Counter(e.stage for e in world.engagements)
    assert {"Closed Won", "Closed Lost"} <= set(stages)


def test_identity_edge_cases_are_present() -> None:
    world = generate_world("medium", 1, ANCHOR)
    crm_emails = {c.email.lower() for c in world.contacts}
    attendees = [a.email for m in world.meetings for a in m.attendees if not a.organizer]
    assert any("+" in email for email in attendees)  # plus-addressing
    assert any(email != email.lower() for email in attendees)  # upper case invitations
    assert any(c.email != c.email.lower() for c in world.contacts)  # mixed case in the CRM
    client_domains = {d for c in world.clients for d in c.domains}
    unknown = [
        e
        for e in attendees
        if e.lower() not in crm_emails and "+" not in e and e.split("@")[1].lower() in client_domains
    ]
    assert unknown  # client-side attendees who are not in the CRM


def test_hostile_values_are_present() -> None:
    world = generate_world("small", 1, ANCHOR)
    names = " ".join(c.name for c in world.clients)
    for marker in ("'", '"', "<script>", "{{", "\\", " OR ", "北京"):
        assert marker in names
    assert max(len(c.name) for c in world.clients) > 200
    assert all(len(c.name) <= 255 for c in world.clients)
