"""The emulators' fast paths answer exactly what the plain ones do.

Jira search pages are assembled from cached JSON fragments (``Renderer.issue_json``); Calendar
events reuse a series' fields within a page and a cached key layout. Each is compared with the
plain rendering (``Renderer.issue`` + ``json.dumps``, and a reference copy of the event renderer
as it was before), including after writes and mutations that change what the caches hold.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator
from datetime import tzinfo
from typing import Any

import pytest
import requests

from sandbox.app import Sandbox, SandboxOptions
from sandbox.google_calendar.model import (
    _LEADING,
    _MIDDLE,
    _TRAILING,
    _TYPED,
    CalendarRecord,
    EventRecord,
    EventTime,
    fields_of,
    html_link,
    instance_suffix,
    person,
)
from sandbox.google_calendar.store import EventQuery
from sandbox.google_calendar.times import format_stamp
from sandbox.jira.model import IssueVersion
from sandbox.jira.render import Renderer, select_fields
from sandbox.world import Meeting

CONNECTOR_FIELDS = (
    "project,summary,issuetype,status,assignee,duedate,labels,parent,created,updated,resolutiondate,priority"
)
SELECTIONS = [
    [CONNECTOR_FIELDS],
    ["*all"],
    ["id"],
    ["key,parent"],
    ["*navigable", "-summary"],
    ["comment,reporter,creator,resolution,description,customfield_10016"],
]


def dumps(value: Any) -> bytes:
    """What ``sandbox.http.Response.json`` writes."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxOptions(size="small", seed=3)) as sb:
        yield sb


def jira(sb: Sandbox, method: str, path: str, body: Any = None, **params: Any) -> requests.Response:
    info = sb.info()["jira"]
    session = requests.Session()
    session.trust_env = False
    response = session.request(
        method,
        f"{info['server']}/rest/api/3/{path}",
        json=body,
        params=params,
        auth=(info["email"], info["api_token"]),
        timeout=30,
    )
    assert response.status_code < 300, response.text[:300]
    return response


def assert_issues_render_the_plain_way(sb: Sandbox) -> int:
    store = sb.jira_store
    checked = 0
    with store.lock:
        versions: list[IssueVersion] = [v for v in store.issues.values() if not v.deleted]
        for version_name in ("2", "3"):
            renderer = Renderer(store, sb.servers["jira"].base_url, version_name)
            for raw in SELECTIONS:
                selection = select_fields(raw, default="id")
                for v in versions:
                    for in_search in (True, False):
                        plain = dumps(renderer.issue(v, selection, in_search=in_search))
                        assert renderer.issue_json(v, selection, in_search=in_search) == plain, (v.key, raw)
                        checked += 1
                first = versions[0]
                expanded = renderer.issue_json(first, selection, ["changelog"], ["*all"], in_search=True)
                assert expanded == dumps(renderer.issue(first, selection, ["changelog"], ["*all"], in_search=True))
    return checked


