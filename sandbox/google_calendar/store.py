"""The Calendar emulator's data: calendars, events, change sequences, sync and page tokens.

Guarantees the connectors rely on:

- ``events.list`` filters on overlap (``timeMin`` exclusive bound on an event's end, ``timeMax`` on
  its start), expands series lazily within the query window and never beyond
  ``settings.expansion_horizon`` from now, and computes a query's result once: later pages are
  served from that result behind the page token, so paging is O(n) overall.
- Every visible change bumps its calendar's change sequence. A sync token carries the sequence it
  was issued at; an incremental list returns exactly the events changed since then, each once in
  its latest state, deletions always included (tombstones). Tokens older than
  ``settings.sync_token_max_age`` (by the sandbox clock) or issued before
  ``invalidate_sync_tokens()`` answer 410 ``fullSyncRequired``.
- Late changes of a mutation round stay invisible (to lists, gets and sync tokens) until
  ``release_pending()``; they then get a new change sequence but keep their old ``updated`` stamp.

All public methods hold one re-entrant lock; rendered JSON never shares mutable state with the
store (fields are replaced on write, never edited in place).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import random
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Any, NamedTuple

from sandbox.clock import Clock
from sandbox.google_calendar import errors
from sandbox.google_calendar.model import (
    JSON,
    READ_ONLY,
    CalendarRecord,
    EventRecord,
    EventTime,
    descriptive,
    fields_of,
    instance_suffix,
    person,
    render,
)
from sandbox.google_calendar.recurrence import Recurrence, RecurrenceError, split_instance_id
from sandbox.google_calendar.times import format_stamp, parse_date, parse_datetime, zone
from sandbox.mutations import Change, ChangeKind
from sandbox.world import Meeting, World

API = "google_calendar"
PRINCIPAL = "accord-sync@accord-sandbox.iam.gserviceaccount.com"
_ID_CHARS = frozenset("abcdefghijklmnopqrstuv0123456789")
_TYPED_INPUT = frozenset({"id", "start", "end", "recurrence", "status", "iCalUID"})
_STATUSES = ("confirmed", "tentative", "cancelled")
_SYNC_FORBIDDEN = (
    "iCalUID",
    "orderBy",
    "privateExtendedProperty",
    "q",
    "sharedExtendedProperty",
    "timeMin",
    "timeMax",
    "updatedMin",
)
_ACCESS_RANK = {"freeBusyReader": 0, "reader": 1, "writer": 2, "owner": 3}
_TOPICS = ("Status review", "Steering committee", "Sprint demo", "Risk review", "Planning", "Check-in")


@dataclass
class CalendarSettings:
    """Numbers an operator may want to change; defaults follow Google's observed behaviour."""

    sync_token_max_age: timedelta = timedelta(days=7)
    updated_min_max_age: timedelta = timedelta(days=28)  # older updatedMin answers 410 [COMM]
    expansion_horizon: timedelta = timedelta(days=730)  # series are never expanded further ahead
    page_token_ttl: timedelta = timedelta(hours=1)
    max_cursors: int = 512  # live result sets kept for page tokens (least recently used go first)


@dataclass(frozen=True)
class EventQuery:
    """The parameters of events.list (and events.instances), already parsed by the app."""

    calendar_id: str
    single_events: bool = False
    show_deleted: bool = False
    order_by: str | None = None
    time_min: datetime | None = None
    time_max: datetime | None = None
    updated_min: datetime | None = None
    q: str | None = None
    ical_uid: str | None = None
    private_properties: tuple[tuple[str, str], ...] = ()
    shared_properties: tuple[tuple[str, str], ...] = ()
    event_types: tuple[str, ...] = ()
    sync_token: str | None = None
    page_token: str | None = None
    max_results: int = 250
    time_zone: str | None = None
    max_attendees: int | None = None
    series_id: str | None = None  # events.instances
    original_start: datetime | None = None  # events.instances
    given: frozenset[str] = frozenset()  # names of the query parameters actually sent


class _Item(NamedTuple):
    record: EventRecord
    occurrence: datetime | None  # a generated instance of the master ``record`` (series-native time)
    cancelled: bool  # generated instance shown as a cancelled tombstone


@dataclass
class _SyncToken:
    calendar_id: str
    seq: int
    epoch: int
    issued: datetime
    single_events: bool
    event_types: tuple[str, ...]
    time_min: datetime | None
    time_max: datetime | None


@dataclass
class _Cursor:
    calendar_id: str
    items: list[_Item]
    shown_in: str  # zone name the items render in
    max_attendees: int | None
    expires: datetime
    sync: _SyncToken | None  # the token the last page hands out (None for events.instances)
    key: str | None = None  # set once a later page is handed out


@dataclass
class _Pending:
    change: Change
    apply: Callable[[datetime], bool]


@dataclass
class _WorldIndex:
    """What mutations need from the world: people and engagements by key."""

    users_by_key: dict[str, Any] = field(default_factory=dict)
    engagements: list[Any] = field(default_factory=list)
    contacts_by_client: dict[str, list[Any]] = field(default_factory=dict)
    client_by_engagement: dict[str, str] = field(default_factory=dict)


def world_event_id(meeting_key: str) -> str:
    """A meeting's event id: base32hex of a hash of its key, so every load gives the same id."""
    digest = hashlib.sha1(f"accord-sandbox:{meeting_key}".encode(), usedforsecurity=False).digest()
    return base64.b32hexencode(digest).decode().lower()[:26]


def _random_id(bits: int) -> str:
    return base64.b32hexencode(bits.to_bytes(20, "big")).decode().lower()[:26]


def valid_event_id(event_id: str) -> bool:
    """Google's rule for client-chosen ids: base32hex characters (a-v, 0-9), 5 to 1024 of them."""
    return 5 <= len(event_id) <= 1024 and set(event_id) <= _ID_CHARS


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unb64(token: str) -> str:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


