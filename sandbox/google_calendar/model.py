"""Calendars and events as the emulator keeps them, and how they render as Google's JSON.

An event keeps its times as instants (timed) or dates (all-day) plus its own ``timeZone``; they are
rendered in the zone of the response (the ``timeZone`` parameter or the calendar's zone). Events
loaded from the world keep a reference to their ``Meeting`` and build their descriptive fields
(summary, attendees, ...) only when first rendered or written, so loading a large world costs one
small object per meeting.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

from sandbox.google_calendar.recurrence import Recurrence
from sandbox.google_calendar.times import format_local, format_stamp, local_midnight, zone
from sandbox.world import Meeting

JSON = dict[str, Any]

# Fields the server owns: ignored when a client sends them in a write.
READ_ONLY = frozenset(
    {
        "kind",
        "etag",
        "id",
        "htmlLink",
        "created",
        "updated",
        "creator",
        "sequence",
        "recurringEventId",
        "originalStartTime",
        "hangoutLink",
        "privateCopy",
        "locked",
    }
)
# Rendered in this order, as Google does; any other field follows before reminders/eventType.
_LEADING = ("summary", "description", "location", "colorId", "creator", "organizer")
_MIDDLE = ("transparency", "visibility")
_TRAILING = ("reminders", "eventType")
# Placed by render() in their own spots; the rest of the descriptive fields follow the middle ones.
_PLACED = frozenset({*_LEADING, *_MIDDLE, *_TRAILING, "attendees"})
_TYPED = frozenset(
    {"start", "end", "recurrence", "recurringEventId", "originalStartTime", "iCalUID", "sequence", "status"}
)


@dataclass(frozen=True, slots=True)
class EventTime:
    """A start or end: an instant (timed) or a date (all-day, end exclusive), and its timeZone."""

    instant: datetime | None = None  # aware UTC
    day: date | None = None
    zone_name: str | None = None

    @property
    def all_day(self) -> bool:
        return self.day is not None

    def begins(self, calendar_zone: tzinfo) -> datetime:
        """The instant this time denotes; all-day dates are read in the calendar's zone."""
        if self.instant is not None:
            return self.instant
        assert self.day is not None
        return local_midnight(self.day, calendar_zone).astimezone(UTC)

    def shifted(self, delta: timedelta) -> EventTime:
        if self.instant is not None:
            return EventTime(self.instant + delta, None, self.zone_name)
        assert self.day is not None
        return EventTime(None, self.day + timedelta(days=delta.days), self.zone_name)

    def render(self, shown_in: tzinfo) -> JSON:
        if self.day is not None:
            out: JSON = {"date": self.day.isoformat()}
        else:
            assert self.instant is not None
            out = {"dateTime": format_local(self.instant, shown_in)}
        if self.zone_name is not None:
            out["timeZone"] = self.zone_name
        return out


@dataclass(eq=False, slots=True)
class EventRecord:
    """One stored event: a one-off event, a series master, or an exception of a series."""

    id: str
    calendar_id: str
    status: str
    start: EventTime
    end: EventTime
    created: datetime
    updated: datetime
    ical_uid: str
    begin: datetime  # instant of start, for filtering (all-day read in the calendar's zone)
    finish: datetime  # instant of end
    sequence: int = 0
    version: int = 0  # store-wide write counter at the last write: part of the etag
    seq: int = 0  # calendar change sequence of the last visible change (sync tokens compare it)
    recurrence: list[str] | None = None
    recurring_event_id: str | None = None
    original_start: EventTime | None = None
    deleted_by_api: bool = False  # deleted through the API: lists show only id and status
    origin: str = "world"  # "world" | "mutation" | "api"
    meeting: Meeting | None = None  # source of the descriptive fields until the first write
    fields: JSON | None = None  # descriptive fields once materialized
    rules: Recurrence | None = None  # parsed recurrence of a master, built on first use

    @property
    def is_master(self) -> bool:
        return bool(self.recurrence) and self.recurring_event_id is None

    @property
    def is_exception(self) -> bool:
        return self.recurring_event_id is not None

    @property
    def duration(self) -> timedelta:
        if self.start.instant is not None and self.end.instant is not None:
            return self.end.instant - self.start.instant
        assert self.start.day is not None and self.end.day is not None
        return timedelta(days=(self.end.day - self.start.day).days)

    def retime(self, calendar_zone: tzinfo) -> None:
        self.begin = self.start.begins(calendar_zone)
        self.finish = self.end.begins(calendar_zone)
        self.rules = None

    def etag(self) -> str:
        updated_ms = int(self.updated.timestamp() * 1000)
        return f'"{updated_ms * 1000 + self.version % 1000}"'


@dataclass(eq=False)
class CalendarRecord:
    id: str
    summary: str
    time_zone: str
    access_role: str  # the principal's access: "owner" for its own calendar, "writer" for shared ones
    primary: bool
    updated: datetime
    owner_name: str | None = None
    color_id: str = "14"
    events: dict[str, EventRecord] = field(default_factory=dict)
    exceptions: dict[str, list[str]] = field(default_factory=dict)  # series id -> exception ids
    seq: int = 0  # change sequence: bumped by every visible change
    epoch: int = 0  # bumped by invalidate_sync_tokens(): older tokens answer 410

    @property
    def zone(self) -> tzinfo:
        return zone(self.time_zone)


def html_link(event_id: str, calendar_id: str) -> str:
    # base64.urlsafe_b64encode without its two layers of wrappers (one call per rendered event)
    eid = binascii.b2a_base64(f"{event_id} {calendar_id}".encode(), newline=False).translate(_URLSAFE)
    return "https://www.google.com/calendar/event?eid=" + eid.decode().rstrip("=")


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def person(email: str, display_name: str | None, calendar_id: str) -> JSON:
    out: JSON = {"email": email}
    if display_name:
        out["displayName"] = display_name
    if email.lower() == calendar_id.lower():
        out["self"] = True
    return out