def test_jira_issue_json_is_the_plain_rendering_before_and_after_writes(sandbox: Sandbox) -> None:
    assert assert_issues_render_the_plain_way(sandbox) > 1000
    store = sandbox.jira_store
    with store.lock:
        epic = next(v for v in store.issues.values() if v.issue_type == "Epic" and not v.deleted)
        child = next(v for v in store.issues.values() if v.parent_id == epic.id and not v.deleted)
        assignee = next(a for a in store.users if a != child.assignee and store.users[a].active)
    # writes that change what cached fragments were made from: the epic (every child's `parent`),
    # a user (assignee), labels, comments and properties of an issue
    renamed = {"summary": 'Renamed "epic" ✓', "priority": {"name": "Low"}}
    jira(sandbox, "PUT", f"issue/{epic.key}", {"fields": renamed})
    jira(sandbox, "PUT", f"issue/{child.key}", {"fields": {"labels": ["x", "ü"], "assignee": {"accountId": assignee}}})
    paragraph = {"type": "paragraph", "content": [{"type": "text", "text": "a comment ✓"}]}
    jira(sandbox, "POST", f"issue/{child.key}/comment", {"body": {"type": "doc", "version": 1, "content": [paragraph]}})
    jira(sandbox, "PUT", f"issue/{child.key}/properties/accord.status", {"n": 1})
    transitions = jira(sandbox, "GET", f"issue/{epic.key}/transitions").json()["transitions"]
    jira(sandbox, "POST", f"issue/{epic.key}/transitions", {"transition": {"id": transitions[0]["id"]}})
    sandbox.mutate(count=30, seed=4, late_share=0.0)
    with store.lock:
        store.users[assignee].display_name = "Changed Name"  # in place: the cache keys on values
    assert assert_issues_render_the_plain_way(sandbox) > 1000
    page = jira(sandbox, "GET", "search/jql", jql=f"parent = {epic.key}", fields=CONNECTOR_FIELDS, maxResults=100)
    issues = page.json()["issues"]
    assert issues and all(i["fields"]["parent"]["fields"]["summary"] == 'Renamed "epic" ✓' for i in issues)


def test_jira_search_pages_are_plain_json(sandbox: Sandbox) -> None:
    """Every page is byte for byte json.dumps of what it parses to (key order, escapes, separators)."""
    keys = sorted({p.key for p in sandbox.jira_store.projects.values()})
    jql = "project in (" + ", ".join(json.dumps(k) for k in keys) + ") ORDER BY key ASC"
    token: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"jql": jql, "fields": CONNECTOR_FIELDS, "maxResults": 37}
        if token:
            params["nextPageToken"] = token
        response = jira(sandbox, "GET", "search/jql", **params)
        assert response.headers["Content-Type"] == "application/json;charset=UTF-8"
        assert response.content == dumps(response.json())
        pages += 1
        token = response.json().get("nextPageToken")
        if not token:
            break
    assert pages > 5
    ids_only = jira(sandbox, "GET", "search/jql", jql=jql, fields="id", maxResults=5000)
    assert ids_only.content == dumps(ids_only.json()) and len(ids_only.json()["issues"]) > 100


# -- Calendar -------------------------------------------------------------------------------------------
def reference_fields_from_meeting(meeting: Meeting, calendar_id: str, owner_name: str | None) -> dict[str, Any]:
    """model.fields_from_meeting as it was before it was made faster."""
    organizer_attendee = next((a for a in meeting.attendees if a.organizer), None)
    if organizer_attendee is not None:
        organizer = person(organizer_attendee.email, organizer_attendee.display_name, calendar_id)
    else:
        organizer = person(calendar_id, owner_name, calendar_id)
    attendees: list[dict[str, Any]] = []
    for a in meeting.attendees:
        entry: dict[str, Any] = {"email": a.email}
        if a.display_name:
            entry["displayName"] = a.display_name
        if a.organizer:
            entry["organizer"] = True
        if a.email.lower() == calendar_id.lower():
            entry["self"] = True
        entry["responseStatus"] = a.response
        attendees.append(entry)
    out: dict[str, Any] = {"summary": meeting.summary}
    if meeting.description:
        out["description"] = meeting.description
    out["creator"] = dict(organizer)
    out["organizer"] = organizer
    if attendees:
        out["attendees"] = attendees
    out["reminders"] = {"useDefault": True}
    out["eventType"] = "default"
    return out