class CalendarStore:
    """All calendars of the sandbox org, seen by one principal (see README: the principal)."""

    def __init__(
        self,
        clock: Clock,
        *,
        principal: str = PRINCIPAL,
        settings: CalendarSettings | None = None,
    ) -> None:
        self.clock = clock
        self.principal = principal
        self.settings = settings or CalendarSettings()
        self.calendars: dict[str, CalendarRecord] = {}
        self._lock = threading.RLock()
        self._version = 0
        self._list_epoch = 0
        self._cursors: OrderedDict[str, _Cursor] = OrderedDict()
        self._cursor_counter = 0
        self._pending: list[_Pending] = []
        self._pool: list[tuple[str, str]] = []  # (calendar, event) mutations may pick
        self._world = _WorldIndex()
        self._instance = secrets.token_hex(4)  # tokens of another sandbox run are not ours
        now = clock.now()
        self._add_calendar(
            CalendarRecord(
                id=principal,
                summary=principal,
                time_zone="UTC",
                access_role="owner",
                primary=True,
                updated=now,
                color_id="1",
            )
        )

    # -- loading -----------------------------------------------------------------------------------
    @classmethod
    def from_world(
        cls,
        world: World,
        clock: Clock,
        *,
        principal: str = PRINCIPAL,
        settings: CalendarSettings | None = None,
    ) -> CalendarStore:
        """One calendar per user (id = email), one event per meeting on its owner's calendar.

        World series are expanded in UTC: the generator lays out a series' occurrences (and the
        cancelled, moved and EXDATE'd ones) at fixed UTC times, so the master's ``timeZone`` is UTC
        and instance ids match the world's occurrence keys exactly.
        """
        store = cls(clock, principal=principal, settings=settings)
        index = store._world
        for user in world.users:
            name = f"{user.first_name} {user.last_name}"
            index.users_by_key[user.key] = user
            store._add_calendar(
                CalendarRecord(
                    id=user.email,
                    summary=name,
                    time_zone=user.timezone,
                    access_role="writer",
                    primary=False,
                    updated=world.generated_at,
                    owner_name=name,
                    color_id=str(1 + len(store.calendars) % 24),
                )
            )
        index.engagements = list(world.engagements)
        for contact in world.contacts:
            index.contacts_by_client.setdefault(contact.client_key, []).append(contact)
        for engagement in world.engagements:
            index.client_by_engagement[engagement.key] = engagement.client_key
        latest: dict[str, datetime] = {}
        for meeting in world.meetings:
            owner = index.users_by_key[meeting.calendar_owner_key]
            calendar = store.calendars[owner.email]
            store._load_meeting(calendar, meeting)
            stamp = _aware(meeting.updated)
            if stamp > latest.get(calendar.id, datetime.min.replace(tzinfo=UTC)):
                latest[calendar.id] = stamp
        for calendar_id, stamp in latest.items():
            store.calendars[calendar_id].updated = stamp
        return store

    def _add_calendar(self, calendar: CalendarRecord) -> None:
        zone(calendar.time_zone)  # fail at load on an unknown zone, not on the first request
        self.calendars[calendar.id] = calendar

    def _load_meeting(self, calendar: CalendarRecord, meeting: Meeting) -> None:
        event_id = world_event_id(meeting.key)
        zone_name = "UTC" if meeting.recurrence else calendar.time_zone
        start_at, end_at = _aware(meeting.start), _aware(meeting.end)
        if meeting.all_day:
            first = meeting.start.date()
            last = max(meeting.end.date(), first + timedelta(days=1))
            start, end = EventTime(None, first, None), EventTime(None, last, None)
        else:
            start, end = EventTime(start_at, None, zone_name), EventTime(end_at, None, zone_name)
        where = calendar.zone
        record = EventRecord(
            id=event_id,
            calendar_id=calendar.id,
            status=meeting.status,
            start=start,
            end=end,
            created=_aware(meeting.created),
            updated=_aware(meeting.updated),
            ical_uid=f"{event_id}@google.com",
            begin=start.begins(where),
            finish=end.begins(where),
            recurrence=list(meeting.recurrence) or None,
            meeting=meeting,
        )
        calendar.events[event_id] = record
        self._pool.append((calendar.id, event_id))
        if not meeting.recurrence:
            return
        duration = record.duration
        for original in meeting.cancelled_occurrences:
            self._load_exception(calendar, record, _aware(original), _aware(original), duration, "cancelled")
        moved_status = "cancelled" if meeting.status == "cancelled" else "confirmed"
        for original, moved in meeting.moved_occurrences.items():
            self._load_exception(calendar, record, _aware(original), _aware(moved), duration, moved_status)

    def _load_exception(
        self,
        calendar: CalendarRecord,
        master: EventRecord,
        original: datetime,
        start_at: datetime,
        duration: timedelta,
        status: str,
    ) -> None:
        all_day = master.start.all_day
        zone_name = master.start.zone_name
        if all_day:
            orig = EventTime(None, original.date(), None)
            start = EventTime(None, start_at.date(), None)
        else:
            orig = EventTime(original, None, zone_name)
            start = EventTime(start_at, None, zone_name)
        end = start.shifted(duration)
        exception_id = f"{master.id}_{instance_suffix(orig)}"
        record = EventRecord(
            id=exception_id,
            calendar_id=calendar.id,
            status=status,
            start=start,
            end=end,
            created=master.created,
            updated=master.updated,
            ical_uid=master.ical_uid,
            begin=start.begins(calendar.zone),
            finish=end.begins(calendar.zone),
            recurring_event_id=master.id,
            original_start=orig,
            meeting=master.meeting,
        )
        calendar.events[exception_id] = record
        calendar.exceptions.setdefault(master.id, []).append(exception_id)

    # -- calendars -----------------------------------------------------------------------------------
    def calendar(self, calendar_id: str) -> CalendarRecord:
        """The calendar ``calendar_id`` (``primary`` = the principal's own); 404 when unknown."""
        if calendar_id == "primary":
            calendar_id = self.principal
        found = self.calendars.get(calendar_id)
        if found is None:
            for key, value in self.calendars.items():  # ids are email addresses: case-insensitive
                if key.lower() == calendar_id.lower():
                    return value
            raise errors.not_found()
        return found

    def calendar_list(
        self, *, max_results: int, page_token: str | None, sync_token: str | None, min_access_role: str | None
    ) -> JSON:
        with self._lock:
            entries = [
                c
                for c in self.calendars.values()
                if min_access_role is None or _ACCESS_RANK[c.access_role] >= _ACCESS_RANK[min_access_role]
            ]
            out: JSON = {"kind": "calendar#calendarList", "etag": f'"p3{self._list_epoch:013d}"'}
            if sync_token is not None:
                try:
                    tag, epoch = _unb64(sync_token).split(":")
                    valid = tag == "calendarList" and int(epoch) == self._list_epoch
                except (ValueError, binascii.Error, UnicodeDecodeError):
                    valid = False
                if not valid:
                    raise errors.full_sync_required()
                entries = []  # calendars never change in the sandbox
            offset = 0
            if page_token is not None:
                try:
                    tag, raw = _unb64(page_token).split(":")
                    offset = int(raw)
                    if tag != "calendarListPage" or offset < 0:
                        raise ValueError(tag)
                except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
                    raise errors.invalid("Invalid page token value.", location="pageToken") from exc
            page = entries[offset : offset + max_results]
            if offset + max_results < len(entries):
                out["nextPageToken"] = _b64(f"calendarListPage:{offset + max_results}")
            else:
                out["nextSyncToken"] = _b64(f"calendarList:{self._list_epoch}")
            out["items"] = [self._list_entry(c) for c in page]
            return out

    def calendar_list_entry(self, calendar_id: str) -> JSON:
        with self._lock:
            return self._list_entry(self.calendar(calendar_id))

    def calendar_resource(self, calendar_id: str) -> JSON:
        with self._lock:
            c = self.calendar(calendar_id)
            return {
                "kind": "calendar#calendar",
                "etag": f'"{int(c.updated.timestamp() * 1000)}"',
                "id": c.id,
                "summary": c.summary,
                "timeZone": c.time_zone,
                "conferenceProperties": {"allowedConferenceSolutionTypes": ["hangoutsMeet"]},
            }

    def _list_entry(self, c: CalendarRecord) -> JSON:
        entry: JSON = {
            "kind": "calendar#calendarListEntry",
            "etag": f'"{int(c.updated.timestamp() * 1000)}"',
            "id": c.id,
            "summary": c.summary,
            "timeZone": c.time_zone,
            "colorId": c.color_id,
            "backgroundColor": "#9fe1e7",
            "foregroundColor": "#000000",
            "selected": True,
            "accessRole": c.access_role,
            "defaultReminders": self._default_reminders(c),
            "conferenceProperties": {"allowedConferenceSolutionTypes": ["hangoutsMeet"]},
        }
        if c.primary:
            entry["primary"] = True
        return entry

    @staticmethod
    def _default_reminders(c: CalendarRecord) -> list[JSON]:
        return [{"method": "popup", "minutes": 10}] if c.access_role == "owner" else []

    # -- events.list -------------------------------------------------------------------------------
    def list_events(self, query: EventQuery) -> JSON:
        """One page of events.list (or events.instances when ``query.series_id`` is set)."""
        with self._lock:
            now = self.clock.now()
            calendar = self.calendar(query.calendar_id)
            if query.sync_token is not None:
                for name in _SYNC_FORBIDDEN:
                    if name in query.given:
                        raise errors.invalid(
                            f"The parameter {name} cannot be used together with syncToken.", location=name
                        )
            else:
                self._validate_window(query, now)
            if query.page_token is not None:
                cursor, offset = self._cursor(query.page_token, calendar.id)
                return self._page(calendar, cursor, offset, query.max_results, now)
            shown_in = query.time_zone or calendar.time_zone
            sync: _SyncToken | None = None
            if query.series_id is not None:
                items = self._instance_items(calendar, query, now)
            elif query.sync_token is not None:
                token = self._decode_sync(query.sync_token, calendar, now)
                if token.single_events != query.single_events:
                    raise errors.invalid(
                        "The syncToken was issued for a different value of singleEvents.",
                        location="singleEvents",
                    )
                items = self._changed_items(calendar, token, now)
                sync = replace(token, seq=calendar.seq, epoch=calendar.epoch)
            else:
                items = self._matching_items(calendar, query, now)
                self._sort(items, calendar, query.order_by)
                sync = _SyncToken(
                    calendar.id,
                    calendar.seq,
                    calendar.epoch,
                    now,
                    query.single_events,
                    query.event_types,
                    query.time_min,
                    query.time_max,
                )
            cursor = _Cursor(
                calendar.id, items, shown_in, query.max_attendees, now + self.settings.page_token_ttl, sync
            )
            return self._page(calendar, cursor, 0, query.max_results, now)

    def _validate_window(self, query: EventQuery, now: datetime) -> None:
        if query.time_min is not None and query.time_max is not None and query.time_max <= query.time_min:
            raise errors.time_range_empty()
        if query.order_by == "startTime" and not query.single_events and query.series_id is None:
            raise errors.bad_request("The requested ordering is not available for the particular query.")
        if query.updated_min is not None and query.updated_min < now - self.settings.updated_min_max_age:
            raise errors.updated_min_too_long_ago()

    def _page(self, calendar: CalendarRecord, cursor: _Cursor, offset: int, size: int, now: datetime) -> JSON:
        where = zone(cursor.shown_in)
        chunk = cursor.items[offset : offset + size]
        out: JSON = {
            "kind": "calendar#events",
            "etag": f'"p3{calendar.epoch:04d}{calendar.seq:012d}"',
            "summary": calendar.summary,
            "description": "",
            "updated": format_stamp(calendar.updated),
            "timeZone": cursor.shown_in,
            "accessRole": calendar.access_role,
            "defaultReminders": self._default_reminders(calendar),
        }
        if offset + size < len(cursor.items):
            out["nextPageToken"] = self._remember(cursor, offset + size, now)
        elif cursor.sync is not None:
            out["nextSyncToken"] = self._encode_sync(replace(cursor.sync, issued=now))
        shared: dict[str, JSON] = {}  # a series' descriptive fields, built once for all its instances here
        out["items"] = [self._render_item(calendar, item, where, cursor.max_attendees, shared) for item in chunk]
        return out

    def _render_item(
        self,
        calendar: CalendarRecord,
        item: _Item,
        where: tzinfo,
        max_attendees: int | None,
        shared: dict[str, JSON] | None = None,
    ) -> JSON:
        record = item.record
        if item.occurrence is not None:
            times = self._occurrence_times(calendar, record, item.occurrence)
            fields = None
            if shared is not None and not item.cancelled:
                fields = shared.get(record.id)
                if fields is None:
                    fields = shared[record.id] = fields_of(record, calendar.owner_name)
            return render(
                record,
                calendar,
                where,
                max_attendees=max_attendees,
                occurrence=times,
                minimal=item.cancelled,
                fields=fields,
            )
        minimal = record.status == "cancelled" and (record.deleted_by_api or record.is_exception)
        return render(record, calendar, where, max_attendees=max_attendees, minimal=minimal)

    def _remember(self, cursor: _Cursor, offset: int, now: datetime) -> str:
        key = cursor.key
        if key is None:
            self._cursor_counter += 1
            key = cursor.key = f"{self._cursor_counter}-{secrets.token_hex(4)}"
            self._cursors[key] = cursor
            for stale in [k for k, v in self._cursors.items() if v.expires <= now]:
                del self._cursors[stale]
            while len(self._cursors) > self.settings.max_cursors:
                self._cursors.popitem(last=False)
        elif key in self._cursors:
            self._cursors.move_to_end(key)
        return _b64(f"{key}:{offset}")

    def _cursor(self, page_token: str, calendar_id: str) -> tuple[_Cursor, int]:
        try:
            key, raw = _unb64(page_token).rsplit(":", 1)
            offset = int(raw)
        except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
            raise errors.invalid("Invalid page token value.", location="pageToken") from exc
        cursor = self._cursors.get(key)
        if cursor is None or cursor.calendar_id != calendar_id or cursor.expires <= self.clock.now():
            raise errors.invalid("Invalid page token value.", location="pageToken")
        self._cursors.move_to_end(key)
        return cursor, offset

    # -- result sets -------------------------------------------------------------------------------
    def _matching_items(self, calendar: CalendarRecord, query: EventQuery, now: datetime) -> list[_Item]:
        show_deleted = query.show_deleted or query.updated_min is not None
        upper = now + self.settings.expansion_horizon
        if query.time_max is not None and query.time_max < upper:
            upper = query.time_max
        items: list[_Item] = []
        for record in calendar.events.values():
            if query.updated_min is not None and record.updated < query.updated_min:
                continue
            cancelled = record.status == "cancelled"
            if record.is_exception:
                master = calendar.events.get(record.recurring_event_id or "")
                series_gone = master is None or master.status == "cancelled"
                if (cancelled or series_gone) and not show_deleted and (query.single_events or series_gone):
                    continue
                if not self._in_window(record, query) or not self._matches(record, query):
                    continue
                items.append(_Item(record, None, False))
            elif record.is_master:
                if cancelled and not show_deleted:
                    continue
                if not self._matches(record, query):
                    continue
                if query.single_events:
                    for occurrence in self._expand(calendar, record, query.time_min, upper):
                        items.append(_Item(record, occurrence, cancelled))
                elif (query.time_min is None and query.time_max is None) or self._first(
                    calendar, record, query.time_min, upper
                ) is not None:
                    items.append(_Item(record, None, False))
            else:
                if cancelled and not show_deleted:
                    continue
                if self._in_window(record, query) and self._matches(record, query):
                    items.append(_Item(record, None, False))
        return items

    def _changed_items(self, calendar: CalendarRecord, token: _SyncToken, now: datetime) -> list[_Item]:
        changed = sorted((r for r in calendar.events.values() if r.seq > token.seq), key=lambda r: r.seq)
        upper = now + self.settings.expansion_horizon
        if token.time_max is not None and token.time_max < upper:
            upper = token.time_max
        items: list[_Item] = []
        for record in changed:
            if token.event_types and self._event_type(record) not in token.event_types:
                continue
            if record.is_master and token.single_events:
                cancelled = record.status == "cancelled"
                for occurrence in self._expand(calendar, record, token.time_min, upper):
                    items.append(_Item(record, occurrence, cancelled))
            else:
                items.append(_Item(record, None, False))
        return items

    def _instance_items(self, calendar: CalendarRecord, query: EventQuery, now: datetime) -> list[_Item]:
        master = calendar.events.get(query.series_id or "")
        if master is None:
            raise errors.not_found()
        if not master.is_master:
            return []
        if master.status == "cancelled":
            raise errors.deleted()
        upper = now + self.settings.expansion_horizon
        if query.time_max is not None and query.time_max < upper:
            upper = query.time_max
        keyed: list[tuple[datetime, _Item]] = []
        for occurrence in self._expand(calendar, master, query.time_min, upper):
            start, _, _ = self._occurrence_times(calendar, master, occurrence)
            keyed.append((start.begins(calendar.zone), _Item(master, occurrence, False)))
        for exception_id in calendar.exceptions.get(master.id, []):
            record = calendar.events[exception_id]
            if record.status == "cancelled" and not query.show_deleted:
                continue
            if not self._in_window(record, query):
                continue
            assert record.original_start is not None
            keyed.append((record.original_start.begins(calendar.zone), _Item(record, None, False)))
        keyed.sort(key=lambda pair: pair[0])
        if query.original_start is not None:
            keyed = [pair for pair in keyed if pair[0] == query.original_start]
        return [item for _, item in keyed]

    @staticmethod
    def _in_window(record: EventRecord, query: EventQuery) -> bool:
        if query.time_min is not None and record.finish <= query.time_min:
            return False
        return query.time_max is None or record.begin < query.time_max

    def _rules(self, calendar: CalendarRecord, master: EventRecord) -> Recurrence:
        if master.rules is None:
            assert master.recurrence is not None
            if master.start.all_day:
                assert master.start.day is not None
                master.rules = Recurrence(master.recurrence, master.start.day, calendar.zone, all_day=True)
            else:
                assert master.start.instant is not None
                where = zone(master.start.zone_name) if master.start.zone_name else calendar.zone
                master.rules = Recurrence(master.recurrence, master.start.instant, where, all_day=False)
        return master.rules

    def _expand(
        self, calendar: CalendarRecord, master: EventRecord, after: datetime | None, before: datetime
    ) -> Iterator[datetime]:
        """Generated occurrences in the window, minus those replaced by an exception record."""
        rules = self._rules(calendar, master)
        replaced = set(calendar.exceptions.get(master.id, ()))
        for occurrence in rules.occurrences(after, before, master.duration):
            if f"{master.id}_{rules.suffix(occurrence)}" not in replaced:
                yield occurrence

    def _first(
        self, calendar: CalendarRecord, master: EventRecord, after: datetime | None, before: datetime
    ) -> datetime | None:
        return self._rules(calendar, master).first_overlapping(after, before, master.duration)

    @staticmethod
    def _occurrence_times(
        calendar: CalendarRecord, master: EventRecord, occurrence: datetime
    ) -> tuple[EventTime, EventTime, EventTime]:
        if master.start.all_day:
            start = EventTime(None, occurrence.date(), master.start.zone_name)
        else:
            start = EventTime(occurrence.astimezone(UTC), None, master.start.zone_name)
        return start, start.shifted(master.duration), start

    def _sort(self, items: list[_Item], calendar: CalendarRecord, order_by: str | None) -> None:
        if order_by == "startTime":

            def start_key(item: _Item) -> tuple[datetime, str]:
                if item.occurrence is None:
                    return item.record.begin, item.record.id
                start, _, _ = self._occurrence_times(calendar, item.record, item.occurrence)
                return start.begins(calendar.zone), item.record.id

            items.sort(key=start_key)
        elif order_by == "updated":
            items.sort(key=lambda item: (item.record.updated, item.record.id))

    # -- filters -------------------------------------------------------------------------------
    def _peek(self, record: EventRecord) -> JSON:
        """Descriptive fields without caching them (filters must not grow memory)."""
        return fields_of(record, self.calendars[record.calendar_id].owner_name)

    def _event_type(self, record: EventRecord) -> str:
        if record.fields is None:
            return "default"
        return str(record.fields.get("eventType", "default"))

    def _matches(self, record: EventRecord, query: EventQuery) -> bool:
        if query.ical_uid is not None and record.ical_uid != query.ical_uid:
            return False
        if query.event_types and self._event_type(record) not in query.event_types:
            return False
        if query.private_properties or query.shared_properties:
            props = self._peek(record).get("extendedProperties") or {}
            for scope, wanted in (("private", query.private_properties), ("shared", query.shared_properties)):
                values = props.get(scope) or {}
                if any(values.get(name) != value for name, value in wanted):
                    return False
        if query.q:
            fields = self._peek(record)
            haystack = [
                str(fields.get("summary", "")),
                str(fields.get("description", "")),
                str(fields.get("location", "")),
            ]
            for someone in [fields.get("organizer") or {}, *(fields.get("attendees") or [])]:
                haystack.append(str(someone.get("email", "")))
                haystack.append(str(someone.get("displayName", "")))
            text = " ".join(haystack).lower()
            if not all(term in text for term in query.q.lower().split()):
                return False
        return True

    # -- sync tokens -------------------------------------------------------------------------------
    def _encode_sync(self, token: _SyncToken) -> str:
        payload = [
            self._instance,
            token.calendar_id,
            token.seq,
            token.epoch,
            int(token.issued.timestamp() * 1000),
            int(token.single_events),
            list(token.event_types),
            token.time_min.isoformat() if token.time_min else None,
            token.time_max.isoformat() if token.time_max else None,
        ]
        return "C" + _b64(json.dumps(payload, separators=(",", ":")))

    def _decode_sync(self, raw: str, calendar: CalendarRecord, now: datetime) -> _SyncToken:
        """The token, or 410 fullSyncRequired when it is unreadable, foreign, invalidated or too old."""
        try:
            if not raw.startswith("C"):
                raise ValueError("not a sync token")
            version, cal_id, seq, epoch, issued_ms, single, types, tmin, tmax = json.loads(_unb64(raw[1:]))
            if version != self._instance:
                raise ValueError("a token of another sandbox run")
            token = _SyncToken(
                str(cal_id),
                int(seq),
                int(epoch),
                datetime.fromtimestamp(int(issued_ms) / 1000, UTC),
                bool(single),
                tuple(str(t) for t in types),
                datetime.fromisoformat(tmin) if tmin else None,
                datetime.fromisoformat(tmax) if tmax else None,
            )
        except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
            raise errors.full_sync_required() from exc
        if token.calendar_id != calendar.id or token.epoch != calendar.epoch or token.seq > calendar.seq:
            raise errors.full_sync_required()
        if now - token.issued > self.settings.sync_token_max_age:
            raise errors.full_sync_required()
        return token

    def invalidate_sync_tokens(self, calendar_id: str | None = None) -> None:
        """The "stale sync token" fault: every token issued so far (for one calendar or all) answers 410."""
        with self._lock:
            targets = list(self.calendars.values()) if calendar_id is None else [self.calendar(calendar_id)]
            for calendar in targets:
                calendar.epoch += 1
            if calendar_id is None:
                self._list_epoch += 1

    # -- reads of one event --------------------------------------------------------------------------
    def get_event(
        self,
        calendar_id: str,
        event_id: str,
        *,
        time_zone: str | None = None,
        max_attendees: int | None = None,
    ) -> JSON:
        with self._lock:
            calendar = self.calendar(calendar_id)
            where = zone(time_zone or calendar.time_zone)
            record, occurrence = self._resolve(calendar, event_id)
            if occurrence is not None:
                times = self._occurrence_times(calendar, record, occurrence)
                return render(record, calendar, where, max_attendees=max_attendees, occurrence=times)
            return render(record, calendar, where, max_attendees=max_attendees)

    def _resolve(self, calendar: CalendarRecord, event_id: str) -> tuple[EventRecord, datetime | None]:
        """A stored record, or (master, occurrence) for an instance id of a live series; 404 otherwise."""
        record = calendar.events.get(event_id)
        if record is not None:
            return record, None
        split = split_instance_id(event_id)
        if split is not None:
            base, original = split
            master = calendar.events.get(base)
            if master is not None and master.is_master and master.status != "cancelled":
                if isinstance(original, datetime) and not master.start.all_day:
                    key = original
                elif not isinstance(original, datetime) and master.start.all_day:
                    key = datetime.combine(original, time())
                else:
                    raise errors.not_found()
                rules = self._rules(calendar, master)
                if rules.contains(key):
                    return master, key if master.start.all_day else key.astimezone(rules.where)
        raise errors.not_found()

    # -- writes ------------------------------------------------------------------------------------
    def insert_event(self, calendar_id: str, body: JSON) -> JSON:
        with self._lock:
            calendar = self.calendar(calendar_id)
            if not isinstance(body, dict):
                raise errors.bad_request()
            raw_id = body.get("id")
            if raw_id is None:
                event_id = _random_id(secrets.randbits(160))
            elif not isinstance(raw_id, str) or not valid_event_id(raw_id):
                raise errors.invalid("Invalid resource id value.")
            else:
                event_id = raw_id
            if event_id in calendar.events:
                raise errors.duplicate()
            status = self._status(body.get("status", "confirmed"))
            recurrence = self._recurrence_lines(body.get("recurrence"))
            start, end = self._times(body.get("start"), body.get("end"), calendar, recurring=bool(recurrence))
            ical = body.get("iCalUID")
            if ical is not None and not isinstance(ical, str):
                raise errors.invalid("Invalid iCalUID value.")
            fields = self._input_fields(body, calendar)
            fields["creator"] = person(self.principal, None, calendar.id)
            fields["organizer"] = person(calendar.id, calendar.owner_name or calendar.summary, calendar.id)
            if "attendees" in fields:
                fields["attendees"] = self._attendees(fields["attendees"], calendar, fields["organizer"])
            fields.setdefault("reminders", {"useDefault": True})
            fields.setdefault("eventType", "default")
            now = self.clock.now()
            record = EventRecord(
                id=event_id,
                calendar_id=calendar.id,
                status=status,
                start=start,
                end=end,
                created=now,
                updated=now,
                ical_uid=ical or f"{event_id}@google.com",
                begin=start.begins(calendar.zone),
                finish=end.begins(calendar.zone),
                recurrence=recurrence,
                origin="api",
                fields=fields,
            )
            if recurrence:
                self._check_rules(calendar, record)
            calendar.events[event_id] = record
            self._touch(calendar, record, now, bump_sequence=False)
            return render(record, calendar, calendar.zone)

    def patch_event(self, calendar_id: str, event_id: str, body: JSON) -> JSON:
        return self._write(calendar_id, event_id, body, full=False)

    def update_event(self, calendar_id: str, event_id: str, body: JSON) -> JSON:
        return self._write(calendar_id, event_id, body, full=True)

    def _write(self, calendar_id: str, event_id: str, body: JSON, *, full: bool) -> JSON:
        with self._lock:
            calendar = self.calendar(calendar_id)
            if not isinstance(body, dict):
                raise errors.bad_request()
            if "id" in body and body["id"] != event_id:
                raise errors.invalid("Invalid resource id value.")
            now = self.clock.now()
            record, occurrence = self._resolve(calendar, event_id)
            is_new_exception = occurrence is not None
            if occurrence is not None:
                record = self._exception_from(calendar, record, occurrence, now)
            if full:
                status = self._status(body.get("status", "confirmed"))
                start, end = self._times(body.get("start"), body.get("end"), calendar, recurring=False)
                recurrence = None if record.is_exception else self._recurrence_lines(body.get("recurrence"))
                old = descriptive(record, calendar.owner_name)
                fields = self._input_fields(body, calendar)
                fields["creator"] = old.get("creator", person(self.principal, None, calendar.id))
                fields["organizer"] = old.get("organizer", person(calendar.id, calendar.summary, calendar.id))
                fields.setdefault("reminders", {"useDefault": True})
                fields.setdefault("eventType", old.get("eventType", "default"))
            else:
                status = self._status(body.get("status", record.status))
                start = self._time(body["start"], "start", calendar) if "start" in body else record.start
                end = self._time(body["end"], "end", calendar) if "end" in body else record.end
                self._check_span(start, end)
                recurrence = record.recurrence
                if "recurrence" in body and not record.is_exception:
                    recurrence = self._recurrence_lines(body.get("recurrence"))
                patch = self._input_fields(body, calendar)
                patch.pop("organizer", None)
                fields = _merge(descriptive(record, calendar.owner_name), patch)
            if recurrence and not start.all_day and start.zone_name is None:
                raise errors.required("Missing time zone definition for start time.")
            if "attendees" in fields and fields["attendees"] is not None:
                fields["attendees"] = self._attendees(fields["attendees"], calendar, fields.get("organizer") or {})
            candidate = replace(record, start=start, end=end, recurrence=recurrence, rules=None)
            if recurrence:
                self._check_rules(calendar, candidate)
            was_cancelled = record.status == "cancelled"
            record.start, record.end, record.recurrence = start, end, recurrence
            record.retime(calendar.zone)
            record.status = status
            record.fields = fields
            if status != "cancelled":
                record.deleted_by_api = False
            self._touch(calendar, record, now, bump_sequence=not is_new_exception)
            if status == "cancelled" and not was_cancelled and record.is_master:
                self._cancel_exceptions(calendar, record, now, by_api=False)
            return render(record, calendar, calendar.zone)

    def delete_event(self, calendar_id: str, event_id: str) -> None:
        with self._lock:
            calendar = self.calendar(calendar_id)
            now = self.clock.now()
            record, occurrence = self._resolve(calendar, event_id)
            if occurrence is not None:
                record = self._exception_from(calendar, record, occurrence, now)
            elif record.status == "cancelled":
                raise errors.deleted()
            record.status = "cancelled"
            record.deleted_by_api = True
            self._touch(calendar, record, now)
            if record.is_master:
                self._cancel_exceptions(calendar, record, now, by_api=True)

    def _exception_from(
        self, calendar: CalendarRecord, master: EventRecord, occurrence: datetime, now: datetime
    ) -> EventRecord:
        """A stored exception for one generated instance, copying the series' fields."""
        start, end, original = self._occurrence_times(calendar, master, occurrence)
        exception_id = f"{master.id}_{instance_suffix(original)}"
        record = EventRecord(
            id=exception_id,
            calendar_id=calendar.id,
            status="confirmed",
            start=start,
            end=end,
            created=master.created,
            updated=now,
            ical_uid=master.ical_uid,
            begin=start.begins(calendar.zone),
            finish=end.begins(calendar.zone),
            sequence=master.sequence,
            recurring_event_id=master.id,
            original_start=original,
            origin=master.origin,
            fields=dict(descriptive(master, calendar.owner_name)),
        )
        calendar.events[exception_id] = record
        calendar.exceptions.setdefault(master.id, []).append(exception_id)
        return record

    def _cancel_exceptions(
        self, calendar: CalendarRecord, master: EventRecord, stamp: datetime, *, by_api: bool
    ) -> None:
        for exception_id in calendar.exceptions.get(master.id, []):
            exception = calendar.events[exception_id]
            if exception.status != "cancelled":
                exception.status = "cancelled"
                exception.deleted_by_api = by_api
                self._touch(calendar, exception, stamp)

    def _touch(
        self, calendar: CalendarRecord, record: EventRecord, stamp: datetime, *, bump_sequence: bool = True
    ) -> None:
        """Make a change visible: new updated stamp, etag, and the calendar's next change sequence."""
        self._version += 1
        record.version = self._version
        record.updated = stamp
        if bump_sequence:
            record.sequence += 1
        calendar.seq += 1
        record.seq = calendar.seq
        if stamp > calendar.updated:
            calendar.updated = stamp

    # -- input validation ----------------------------------------------------------------------------
    @staticmethod
    def _status(value: Any) -> str:
        if value not in _STATUSES:
            raise errors.invalid("Invalid value for: status")
        return str(value)

    @staticmethod
    def _recurrence_lines(value: Any) -> list[str] | None:
        if value is None or value == []:
            return None
        if not isinstance(value, list) or not all(isinstance(line, str) for line in value):
            raise errors.invalid("Invalid recurrence rule.")
        return list(value)

    def _check_rules(self, calendar: CalendarRecord, record: EventRecord) -> None:
        try:
            rules = self._rules(calendar, record)
            rules.first_overlapping(None, record.begin + timedelta(days=1), timedelta(0))
        except (RecurrenceError, ValueError) as exc:
            record.rules = None
            raise errors.invalid("Invalid recurrence rule.") from exc

    def _times(
        self, raw_start: Any, raw_end: Any, calendar: CalendarRecord, *, recurring: bool
    ) -> tuple[EventTime, EventTime]:
        start = self._time(raw_start, "start", calendar)
        end = self._time(raw_end, "end", calendar)
        self._check_span(start, end)
        if recurring and not start.all_day and start.zone_name is None:
            raise errors.required("Missing time zone definition for start time.")
        return start, end

    @staticmethod
    def _check_span(start: EventTime, end: EventTime) -> None:
        if start.all_day != end.all_day:
            raise errors.invalid("Start and end times must either both be date or both be dateTime.")
        if start.all_day:
            assert start.day is not None and end.day is not None
            if end.day <= start.day:
                raise errors.time_range_empty("end.date")
        else:
            assert start.instant is not None and end.instant is not None
            if end.instant < start.instant:
                raise errors.time_range_empty("end.dateTime")

    @staticmethod
    def _time(raw: Any, what: str, calendar: CalendarRecord) -> EventTime:
        if not isinstance(raw, dict) or (raw.get("date") is None and raw.get("dateTime") is None):
            raise errors.required(f"Missing {what} time.")
        zone_name = raw.get("timeZone")
        where: tzinfo | None = None
        if zone_name is not None:
            try:
                where = zone(str(zone_name))
            except ValueError as exc:
                raise errors.invalid(f"Invalid time zone definition for {what} time.") from exc
        if raw.get("date") is not None and raw.get("dateTime") is not None:
            raise errors.invalid(f"Invalid {what} time.")
        if raw.get("date") is not None:
            try:
                return EventTime(None, parse_date(str(raw["date"])), zone_name)
            except ValueError as exc:
                raise errors.invalid(f"Invalid {what} time.") from exc
        text = str(raw["dateTime"])
        try:
            moment = parse_datetime(text, default_zone=where)
        except ValueError as exc:
            try:
                parse_datetime(text, default_zone=UTC)
            except ValueError:
                raise errors.invalid(f"Invalid {what} time.") from exc
            raise errors.required(f"Missing time zone definition for {what} time.") from exc
        return EventTime(moment.astimezone(UTC), None, zone_name)

    @staticmethod
    def _input_fields(body: JSON, calendar: CalendarRecord) -> JSON:
        fields = {k: v for k, v in body.items() if k not in READ_ONLY and k not in _TYPED_INPUT}
        props = fields.get("extendedProperties")
        if props is not None:
            if not isinstance(props, dict) or set(props) - {"private", "shared"}:
                raise errors.invalid("Invalid extendedProperties value.")
            for scope in props.values():
                if scope is not None and (
                    not isinstance(scope, dict)
                    or not all(isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in scope.items())
                ):
                    raise errors.invalid("Invalid extendedProperties value.")
        return fields

    @staticmethod
    def _attendees(raw: Any, calendar: CalendarRecord, organizer: JSON) -> list[JSON]:
        if not isinstance(raw, list):
            raise errors.invalid("Invalid attendees value.")
        organizer_email = str(organizer.get("email", "")).lower()
        out: list[JSON] = []
        for entry in raw:
            if not isinstance(entry, dict) or not isinstance(entry.get("email"), str) or not entry["email"]:
                raise errors.required("Missing attendee email.")
            email = entry["email"]
            attendee: JSON = {"email": email}
            if entry.get("displayName"):
                attendee["displayName"] = entry["displayName"]
            if email.lower() == organizer_email:
                attendee["organizer"] = True
            if email.lower() == calendar.id.lower():
                attendee["self"] = True
            for key in ("optional", "resource", "comment", "additionalGuests"):
                if key in entry:
                    attendee[key] = entry[key]
            response = entry.get("responseStatus", "needsAction")
            if response not in ("needsAction", "declined", "tentative", "accepted"):
                raise errors.invalid("Invalid attendee responseStatus.")
            attendee["responseStatus"] = response
            out.append(attendee)
        return out

    # -- mutations (MutableStore) --------------------------------------------------------------------
    def mutate(self, rng: random.Random, count: int, stamp: datetime, *, late_share: float) -> list[Change]:
        """``count`` changes like those people make, each stamped ``stamp``; a share held back.

        Kinds: new meeting with client attendees (create), moved meeting or moved instance (update),
        cancelled meeting (delete), one cancelled instance of a series (cancel), attendee declines,
        attendee added, description changed (update).
        """
        planners: list[tuple[Callable[[random.Random, datetime], _Pending | None], int]] = [
            (self._plan_create, 2),
            (self._plan_move, 2),
            (self._plan_delete, 1),
            (self._plan_cancel_instance, 1),
            (self._plan_decline, 2),
            (self._plan_add_attendee, 1),
            (self._plan_description, 1),
        ]
        funcs = [p for p, _ in planners]
        weights = [w for _, w in planners]
        changes: list[Change] = []
        with self._lock:
            for _ in range(count):
                plan = rng.choices(funcs, weights)[0]
                pending = plan(rng, stamp) or self._plan_description(rng, stamp)
                if pending is None:
                    continue
                if rng.random() < late_share:
                    pending.change = replace(pending.change, late=True)
                    self._pending.append(pending)
                    changes.append(pending.change)
                elif pending.apply(stamp):
                    changes.append(pending.change)
        return changes

    def release_pending(self) -> list[Change]:
        """Apply the held-back changes with their original stamps; they get new change sequences."""
        with self._lock:
            pending, self._pending = self._pending, []
            return [p.change for p in pending if p.apply(p.change.stamp)]

    def counts(self) -> dict[str, int]:
        with self._lock:
            records = [r for c in self.calendars.values() for r in c.events.values()]
            return {
                "calendars": len(self.calendars),
                "events": sum(1 for r in records if not r.is_exception),
                "recurring_series": sum(1 for r in records if r.is_master),
                "exceptions": sum(1 for r in records if r.is_exception),
                "cancelled": sum(1 for r in records if r.status == "cancelled"),
                "pending_changes": len(self._pending),
            }

    def _pick(self, rng: random.Random, accept: Callable[[EventRecord], bool]) -> EventRecord | None:
        if not self._pool:
            return None
        for _ in range(40):
            calendar_id, event_id = rng.choice(self._pool)
            record = self.calendars[calendar_id].events[event_id]
            if record.status != "cancelled" and accept(record):
                return record
        return None

    def _live(self, calendar_id: str, event_id: str) -> EventRecord | None:
        record = self.calendars[calendar_id].events.get(event_id)
        return record if record is not None and record.status != "cancelled" else None

    @staticmethod
    def _change(kind: ChangeKind, event_id: str, stamp: datetime, detail: str) -> Change:
        return Change(api=API, kind=kind, object="event", id=event_id, stamp=stamp, detail=detail)

    def _plan_create(self, rng: random.Random, stamp: datetime) -> _Pending | None:
        index = self._world
        if not index.engagements:
            return None
        engagement = rng.choice(index.engagements)
        owner = index.users_by_key.get(engagement.owner_key)
        if owner is None or owner.email not in self.calendars:
            return None
        calendar = self.calendars[owner.email]
        contacts = index.contacts_by_client.get(engagement.client_key, [])
        chosen = rng.sample(contacts, k=min(len(contacts), rng.randint(1, 3)))
        local = stamp.astimezone(calendar.zone) + timedelta(days=rng.randint(1, 14))
        start_at = local.replace(hour=rng.randint(8, 16), minute=rng.choice((0, 30)), second=0, microsecond=0)
        minutes = rng.choice((30, 45, 60))
        event_id = _random_id(rng.getrandbits(160))
        summary = f"{rng.choice(_TOPICS)}: {engagement.name[:60]}"
        owner_name = f"{owner.first_name} {owner.last_name}"

        def apply(when: datetime) -> bool:
            organizer = person(owner.email, owner_name, calendar.id)
            attendees: list[JSON] = [
                {**organizer, "organizer": True, "responseStatus": "accepted"},
                *(
                    {
                        "email": c.email.lower(),
                        "displayName": f"{c.first_name} {c.last_name}",
                        "responseStatus": "needsAction",
                    }
                    for c in chosen
                ),
            ]
            start = EventTime(start_at.astimezone(UTC), None, calendar.time_zone)
            end = start.shifted(timedelta(minutes=minutes))
            record = EventRecord(
                id=event_id,
                calendar_id=calendar.id,
                status="confirmed",
                start=start,
                end=end,
                created=when,
                updated=when,
                ical_uid=f"{event_id}@google.com",
                begin=start.begins(calendar.zone),
                finish=end.begins(calendar.zone),
                origin="mutation",
                fields={
                    "summary": summary,
                    "description": "Agenda: progress, risks, next steps",
                    "creator": dict(organizer),
                    "organizer": organizer,
                    "attendees": attendees,
                    "reminders": {"useDefault": True},
                    "eventType": "default",
                },
            )
            calendar.events[event_id] = record
            self._pool.append((calendar.id, event_id))
            self._touch(calendar, record, when, bump_sequence=False)
            return True

        detail = f"new meeting with {len(chosen)} client attendee(s)"
        return _Pending(self._change("create", event_id, stamp, detail), apply)

    def _plan_move(self, rng: random.Random, stamp: datetime) -> _Pending | None:
        target = self._pick(rng, lambda r: not r.is_exception)
        if target is None:
            return None
        calendar = self.calendars[target.calendar_id]
        hours = rng.choice((-2, 1, 2, 3, 24, 48, -24))
        delta = timedelta(hours=hours)
        if target.start.all_day:
            delta = timedelta(days=rng.choice((1, 2, -1)))
        if target.is_master:
            occurrence = self._future_occurrence(rng, calendar, target, stamp)
            if occurrence is None:
                return None
            master_id = target.id

            def apply_instance(when: datetime) -> bool:
                master = self._live(calendar.id, master_id)
                if master is None:
                    return False
                rules = self._rules(calendar, master)
                if f"{master.id}_{rules.suffix(occurrence)}" in calendar.events or not rules.contains(occurrence):
                    return False
                record = self._exception_from(calendar, master, occurrence, when)
                record.start, record.end = record.start.shifted(delta), record.end.shifted(delta)
                record.retime(calendar.zone)
                self._touch(calendar, record, when)
                return True

            _, _, original = self._occurrence_times(calendar, target, occurrence)
            instance = f"{target.id}_{instance_suffix(original)}"
            return _Pending(
                self._change("update", instance, stamp, f"instance moved {_delta_text(delta)}"),
                apply_instance,
            )
        event_id = target.id

        def apply(when: datetime) -> bool:
            record = self._live(calendar.id, event_id)
            if record is None:
                return False
            record.start, record.end = record.start.shifted(delta), record.end.shifted(delta)
            record.retime(calendar.zone)
            self._touch(calendar, record, when)
            return True

        return _Pending(self._change("update", event_id, stamp, f"moved {_delta_text(delta)}"), apply)

    def _plan_delete(self, rng: random.Random, stamp: datetime) -> _Pending | None:
        target = self._pick(rng, lambda r: not r.is_exception)
        if target is None:
            return None
        calendar_id, event_id = target.calendar_id, target.id

        def apply(when: datetime) -> bool:
            record = self._live(calendar_id, event_id)
            if record is None:
                return False
            calendar = self.calendars[calendar_id]
            record.status = "cancelled"
            self._touch(calendar, record, when)
            if record.is_master:
                self._cancel_exceptions(calendar, record, when, by_api=False)
            return True

        return _Pending(self._change("delete", event_id, stamp, "meeting cancelled"), apply)

    def _plan_cancel_instance(self, rng: random.Random, stamp: datetime) -> _Pending | None:
        target = self._pick(rng, lambda r: r.is_master)
        if target is None:
            return None
        calendar = self.calendars[target.calendar_id]
        occurrence = self._future_occurrence(rng, calendar, target, stamp)
        if occurrence is None:
            return None
        master_id = target.id

        def apply(when: datetime) -> bool:
            master = self._live(calendar.id, master_id)
            if master is None:
                return False
            rules = self._rules(calendar, master)
            if f"{master.id}_{rules.suffix(occurrence)}" in calendar.events or not rules.contains(occurrence):
                return False
            record = self._exception_from(calendar, master, occurrence, when)
            record.status = "cancelled"
            self._touch(calendar, record, when)
            return True

        _, _, original = self._occurrence_times(calendar, target, occurrence)
        instance = f"{target.id}_{instance_suffix(original)}"
        return _Pending(self._change("cancel", instance, stamp, "one instance cancelled"), apply)

    def _future_occurrence(
        self, rng: random.Random, calendar: CalendarRecord, master: EventRecord, stamp: datetime
    ) -> datetime | None:
        upcoming = list(self._expand(calendar, master, stamp, stamp + timedelta(days=90)))
        return rng.choice(upcoming) if upcoming else None

    def _plan_decline(self, rng: random.Random, stamp: datetime) -> _Pending | None:
        def declinable(record: EventRecord) -> bool:
            attendees = self._peek(record).get("attendees") or []
            return any(not a.get("organizer") and a.get("responseStatus") != "declined" for a in attendees)

        target = self._pick(rng, lambda r: not r.is_exception and declinable(r))
        if target is None:
            return None
        candidates = [
            a["email"]
            for a in self._peek(target).get("attendees") or []
            if not a.get("organizer") and a.get("responseStatus") != "declined"
        ]
        email = rng.choice(candidates)
        return self._plan_fields(
            target,
            stamp,
            "update",
            "attendee declined",
            lambda f: {
                **f,
                "attendees": [
                    {**a, "responseStatus": "declined"} if a.get("email") == email else a
                    for a in f.get("attendees") or []
                ],
            },
        )

    def _plan_add_attendee(self, rng: random.Random, stamp: datetime) -> _Pending | None:
        target = self._pick(rng, lambda r: not r.is_exception)
        if target is None:
            return None
        index = self._world
        client_key = None
        if target.meeting is not None and target.meeting.engagement_key:
            client_key = index.client_by_engagement.get(target.meeting.engagement_key)
        pool = index.contacts_by_client.get(client_key or "", [])
        if not pool:
            pool = [c for contacts in index.contacts_by_client.values() for c in contacts[:1]]
        if not pool:
            return None
        contact = rng.choice(pool)
        email = contact.email.lower()
        name = f"{contact.first_name} {contact.last_name}"

        def add(f: JSON) -> JSON:
            attendees = list(f.get("attendees") or [])
            if any(str(a.get("email", "")).lower() == email for a in attendees):
                return f
            attendees.append({"email": email, "displayName": name, "responseStatus": "needsAction"})
            return {**f, "attendees": attendees}

        return self._plan_fields(target, stamp, "update", "attendee added", add)

    def _plan_description(self, rng: random.Random, stamp: datetime) -> _Pending | None:
        target = self._pick(rng, lambda r: not r.is_exception)
        if target is None:
            return None
        line = f"Agenda updated ({rng.choice(('risks', 'timeline', 'budget', 'scope', 'staffing'))})."
        return self._plan_fields(
            target,
            stamp,
            "update",
            "description changed",
            lambda f: {**f, "description": (str(f.get("description", "")) + "\n\n" + line).strip()},
        )

    def _plan_fields(
        self,
        target: EventRecord,
        stamp: datetime,
        kind: ChangeKind,
        detail: str,
        change: Callable[[JSON], JSON],
    ) -> _Pending:
        calendar_id, event_id = target.calendar_id, target.id

        def apply(when: datetime) -> bool:
            record = self._live(calendar_id, event_id)
            if record is None:
                return False
            calendar = self.calendars[calendar_id]
            record.fields = change(descriptive(record, calendar.owner_name))
            self._touch(calendar, record, when)
            return True

        return _Pending(self._change(kind, event_id, stamp, detail), apply)


def _merge(old: JSON, patch: JSON) -> JSON:
    """Google's patch semantics on a copy: objects merge, arrays and scalars replace, null removes."""
    out = dict(old)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _delta_text(delta: timedelta) -> str:
    hours = int(delta.total_seconds() // 3600)
    return f"{hours:+d}h"
