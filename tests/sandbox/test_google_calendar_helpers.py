"""Shared pieces of the Calendar emulator tests: a small hand-built world and a served sandbox.

Named like a test module so it lives next to the tests it serves; it holds no tests itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build

from sandbox.clock import Clock
from sandbox.credentials import GoogleCredentials
from sandbox.google_calendar import CalendarApp, CalendarStore
from sandbox.google_calendar.store import world_event_id
from sandbox.http import ApiServer
from sandbox.recorder import RequestLog
from sandbox.world import Attendee, Client, Contact, Engagement, Meeting, User, World

ALICE = "alice@agency.example"  # Europe/Berlin: read-side fixtures (overlap, series)
BOB = "bob@agency.example"  # America/New_York: written to by sync tests
BULK = "bulk@agency.example"  # UTC: many small meetings, for paging
CONTACTS = ("ann@acme.example", "raj@acme.example", "li@acme.example")


def week_anchor(clock: Clock) -> datetime:
    """Monday 00:00 UTC of last week: keeps every fixture within the expansion horizon of now."""
    now = clock.now()
    monday = (now - timedelta(days=now.weekday() + 7)).date()
    return datetime(monday.year, monday.month, monday.day, tzinfo=UTC)


def _user(key: str, first: str, email: str, tz: str, anchor: datetime) -> User:
    return User(key, first, "Example", email, "PM", None, tz, True, anchor - timedelta(days=400), f"acc-{key}")


def _meeting(
    key: str,
    owner: str,
    summary: str,
    start: datetime,
    minutes: int = 60,
    *,
    anchor: datetime,
    **extra: Any,
) -> Meeting:
    organizer = Attendee(f"{owner.split('-')[1]}@agency.example", owner.split("-")[1].title(), "accepted", True)
    return Meeting(
        key=key,
        calendar_owner_key=owner,
        summary=summary,
        description=f"About {summary}",
        start=start,
        end=start + timedelta(minutes=minutes),
        attendees=[organizer, Attendee(CONTACTS[0], "Ann Acme", "needsAction")],
        status=extra.pop("status", "confirmed"),
        created=anchor - timedelta(days=30),
        updated=extra.pop("updated", anchor - timedelta(days=2)),
        engagement_key="eng-1",
        **extra,
    )


def build_world(clock: Clock, *, bulk: int = 0) -> World:
    a = week_anchor(clock)
    users = [
        _user("u-alice", "Alice", ALICE, "Europe/Berlin", a),
        _user("u-bob", "Bob", BOB, "America/New_York", a),
        _user("u-bulk", "Bulk", BULK, "UTC", a),
    ]
    client = Client("client-1", "Acme", ["acme.example"], "Retail", "u-bob", "https://acme.example", a, a)
    contacts = [
        Contact(f"contact-{i}", "client-1", e.split("@")[0].title(), "Acme", e, "Buyer", "+1", a, a)
        for i, e in enumerate(CONTACTS)
    ]
    engagement = Engagement(
        "eng-1",
        "client-1",
        "Acme rollout",
        "Closed Won",
        1000.0,
        date(2027, 1, 1),
        "u-bob",
        "ACME",
        "Acme",
        a,
        a,
    )
    series_start = a + timedelta(hours=15)
    week = timedelta(weeks=1)
    meetings = [
        _meeting("m-kickoff", "u-alice", "Kickoff", a + timedelta(days=1, hours=9), anchor=a),
        _meeting("m-review", "u-alice", "Design review", a + timedelta(days=1, hours=10), anchor=a),
        _meeting("m-offsite", "u-alice", "Offsite", a + timedelta(days=2), 24 * 60, anchor=a, all_day=True),
        _meeting(
            "m-dropped",
            "u-alice",
            "Dropped sync",
            a + timedelta(days=1, hours=12),
            anchor=a,
            status="cancelled",
        ),
        _meeting(
            "m-weekly",
            "u-alice",
            "Weekly check-in",
            series_start,
            30,
            anchor=a,
            recurrence=[
                "RRULE:FREQ=WEEKLY;COUNT=6",
                "EXDATE:" + (series_start + 2 * week).strftime("%Y%m%dT%H%M%SZ"),
            ],
            cancelled_occurrences=[series_start + 3 * week],
            moved_occurrences={series_start + 4 * week: series_start + 4 * week + timedelta(days=1, hours=1)},
        ),
        _meeting("m-bob-1", "u-bob", "Acme status", a + timedelta(days=3, hours=14), anchor=a),
        _meeting("m-bob-2", "u-bob", "Acme planning", a + timedelta(days=4, hours=14), anchor=a),
        _meeting("m-bob-3", "u-bob", "Acme demo", a + timedelta(days=8, hours=16), anchor=a),
        _meeting(
            "m-bob-weekly",
            "u-bob",
            "Acme weekly",
            a + timedelta(days=1, hours=13),
            anchor=a,
            recurrence=["RRULE:FREQ=WEEKLY;COUNT=4"],
        ),
    ]
    meetings += [
        _meeting(f"m-bulk-{i:05d}", "u-bulk", f"Bulk {i}", a + timedelta(minutes=30 * i), 15, anchor=a)
        for i in range(bulk)
    ]
    return World(
        seed=0,
        size="test",
        generated_at=a,
        users=users,
        clients=[client],
        contacts=contacts,
        engagements=[engagement],
        roles=[],
        issues=[],
        meetings=meetings,
    )


def event_id(meeting_key: str) -> str:
    return world_event_id(meeting_key)


@dataclass
class Served:
    """One emulator on loopback with everything a test needs to drive and inspect it."""

    world: World
    clock: Clock
    store: CalendarStore
    app: CalendarApp
    server: ApiServer
    log: RequestLog
    creds: GoogleCredentials

    @property
    def anchor(self) -> datetime:
        return week_anchor(self.clock)

    @property
    def endpoint(self) -> str:
        return self.server.base_url + "/calendar/v3/"

    @property
    def token_uri(self) -> str:
        return self.server.base_url + "/token"

    @contextlib.contextmanager
    def service(self, credentials: Any = None) -> Iterator[Any]:
        """A googleapiclient Calendar service on this emulator, closed afterwards."""
        creds = credentials if credentials is not None else Credentials(self.creds.token)  # type: ignore[no-untyped-call] # google-auth is untyped here
        service = build(
            "calendar",
            "v3",
            credentials=creds,
            client_options={"api_endpoint": self.endpoint},
            static_discovery=True,
        )
        try:
            yield service
        finally:
            service.close()

    def refreshable(self, refresh_token: str | None = None) -> Credentials:
        return Credentials(  # type: ignore[no-untyped-call] # google-auth is untyped here
            self.creds.token,
            refresh_token=refresh_token or self.creds.refresh_token,
            token_uri=self.token_uri,
            client_id=self.creds.client_id,
            client_secret=self.creds.client_secret,
        )

    def stop(self) -> None:
        self.server.stop()
        assert self.server.errors == [], self.server.errors


def serve(*, bulk: int = 0, world: World | None = None) -> Served:
    clock = Clock()
    world = world or build_world(clock, bulk=bulk)
    store = CalendarStore.from_world(world, clock)
    creds = GoogleCredentials()
    app = CalendarApp(store, clock, creds)
    log = RequestLog()
    server = ApiServer(app, log)
    app.base_url = server.base_url
    server.start()
    return Served(world, clock, store, app, server, log, creds)


def list_all(request_factory: Any, service: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every item of a paged events.list, and every page (to check where the tokens are)."""
    items: list[dict[str, Any]] = []
    pages: list[dict[str, Any]] = []
    request = request_factory
    while request is not None:
        page = request.execute()
        pages.append(page)
        items.extend(page.get("items", []))
        request = service.events().list_next(request, page)
    return items, pages
