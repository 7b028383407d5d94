"""Google Calendar through google-api-python-client: per calendar a full sync, then syncToken
increments; a stale token (410 ``fullSyncRequired``) re-syncs that calendar alone.

One stream, ``events``, with one work unit per calendar (partition = calendar id). A full sync
lists the calendar's meetings in ``[upper - past_days, upper + future_days)`` with recurring series
expanded into instances (``singleEvents``), page by page, and ends with the calendar's
``nextSyncToken`` as cursor; every live event it reads counts as existing, so the final batch
reconciles and stored meetings no longer there are marked deleted (in this calendar only). An
increment sends only the sync token (Google forbids the window parameters with it, API-NOTES 3.2)
and hands over exactly what changed since; cancelled events and instances become deleted records.

The token is tied to the window of the full sync that issued it, so a reconciling read (due daily
by default, see ``flows.engine``) is a full sync: it moves the window on with time and catches
anything a token could miss.

The same meeting sits on every invited calendar under one event id, so a record's id is
``{calendar id}/{event id}`` and ``data["event_id"]`` carries the meeting's identity.

Retries: googleapiclient retries nothing unless ``execute(num_retries=N)`` is passed (API-NOTES 3.4),
so it runs with 0 and tenacity (``connectors.retry``) is the one retry layer. Below it, google-auth
refreshes the access token once on a 401 and replays the request, and httplib2 replays a request
once when a kept-alive connection turns out dead; neither touches 429 or 5xx.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httplib2
from google_auth_httplib2 import AuthorizedHttp
from googleapiclient import discovery
from googleapiclient.model import JsonModel

from connectors.base import WorkUnit
from connectors.errors import ConnectorError
from connectors.google_calendar.credentials import READONLY_SCOPE, build_credentials
from connectors.google_calendar.errors import SOURCE, FullSyncRequiredError, classify
from connectors.incremental import Batch, PageGuard
from connectors.jsonbody import NOT_DECODED, fast_loads
from connectors.retry import call_with_retry
from connectors.settings import GoogleCalendarSettings
from connectors.stamps import format_stamp, iso_stamp
from engagement.mapping import Mapping
from engagement.records import SourceRecord, iso, parse_datetime

log = logging.getLogger("accord.connectors.google_calendar")

STREAM = "events"
CALENDAR_LIST_MAX = 250  # calendarList.list answers at most 250 entries a page
SERVICES_PER_THREAD = 4  # delegated users' services a thread keeps (one calendar is read at a time)


@lru_cache(maxsize=256)
def _zone(name: str | None) -> tzinfo:
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        log.warning("unknown calendar time zone %r; reading all-day dates in UTC", name)
        return UTC


def _when(value: Any, where: tzinfo) -> tuple[str | None, bool]:
    """An event start/end as Accord's UTC timestamp text, and whether it was an all-day date.

    All-day dates (``{"date": "2024-05-01"}``, end exclusive) begin at midnight in the calendar's zone.
    """
    if not isinstance(value, dict):
        return None, False
    if value.get("dateTime"):
        return iso_stamp(value["dateTime"]), False
    if value.get("date"):
        day = datetime.fromisoformat(str(value["date"])[:10])
        return format_stamp(day.replace(tzinfo=where).astimezone(UTC)), True
    return None, False


def to_record(calendar_id: str, item: dict[str, Any], where: tzinfo, fallback: datetime) -> SourceRecord:
    """One event (or expanded instance) of ``calendar_id`` as a record; cancelled ones are deleted.

    ``where`` is the calendar's zone (for all-day dates); ``fallback`` stamps tombstones that come
    without ``updated`` (Google guarantees deleted events only their id). Runs once per event: the
    records it makes are pinned by ``tests/connectors/test_to_record_pinned.py``.
    """
    event_id = str(item["id"])
    record_id = f"{calendar_id}/{event_id}"
    get = item.get
    stamp = parse_datetime(get("updated")) or fallback
    status = str(get("status") or "confirmed")
    recurring = get("recurringEventId")
    if status == "cancelled":
        tombstone = {
            "event_id": event_id,
            "calendar": calendar_id,
            "status": status,
            "recurring_event_id": recurring,
        }
        return SourceRecord(SOURCE, STREAM, record_id, stamp, tombstone, deleted=True, partition=calendar_id)
    start, all_day = _when(get("start"), where)
    end, _ = _when(get("end"), where)
    organizer = get("organizer") or {}
    attendees = [
        {
            "email": str(a["email"]),
            "response": str(a.get("responseStatus") or "needsAction"),
            "organizer": bool(a.get("organizer")),
        }
        for a in get("attendees") or ()
        if a.get("email") and not a.get("resource")  # meeting rooms are not people
    ]
    data = {
        "event_id": event_id,
        "calendar": calendar_id,
        "summary": get("summary") or "",
        "start": start,
        "end": end,
        "all_day": all_day,
        "status": status,
        "organizer": organizer.get("email"),
        "attendees": attendees,
        "recurring_event_id": recurring,
    }
    return SourceRecord(SOURCE, STREAM, record_id, stamp, data, partition=calendar_id)


class _JsonModel(JsonModel):  # type: ignore[misc]  # googleapiclient ships no type information
    """googleapiclient's own JSON model, with answers decoded by orjson where that is exactly what
    ``json`` makes of them (``connectors.jsonbody``); anything else takes the model's own way."""

    def deserialize(self, content: Any) -> Any:
        if content.__class__ is bytes and not self._data_wrapper:
            decoded = fast_loads(content)
            if decoded is not NOT_DECODED:
                return decoded
        return super().deserialize(content)