def fields_from_meeting(meeting: Meeting, calendar_id: str, owner_name: str | None) -> JSON:
    """The descriptive fields of a world meeting, as its owner's calendar shows them."""
    own = calendar_id.lower()
    organizer: JSON | None = None
    attendees: list[JSON] = []
    for a in meeting.attendees:
        entry: JSON = {"email": a.email}
        if a.display_name:
            entry["displayName"] = a.display_name
        if a.organizer:
            entry["organizer"] = True
        is_self = a.email.lower() == own
        if is_self:
            entry["self"] = True
        entry["responseStatus"] = a.response
        attendees.append(entry)
        if organizer is None and a.organizer:  # the first organizer, as person() renders it
            organizer = {"email": a.email}
            if a.display_name:
                organizer["displayName"] = a.display_name
            if is_self:
                organizer["self"] = True
    if organizer is None:
        organizer = person(calendar_id, owner_name, calendar_id)
    out: JSON = {"summary": meeting.summary}
    if meeting.description:
        out["description"] = meeting.description
    out["creator"] = dict(organizer)
    out["organizer"] = organizer
    if attendees:
        out["attendees"] = attendees
    out["reminders"] = {"useDefault": True}
    out["eventType"] = "default"
    return out


def fields_of(record: EventRecord, owner_name: str | None) -> JSON:
    """The record's descriptive fields for reading: built from the meeting each time, never cached,
    so reading a whole world does not materialize it."""
    if record.fields is not None:
        return record.fields
    if record.meeting is not None:
        return fields_from_meeting(record.meeting, record.calendar_id, owner_name)
    return {"eventType": "default"}


def descriptive(record: EventRecord, owner_name: str | None) -> JSON:
    """The record's descriptive fields for writing: materialized (and kept) on first use."""
    if record.fields is None:
        record.fields = fields_of(record, owner_name)
    return record.fields


def render(
    record: EventRecord,
    calendar: CalendarRecord,
    shown_in: tzinfo,
    *,
    max_attendees: int | None = None,
    occurrence: tuple[EventTime, EventTime, EventTime] | None = None,
    minimal: bool = False,
    fields: JSON | None = None,
) -> JSON:
    """Google's Event JSON for ``record`` (or for one generated occurrence of a master).

    ``occurrence`` is ``(start, end, originalStartTime)`` of a generated instance. ``minimal`` gives
    a deletion tombstone: id and status, plus recurringEventId/originalStartTime for instances.
    ``fields``: the record's ``fields_of``, when the caller already has them.
    """
    original: EventTime | None
    if occurrence is not None:
        start, end, original = occurrence
        event_id = f"{record.id}_{instance_suffix(original)}"
        recurring_id: str | None = record.id
    else:
        start, end, original = record.start, record.end, record.original_start
        event_id = record.id
        recurring_id = record.recurring_event_id
    out: JSON = {"kind": "calendar#event", "etag": record.etag(), "id": event_id}
    status = "cancelled" if minimal else record.status
    out["status"] = status
    if minimal:
        if recurring_id is not None:
            out["recurringEventId"] = recurring_id
            if original is not None:
                out["originalStartTime"] = original.render(shown_in)
        return out
    if fields is None:
        fields = fields_of(record, calendar.owner_name)
    out["htmlLink"] = html_link(event_id, calendar.id)
    out["created"] = format_stamp(record.created)
    out["updated"] = format_stamp(record.updated)
    leading, middle, rest, trailing = _layout(fields)
    for key in leading:
        out[key] = fields[key]
    out["start"] = start.render(shown_in)
    out["end"] = end.render(shown_in)
    if occurrence is None and record.recurrence:
        out["recurrence"] = list(record.recurrence)
    if recurring_id is not None:
        out["recurringEventId"] = recurring_id
        if original is not None:
            out["originalStartTime"] = original.render(shown_in)
    for key in middle:
        out[key] = fields[key]
    out["iCalUID"] = record.ical_uid
    out["sequence"] = record.sequence
    attendees = fields.get("attendees")
    if attendees:
        if max_attendees is not None and len(attendees) > max_attendees:
            mine = [a for a in attendees if a.get("self")]
            out["attendees"] = mine
            out["attendeesOmitted"] = True
        else:
            out["attendees"] = attendees
    for key in rest:
        if key not in out:
            out[key] = fields[key]
    for key in trailing:
        out[key] = fields[key]
    return out


_Layout = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]
_LAYOUTS: dict[tuple[str, ...], _Layout] = {}


def _layout(fields: JSON) -> _Layout:
    """Which descriptive fields go where in ``render``'s order, for fields with these keys:
    leading, middle, the rest (unless the event's own part has them), trailing. Kept per key tuple:
    events share a few shapes."""
    keys = tuple(fields)
    layout = _LAYOUTS.get(keys)
    if layout is None:
        layout = (
            tuple(k for k in _LEADING if k in fields),
            tuple(k for k in _MIDDLE if k in fields),
            tuple(k for k in keys if k not in _PLACED and k not in _TYPED),
            tuple(k for k in _TRAILING if k in fields),
        )
        if len(_LAYOUTS) >= 10_000:
            _LAYOUTS.clear()
        _LAYOUTS[keys] = layout
    return layout


def instance_suffix(original: EventTime) -> str:
    """The id suffix of the instance that originally started at ``original``."""
    if original.day is not None:
        return original.day.strftime("%Y%m%d")
    assert original.instant is not None
    return original.instant.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