def reference_render(
    record: EventRecord,
    calendar: CalendarRecord,
    shown_in: tzinfo,
    max_attendees: int | None = None,
    occurrence: tuple[EventTime, EventTime, EventTime] | None = None,
    minimal: bool = False,
) -> dict[str, Any]:
    """model.render as it was before it was made faster."""
    if occurrence is not None:
        start, end, original = occurrence
        event_id = f"{record.id}_{instance_suffix(original)}"
        recurring_id: str | None = record.id
    else:
        start, end, original = record.start, record.end, record.original_start  # type: ignore[assignment]  # (a series: times set)
        event_id = record.id
        recurring_id = record.recurring_event_id
    out: dict[str, Any] = {"kind": "calendar#event", "etag": record.etag(), "id": event_id}
    out["status"] = "cancelled" if minimal else record.status
    if minimal:
        if recurring_id is not None:
            out["recurringEventId"] = recurring_id
            if original is not None:
                out["originalStartTime"] = original.render(shown_in)
        return out
    if record.fields is not None:
        fields = record.fields
    elif record.meeting is not None:
        fields = reference_fields_from_meeting(record.meeting, record.calendar_id, calendar.owner_name)
    else:
        fields = {"eventType": "default"}
    eid = base64.urlsafe_b64encode(f"{event_id} {calendar.id}".encode()).decode().rstrip("=")
    out["htmlLink"] = f"https://www.google.com/calendar/event?eid={eid}"
    out["created"] = format_stamp(record.created)  # compared with the old formula in test_wallclock
    out["updated"] = format_stamp(record.updated)
    for key in _LEADING:
        if key in fields:
            out[key] = fields[key]
    out["start"] = start.render(shown_in)
    out["end"] = end.render(shown_in)
    if occurrence is None and record.recurrence:
        out["recurrence"] = list(record.recurrence)
    if recurring_id is not None:
        out["recurringEventId"] = recurring_id
        if original is not None:
            out["originalStartTime"] = original.render(shown_in)
    for key in _MIDDLE:
        if key in fields:
            out[key] = fields[key]
    out["iCalUID"] = record.ical_uid
    out["sequence"] = record.sequence
    attendees = fields.get("attendees")
    if attendees:
        if max_attendees is not None and len(attendees) > max_attendees:
            out["attendees"] = [a for a in attendees if a.get("self")]
            out["attendeesOmitted"] = True
        else:
            out["attendees"] = attendees
    for key, value in fields.items():
        if key not in out and key not in _TRAILING and key not in _TYPED and key != "attendees":
            out[key] = value
    for key in _TRAILING:
        if key in fields:
            out[key] = fields[key]
    return out


def calendar_call(sb: Sandbox, method: str, path: str, body: Any = None) -> dict[str, Any]:
    info = sb.info()["google_calendar"]
    session = requests.Session()
    session.trust_env = False
    response = session.request(
        method, info["api_endpoint"] + path, json=body, headers={"Authorization": f"Bearer {info['token']}"}, timeout=30
    )
    assert response.status_code < 300, response.text[:300]
    return dict(response.json()) if response.content else {}


