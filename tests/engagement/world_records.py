"""Source records straight from a generated World (ids = world keys), for pure unify tests.

This stands in for the connectors so unify can be tested in milliseconds, and it keeps the
world's truth (which engagement a meeting belongs to) next to the records.
"""

from __future__ import annotations

from datetime import datetime

from dateutil.rrule import rrulestr

from engagement.records import SourceRecord, iso
from sandbox.world import STATUS_CATEGORY, World


def _instances(start: datetime, recurrence: list[str]) -> list[datetime]:
    rule = rrulestr("\n".join(recurrence), dtstart=start, forceset=True)
    return list(rule)


def world_records(world: World) -> list[SourceRecord]:
    users = {u.key: u for u in world.users}
    engagements_by_project = {e.jira_project_key: e for e in world.engagements}
    out: list[SourceRecord] = []
    for u in world.users:
        out.append(
            SourceRecord(
                "salesforce",
                "users",
                u.key,
                u.created,
                {
                    "email": u.email,
                    "first_name": u.first_name,
                    "last_name": u.last_name,
                    "manager": u.manager_key,
                },
            )
        )
    for c in world.clients:
        out.append(
            SourceRecord(
                "salesforce",
                "accounts",
                c.key,
                c.modified,
                {"name": c.name, "domains": ";".join(c.domains), "owner": c.owner_key},
            )
        )
    for p in world.contacts:
        out.append(
            SourceRecord(
                "salesforce",
                "contacts",
                p.key,
                p.modified,
                {
                    "account": p.client_key,
                    "first_name": p.first_name,
                    "last_name": p.last_name,
                    "email": p.email,
                    "title": p.title,
                },
            )
        )
    for e in world.engagements:
        out.append(
            SourceRecord(
                "salesforce",
                "opportunities",
                e.key,
                e.modified,
                {
                    "name": e.name,
                    "account": e.client_key,
                    "stage": e.stage,
                    "owner": e.owner_key,
                    "close_date": e.close_date.isoformat(),
                    "amount": e.amount,
                    "jira_project": e.jira_project_key,
                },
            )
        )
    for r in world.roles:
        out.append(
            SourceRecord(
                "salesforce",
                "contact_roles",
                r.key,
                r.modified,
                {
                    "opportunity": r.engagement_key,
                    "contact": r.contact_key,
                    "role": r.role,
                    "primary": r.is_primary,
                },
            )
        )
    for i in world.issues:
        assignee = users.get(i.assignee_key or "")
        out.append(
            SourceRecord(
                "jira",
                "issues",
                i.key,
                i.updated,
                {
                    "key": i.key,
                    "project": i.project_key,
                    "summary": i.summary,
                    "issue_type": i.issue_type,
                    "status": i.status,
                    "status_category": STATUS_CATEGORY[i.status],
                    "assignee_email": assignee.email if assignee else None,
                    "assignee_name": f"{assignee.first_name} {assignee.last_name}" if assignee else None,
                    "due_date": i.due_date.isoformat() if i.due_date else None,
                    "labels": list(i.labels),
                    "parent": i.epic_key,
                    "created": iso(i.created),
                    "resolved": iso(i.resolution_date),
                },
                partition=i.project_key,
            )
        )
        assert i.project_key in engagements_by_project
    for m in world.meetings:
        calendar = users[m.calendar_owner_key].email
        attendees = [{"email": a.email, "response": a.response, "organizer": a.organizer} for a in m.attendees]
        duration = m.end - m.start
        if m.recurrence:
            starts = [s for s in _instances(m.start, m.recurrence) if s not in m.cancelled_occurrences]
            occurrences = [(f"{m.key}_{s:%Y%m%dT%H%M%SZ}", m.moved_occurrences.get(s, s)) for s in starts]
        else:
            occurrences = [(m.key, m.start)]
        for event_id, start in occurrences:
            out.append(
                SourceRecord(
                    "google_calendar",
                    "events",
                    event_id,
                    m.updated,
                    {
                        "summary": m.summary,
                        "start": iso(start),
                        "end": iso(start + duration),
                        "status": m.status,
                        "attendees": attendees,
                        "organizer": users[m.calendar_owner_key].email,
                        "recurring_event_id": m.key if m.recurrence else None,
                    },
                    partition=calendar,
                )
            )
    return out


def meeting_truth(world: World) -> dict[str, str | None]:
    """Event id (instance ids too) -> the engagement key the generator meant it for."""
    truth: dict[str, str | None] = {}
    for m in world.meetings:
        truth[m.key] = m.engagement_key
    return truth