def build_service(
    settings: GoogleCalendarSettings,
    *,
    subject: str | None = None,
    scopes: tuple[str, ...] = (READONLY_SCOPE,),
    model: Any = None,
) -> Any:
    """A Calendar service on its own httplib2 connection (not thread-safe: one per thread).

    ``scopes`` apply to service accounts (the writer asks for the events scope); ``subject`` is the
    user a service account acts as; ``model`` replaces the library's JSON model (None: its own).
    """
    transport = httplib2.Http(timeout=settings.timeout_s, ca_certs=settings.ca_cert)
    http = AuthorizedHttp(build_credentials(settings, subject=subject, scopes=scopes), http=transport)
    return discovery.build(
        "calendar",
        "v3",
        http=http,
        client_options={"api_endpoint": settings.api_endpoint} if settings.api_endpoint else None,
        static_discovery=True,  # the wheel ships the discovery document: no network here
        cache_discovery=False,
        model=model,
    )


class ServicePool:
    """Calendar services, one per thread (httplib2 is not thread-safe) and delegated user; ``close``
    reaches every service built, on any thread. Shared by the reader and the writer."""

    def __init__(
        self, settings: GoogleCalendarSettings, scopes: tuple[str, ...] = (READONLY_SCOPE,), *, fast_json: bool = False
    ) -> None:
        self.settings = settings
        self.scopes = scopes
        self.fast_json = fast_json  # the reader's pool: answers decoded by orjson where exact
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[Any] = []

    def get(self, subject: str | None = None) -> Any:
        """This thread's service for ``subject``. A thread keeps the services of its last
        ``SERVICES_PER_THREAD`` subjects (delegated users) and closes older ones, so an org with
        thousands of calendars does not hold a service for each."""
        services: OrderedDict[str | None, Any] | None = getattr(self._local, "services", None)
        if services is None:
            services = self._local.services = OrderedDict()
        found = services.get(subject)
        if found is not None:
            services.move_to_end(subject)
        else:
            try:
                model = _JsonModel(data_wrapper=False) if self.fast_json else None
                found = build_service(self.settings, subject=subject, scopes=self.scopes, model=model)
            except ConnectorError:
                raise
            except Exception as exc:
                raise classify(exc, "build the Calendar client") from exc
            services[subject] = found
            with self._lock:
                self._open.append(found)
            while len(services) > SERVICES_PER_THREAD:
                _, oldest = services.popitem(last=False)
                with self._lock:
                    self._open.remove(oldest)
                oldest.close()
        return found

    @property
    def open_count(self) -> int:
        with self._lock:
            return len(self._open)

    def close(self) -> None:
        with self._lock:
            services, self._open = self._open, []
        for service in services:
            service.close()
        self._local = threading.local()