def test_calendar_events_render_as_before(sandbox: Sandbox) -> None:
    store = sandbox.calendar_store
    calendars = sorted(store.calendars.values(), key=lambda c: -len(c.events))
    busy = calendars[0]
    rng = random.Random(7)
    # events written through the API carry fields the world's do not, in the client's order
    for n in range(3):
        calendar_call(
            sandbox,
            "POST",
            f"calendars/{busy.id}/events",
            {
                "extendedProperties": {"private": {"accordKey": f"k{n}"}},
                "summary": f"written {n}",
                "transparency": "transparent",
                "location": "Room ✓",
                "colorId": "5",
                "visibility": "private",
                "start": {"dateTime": "2026-01-05T10:00:00+01:00", "timeZone": "Europe/Berlin"},
                "end": {"dateTime": "2026-01-05T11:00:00+01:00", "timeZone": "Europe/Berlin"},
                "attendees": [{"email": f"a{n}@example.com"}, {"email": busy.id}, {"email": "c@example.com"}],
                "guestsCanModify": True,
            },
        )
    one_off = next(r for r in busy.events.values() if r.meeting is not None and not r.is_master)
    calendar_call(sandbox, "PATCH", f"calendars/{busy.id}/events/{one_off.id}", {"location": "moved", "colorId": "2"})
    sandbox.mutate(count=20, seed=rng.randrange(1000), late_share=0.0)
    compared = 0
    with store._lock:
        now = sandbox.clock.now()
        for calendar in calendars:
            for max_attendees in (None, 1):
                for single in (True, False):
                    query = EventQuery(
                        calendar_id=calendar.id, single_events=single, show_deleted=True, max_attendees=max_attendees
                    )
                    items = store._matching_items(calendar, query, now)
                    shared: dict[str, Any] = {}
                    for item in items:
                        got = store._render_item(calendar, item, calendar.zone, max_attendees, shared)
                        record = item.record
                        if item.occurrence is not None:
                            times = store._occurrence_times(calendar, record, item.occurrence)
                            want = reference_render(
                                record, calendar, calendar.zone, max_attendees, times, minimal=item.cancelled
                            )
                        else:
                            minimal = record.status == "cancelled" and (record.deleted_by_api or record.is_exception)
                            want = reference_render(record, calendar, calendar.zone, max_attendees, minimal=minimal)
                        assert dumps(got) == dumps(want), record.id
                        compared += 1
    assert compared > 500
    for record in busy.events.values():
        assert html_link(record.id, busy.id).endswith(
            base64.urlsafe_b64encode(f"{record.id} {busy.id}".encode()).decode().rstrip("=")
        )
        assert fields_of(record, busy.owner_name) is not None


# -- JSON bodies --------------------------------------------------------------------------------------------
class Text(str):
    pass


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["str", "int", "bool", "none", "float", "tuple", "dict", "list", "odd"]
    kind = rng.choice(kinds[:4] if depth > 4 else kinds)
    if kind == "str":
        alphabet = 'aZ09 :.,-+eE"\\/\n\t\x00\x1f\x7f é✓\u2028\U0001f600'
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
    if kind == "int":
        return rng.choice([0, -1, 7, 2**63 - 1, -(2**63), 2**64, -(2**70), True, rng.randrange(-(10**12), 10**12)])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "none":
        return None
    if kind == "float":
        return rng.choice([0.5, -0.0, 1e16, 1e-7, 123456.789, 1e300, float("nan"), float("inf"), 2.0])
    if kind == "tuple":
        return tuple(random_value(rng, depth + 1) for _ in range(rng.randrange(3)))
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    if kind == "dict":
        return {
            random_value(rng, 5) if rng.random() < 0.05 else f"k{n}": random_value(rng, depth + 1) for n in range(4)
        }
    return rng.choice([Text("sub"), {Text("k"): 1}, datetime_value(), {1: "x"}, {None: 2}])


def datetime_value() -> Any:
    from datetime import UTC, datetime

    return datetime(2026, 1, 2, tzinfo=UTC)


def plain_json(data: Any) -> bytes | str:
    try:
        return dumps(data)
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        return type(exc).__name__


def test_json_bodies_are_exactly_json_dumps() -> None:
    from sandbox.http import Response

    rng = random.Random(11)
    fast = 0
    for _ in range(20_000):
        data: Any = {"v": random_value(rng)} if rng.random() < 0.5 else [random_value(rng) for _ in range(3)]
        if rng.random() < 0.3:  # mostly the shapes events have: strings, ints, bools in dicts and lists
            data = {"items": [{"s": random_value(rng, 5) if rng.random() < 0.9 else 1, "b": True} for _ in range(3)]}
        want = plain_json(data)
        try:
            got: bytes | str = Response.json(data).body
        except (TypeError, ValueError, UnicodeEncodeError) as exc:
            got = type(exc).__name__
        assert got == want, data
        fast += isinstance(want, bytes) and b"null" not in want
    assert fast > 2_000
    lone = {"s": "\ud800"}
    with pytest.raises(UnicodeEncodeError):
        Response.json(lone)