@dataclass(frozen=True)
class EventsPage:
    items: list[dict[str, Any]]
    time_zone: str | None
    last: bool
    sync_token: str | None  # Google hands it out on the last page only


class CalendarConnector:
    source = SOURCE

    def __init__(self, settings: GoogleCalendarSettings, mapping: Mapping) -> None:
        self.settings = settings
        self.mapping = mapping
        self._services = ServicePool(settings, fast_json=True)
        self._local = threading.local()

    # -- client ----------------------------------------------------------------------------------------
    def service(self, subject: str | None = None) -> Any:
        """The Calendar service of this thread, per delegated user."""
        return self._services.get(subject)

    def _events(self, subject: str | None) -> Any:
        """``service(subject).events()``, built once per service: the library builds a resource's
        methods (and their docstrings) anew on every call."""
        service = self.service(subject)
        built: dict[str | None, tuple[Any, Any]] | None = getattr(self._local, "events", None)
        if built is None:
            built = self._local.events = {}
        found = built.get(subject)
        if found is None or found[0] is not service:
            found = built[subject] = (service, service.events())
        return found[1]

    def _subject(self, calendar_id: str) -> str | None:
        return calendar_id if self.settings.delegate_per_calendar else None

    def _execute(self, what: str, request: Callable[[], Any]) -> dict[str, Any]:
        """One API call under the retry policy; ``request`` builds a fresh HttpRequest per attempt."""

        def attempt() -> dict[str, Any]:
            try:
                result: dict[str, Any] = request().execute(num_retries=0)
            except Exception as exc:
                raise classify(exc, what) from exc
            return result

        return call_with_retry(self.settings.retry, attempt, api=SOURCE)

    @property
    def open_services(self) -> int:
        """Services built and not yet closed (the engine closes every connector it builds)."""
        return self._services.open_count

    def close(self) -> None:
        self._services.close()
        self._local = threading.local()

    # -- calendars -------------------------------------------------------------------------------------
    def calendar_ids(self) -> list[str]:
        """The calendars to read: the listed ones, or every visible one in an internal domain."""
        config = self.mapping.google_calendar
        if config.calendars == "listed":
            return list(dict.fromkeys(config.calendar_ids))
        domains = {d.lower() for d in self.mapping.identity.internal_domains}
        service = self.service()
        guard = PageGuard("list calendars")
        found: set[str] = set()
        page_token: str | None = None
        while True:

            def request(token: str | None = page_token) -> Any:
                return service.calendarList().list(
                    maxResults=min(self.settings.page_size, CALENDAR_LIST_MAX),
                    minAccessRole="reader",
                    pageToken=token,
                )

            page = self._execute("list calendars", request)
            for entry in page.get("items") or ():
                calendar_id = str(entry.get("id") or "")
                if calendar_id.rpartition("@")[2].lower() in domains and not entry.get("deleted"):
                    found.add(calendar_id)
            page_token = page.get("nextPageToken")
            if not page_token:
                break
            guard.check(page_token)
        log.info("calendars: %d in internal domains", len(found))
        return sorted(found)

    def work_units(self) -> list[WorkUnit]:
        return [WorkUnit(STREAM, calendar_id) for calendar_id in self.calendar_ids()]

    # -- events ----------------------------------------------------------------------------------------
    def pages(self, calendar_id: str, params: dict[str, Any], what: str) -> Iterator[EventsPage]:
        """events.list page by page: each page is handed over before the next one is asked for."""
        events = self._events(self._subject(calendar_id))
        guard = PageGuard(what)
        page_token: str | None = None
        while True:

            def request(token: str | None = page_token) -> Any:
                return events.list(calendarId=calendar_id, pageToken=token, **params)

            response = self._execute(what, request)
            next_page = response.get("nextPageToken")
            page = EventsPage(
                list(response.get("items") or ()),
                response.get("timeZone"),
                last=not next_page,
                sync_token=None if next_page else response.get("nextSyncToken"),
            )
            # Neither the answer nor the page is held while the next one is fetched and decoded.
            del response
            yield page
            del page
            if not next_page:
                return
            guard.check(next_page)
            page_token = next_page

    def read(
        self, unit: WorkUnit, cursor: str | None, *, upper: datetime, full: bool, reconcile: bool
    ) -> Iterator[Batch]:
        calendar_id = unit.partition
        if full or reconcile or not cursor:
            yield from self.full_sync(calendar_id, upper)
            return
        try:
            yield from self.incremental(calendar_id, cursor, upper)
        except FullSyncRequiredError:
            log.warning("calendar %s: sync token no longer valid (410); syncing it afresh", calendar_id)
            yield from self.full_sync(calendar_id, upper)

    def full_sync(self, calendar_id: str, upper: datetime) -> Iterator[Batch]:
        """Every meeting of the window: its live events are what exists, and the final batch
        reconciles this calendar's partition."""
        window = self.mapping.google_calendar
        params = {
            "singleEvents": True,
            "timeMin": iso(upper - timedelta(days=window.past_days)),
            "timeMax": iso(upper + timedelta(days=window.future_days)),
            "maxResults": self.settings.page_size,
        }
        pages = events = 0
        for page in self.pages(calendar_id, params, f"full sync of calendar {calendar_id}"):
            pages += 1
            records = self._records(calendar_id, page, upper)
            page.items.clear()  # made records: the decoded events go before the records are stored, not after
            events += sum(1 for r in records if not r.deleted)
            if not page.last:
                yield Batch(STREAM, calendar_id, records, records_seen=True, meta={"pages": 1})
                del page, records  # not held while the next page is fetched
                continue
            if page.sync_token is None:
                log.warning("calendar %s: full sync ended without a sync token", calendar_id)
            log.info("calendar %s: full sync, %d pages, %d events", calendar_id, pages, events)
            yield Batch(
                STREAM,
                calendar_id,
                records,
                cursor=page.sync_token,
                final=True,
                records_seen=True,
                reconcile=True,
                meta={"pages": 1},
            )

    def incremental(self, calendar_id: str, sync_token: str, upper: datetime) -> Iterator[Batch]:
        """What changed since ``sync_token``; the new token is committed with the last page."""
        params = {"syncToken": sync_token, "singleEvents": True, "maxResults": self.settings.page_size}
        pages = changed = 0
        for page in self.pages(calendar_id, params, f"sync calendar {calendar_id}"):
            pages += 1
            records = self._records(calendar_id, page, upper)
            page.items.clear()  # made records: the decoded events go before the records are stored, not after
            changed += len(records)
            if not page.last:
                yield Batch(STREAM, calendar_id, records, meta={"pages": 1})
                del page, records  # not held while the next page is fetched
                continue
            log.info("calendar %s: incremental, %d pages, %d changes", calendar_id, pages, changed)
            yield Batch(STREAM, calendar_id, records, cursor=page.sync_token, final=True, meta={"pages": 1})

    @staticmethod
    def _records(calendar_id: str, page: EventsPage, upper: datetime) -> list[SourceRecord]:
        where = _zone(page.time_zone)
        return [to_record(calendar_id, item, where, upper) for item in page.items if item.get("id")]
