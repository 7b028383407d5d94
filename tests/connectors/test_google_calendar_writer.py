"""The Google Calendar reminder writer against the sandbox's Calendar emulator, over real HTTP.

Writes are counted from the emulator itself: its store (which events exist, once each, with which
id, times and private property), its request log (the outer batch calls) and its per-route count of
the calls answered inside batches.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import httplib2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.oauth2 import credentials as user_credentials
from google_auth_httplib2 import AuthorizedHttp
from googleapiclient import discovery
from hypothesis import assume, given
from hypothesis import strategies as st
from pydantic import SecretStr

from connectors.base import WriteRequest, WriteResult
from connectors.errors import AuthError
from connectors.google_calendar import CalendarWriter
from connectors.google_calendar.credentials import EVENTS_SCOPE
from connectors.google_calendar.writer import batch_uri, reminder_event_id
from connectors.retry import RetrySettings
from connectors.settings import GoogleCalendarSettings
from engagement.mapping import CalendarPush, Mapping, load_mapping
from sandbox.clock import Clock
from sandbox.credentials import GoogleCredentials
from sandbox.google_calendar import CalendarApp, CalendarStore
from sandbox.google_calendar import errors as calendar_errors
from sandbox.google_calendar.store import valid_event_id
from sandbox.http import Request, Response, Route
from tests.connectors.calendar_emulator import CalendarEmulator, running

SEED = 1
MAPPING_FILE = Path(__file__).resolve().parents[2] / "mappings" / "default.yaml"
NO_WAIT = RetrySettings(max_attempts=6, base_wait_s=0, max_wait_s=0)
UNKNOWN_CALENDAR = "nobody@agency.example"
ID_ALPHABET = re.compile(r"^[0-9a-v]{5,1024}$")


# -- the emulator, with the two faults its injector lacks ---------------------------------------------
class ReminderApp(CalendarApp):
    """The Calendar emulator, plus faults on single parts of a batch (its injector only touches the
    outer request) and batches whose answer is lost after every part ran (a crash after the write)."""

    def __init__(self, store: CalendarStore, clock: Clock, credentials: GoogleCredentials) -> None:
        super().__init__(store, clock, credentials)
        self.part_faults: dict[str, list[int]] = {}  # event id -> statuses to answer its inserts with
        self.lost_answers = 0  # how many of the next batches answer 502 after all their parts ran
        self._faults_lock = threading.Lock()

    def dispatch(self, request: Request, route: Route | None, path_known: bool) -> Response:
        if route is not None and route.name == "events.insert":
            with self._faults_lock:
                planned = self.part_faults.get(json.loads(request.body).get("id"), [])
                status = planned.pop(0) if planned else None
            if status == 429:
                return self.rate_limited(request, 0)
            if status == 403:
                return Response.json(calendar_errors.rate_limited(status=403), 403)
            if status == 400:
                return Response.json(calendar_errors.invalid("Invalid value.").body(), 400)
            if status is not None:
                return self.server_error(request, status)
        answer = super().dispatch(request, route, path_known)
        if route is not None and route.name == "batch":
            with self._faults_lock:
                lost, self.lost_answers = self.lost_answers > 0, max(0, self.lost_answers - 1)
            if lost:
                return self.server_error(request, 502)
        return answer


@dataclass
class Emulator(CalendarEmulator):
    app: ReminderApp
    retry: ClassVar[RetrySettings] = NO_WAIT

    def calendars(self, n: int) -> list[str]:
        return sorted(u.email for u in self.world.users)[:n]

    def reminders_in_store(self, calendar_id: str) -> dict[str, dict[str, Any]]:
        """Event id -> the event as the emulator renders it, for every event written through the API."""
        events = self.store.calendars[calendar_id].events
        return {
            event_id: self.store.get_event(calendar_id, event_id)
            for event_id, record in list(events.items())
            if record.origin == "api"
        }

    def batch_calls(self, since: int = 0) -> list[int]:
        """Status of each outer batch call."""
        return [r.status for r in self.log.records(api="google_calendar", endpoint="batch", since_seq=since)]

    def inserts_in_batches(self) -> int:
        return self.app.batch_part_counts().get("events.insert", 0)


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with running(Emulator, app=ReminderApp, seed=SEED) as emulator:
        yield emulator


@pytest.fixture
def mapping() -> Mapping:
    return load_mapping(MAPPING_FILE)


def with_batch_size(mapping: Mapping, batch_size: int) -> Mapping:
    push = mapping.push.model_copy(update={"google_calendar": CalendarPush(batch_size=batch_size)})
    return mapping.model_copy(update={"push": push})


START = datetime(2031, 3, 4, 9, 0, tzinfo=UTC)


def reminder(calendar_id: str, n: int, **changes: Any) -> WriteRequest:
    start = START + timedelta(days=n % 30, minutes=n)
    payload: dict[str, Any] = {
        "calendar_id": calendar_id,
        "summary": f"Follow up with the client ({n})",
        "description": f"Meeting {n} had no follow-up activity.",
        "start": start.isoformat(),
        "end": (start + timedelta(minutes=15)).isoformat(),
        "time_zone": "UTC",
    }
    payload.update(changes)
    return WriteRequest(f"reminder:{calendar_id}:{n}", "calendar_event", payload)


def interleaved(calendars: list[str], per_calendar: int) -> list[WriteRequest]:
    """Requests of several calendars mixed, as a planner may hand them over."""
    return [reminder(c, n) for n in range(per_calendar) for c in calendars]


def write(emulator: Emulator, mapping: Mapping, requests: list[WriteRequest], **settings: Any) -> list[WriteResult]:
    writer = CalendarWriter(emulator.settings(**settings), mapping)
    try:
        return writer.write(requests)
    finally:
        writer.close()


def assert_written_once(emulator: Emulator, requests: list[WriteRequest]) -> None:
    """Every request's reminder exists exactly once, with its id, times and key, and nothing else."""
    expected: dict[str, dict[str, WriteRequest]] = {}
    for r in requests:
        expected.setdefault(r.payload["calendar_id"], {})[reminder_event_id(r.key)] = r
    for calendar_id, by_id in expected.items():
        stored = emulator.reminders_in_store(calendar_id)
        assert set(stored) == set(by_id)
        for event_id, request in by_id.items():
            event = stored[event_id]
            assert datetime.fromisoformat(event["start"]["dateTime"]) == datetime.fromisoformat(
                request.payload["start"]
            )
            assert datetime.fromisoformat(event["end"]["dateTime"]) == datetime.fromisoformat(request.payload["end"])
            assert event["start"]["timeZone"] == "UTC"
            assert event["extendedProperties"] == {"private": {"accordKey": request.key}}
            assert event["summary"] == request.payload["summary"]
            assert event["description"] == request.payload["description"]
            assert event["transparency"] == "transparent"
            assert event["reminders"] == {"useDefault": False, "overrides": [{"method": "popup", "minutes": 0}]}
            assert "attendees" not in event


# -- the event id --------------------------------------------------------------------------------------
@given(st.text(max_size=300))
def test_reminder_event_id_is_a_valid_deterministic_google_id(key: str) -> None:
    event_id = reminder_event_id(key)
    assert ID_ALPHABET.match(event_id)
    assert valid_event_id(event_id)
    assert event_id == reminder_event_id(key)
    assert event_id.startswith("acc") and len(event_id) == 29


@given(st.text(max_size=50), st.text(max_size=50))
def test_reminder_event_ids_of_different_keys_differ(a: str, b: str) -> None:
    assume(a != b)
    assert reminder_event_id(a) != reminder_event_id(b)


def test_reminder_event_id_is_pinned() -> None:
    # A changed derivation would write every reminder already out there a second time.
    assert reminder_event_id("reminder:k1") == "accmrlhueilq805nka4vh2c01d9mr"
    assert reminder_event_id("") != reminder_event_id(" ")


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        (None, None),
        ("http://127.0.0.1:8123/calendar/v3/", "http://127.0.0.1:8123/batch/calendar/v3"),
        ("https://proxy.example/google/calendar/v3", "https://proxy.example/google/batch/calendar/v3"),
        ("https://proxy.example/other/", "https://proxy.example/batch/calendar/v3"),
    ],
)
def test_batch_uri_follows_the_api_endpoint(endpoint: str | None, expected: str | None) -> None:
    assert batch_uri(endpoint) == expected


# -- batching and exactly once -------------------------------------------------------------------------
def test_reminders_go_out_in_one_batch_per_calendar_and_repeat_as_exists(emulator: Emulator, mapping: Mapping) -> None:
    calendars = emulator.calendars(3)
    requests = interleaved(calendars, 40)
    results = write(emulator, with_batch_size(mapping, 50), requests)

    assert [r.key for r in results] == [r.key for r in requests]
    assert all(r.ok and r.outcome == "created" for r in results)
    assert [r.target_id for r in results] == [reminder_event_id(r.key) for r in requests]
    # 3 calendars x ceil(40 / 50) batches, every insert inside one, nothing else on the wire.
    assert emulator.batch_calls() == [200, 200, 200]
    assert {r.path for r in emulator.log.records()} == {"/batch/calendar/v3"}
    assert emulator.app.batch_part_counts() == {"events.insert": 120}
    assert_written_once(emulator, requests)

    mark = emulator.log.last_seq
    again = write(emulator, with_batch_size(mapping, 50), requests)
    assert [(r.key, r.ok, r.outcome, r.target_id) for r in again] == [
        (r.key, True, "exists", reminder_event_id(r.key)) for r in requests
    ]
    assert emulator.batch_calls(since=mark) == [200, 200, 200]
    assert emulator.inserts_in_batches() == 240
    assert_written_once(emulator, requests)


def test_batch_size_splits_a_calendar_into_several_batches(emulator: Emulator, mapping: Mapping) -> None:
    [calendar_id] = emulator.calendars(1)
    requests = [reminder(calendar_id, n) for n in range(45)]
    results = write(emulator, with_batch_size(mapping, 20), requests)
    assert [r.outcome for r in results] == ["created"] * 45
    assert emulator.batch_calls() == [200, 200, 200]  # 20 + 20 + 5
    assert emulator.inserts_in_batches() == 45
    assert_written_once(emulator, requests)


def test_a_reminder_the_owner_deleted_is_not_recreated(emulator: Emulator, mapping: Mapping) -> None:
    [calendar_id] = emulator.calendars(1)
    requests = [reminder(calendar_id, n) for n in range(3)]
    write(emulator, mapping, requests)
    removed = reminder_event_id(requests[1].key)
    owner = owner_service(emulator)
    try:
        owner.events().delete(calendarId=calendar_id, eventId=removed).execute()
    finally:
        owner.close()

    results = write(emulator, mapping, requests)
    assert [(r.outcome, r.ok) for r in results] == [("exists", True)] * 3
    assert emulator.store.calendars[calendar_id].events[removed].status == "cancelled"
    assert emulator.store.get_event(calendar_id, removed)["status"] == "cancelled"
    assert emulator.inserts_in_batches() == 6


def test_a_write_repeated_after_its_outcome_was_lost_leaves_one_event_per_key(
    emulator: Emulator, mapping: Mapping
) -> None:
    calendars = emulator.calendars(2)
    requests = interleaved(calendars, 25)
    # The first run wrote the first 25 reminders, then crashed before recording any outcome.
    write(emulator, mapping, requests[:25])
    # Its restart writes everything again, and one batch is applied but its answer is lost (502):
    # the writer sends that batch again and finds its own reminders.
    emulator.app.lost_answers = 1
    results = write(emulator, mapping, requests)
    assert all(r.ok for r in results)
    first_half = {r.key for r in requests[:25]}
    lost_calendar = requests[0].payload["calendar_id"]
    for request, result in zip(requests, results, strict=True):
        if request.key in first_half or request.payload["calendar_id"] == lost_calendar:
            assert result.outcome == "exists"
        else:
            assert result.outcome == "created"
    assert emulator.batch_calls() == [200, 200, 502, 200, 200]
    assert_written_once(emulator, requests)


def test_same_key_twice_in_one_call_is_written_once(emulator: Emulator, mapping: Mapping) -> None:
    [calendar_id] = emulator.calendars(1)
    request = reminder(calendar_id, 7)
    results = write(emulator, mapping, [request, request])
    assert sorted(r.outcome for r in results) == ["created", "exists"]
    assert_written_once(emulator, [request])


# -- failures of single parts --------------------------------------------------------------------------
def test_an_unknown_calendar_fails_only_its_reminders(emulator: Emulator, mapping: Mapping) -> None:
    calendars = emulator.calendars(2)
    requests = interleaved([*calendars, UNKNOWN_CALENDAR], 5)
    results = write(emulator, mapping, requests)
    for request, result in zip(requests, results, strict=True):
        if request.payload["calendar_id"] == UNKNOWN_CALENDAR:
            assert (result.ok, result.outcome, result.retriable) == (False, "failed", False)
            assert result.error is not None and "not found" in result.error
            assert request.payload["summary"] not in result.error
        else:
            assert (result.ok, result.outcome) == (True, "created")
    assert emulator.batch_calls() == [200, 200, 200]  # no retry of the 404s
    assert_written_once(emulator, [r for r in requests if r.payload["calendar_id"] != UNKNOWN_CALENDAR])


def test_throttled_and_failed_parts_are_sent_again_in_follow_up_batches(emulator: Emulator, mapping: Mapping) -> None:
    [calendar_id] = emulator.calendars(1)
    requests = [reminder(calendar_id, n) for n in range(40)]
    ids = [reminder_event_id(r.key) for r in requests]
    emulator.app.part_faults = {ids[3]: [429], ids[10]: [503, 500], ids[20]: [403], ids[30]: [400]}
    results = write(emulator, mapping, requests)

    rejected = results[30]
    assert (rejected.ok, rejected.outcome, rejected.retriable) == (False, "failed", False)
    assert rejected.error is not None and "HTTP 400" in rejected.error
    assert all(r.outcome == "created" for n, r in enumerate(results) if n != 30)
    # 40 parts, then the 3 retriable ones (429, 503, 403 userRateLimitExceeded), then the 500 one.
    assert emulator.batch_calls() == [200, 200, 200]
    assert emulator.inserts_in_batches() == 40 + 3 + 1
    assert_written_once(emulator, [r for n, r in enumerate(requests) if n != 30])


def test_parts_still_failing_after_the_retry_budget_are_retriable_failures(
    emulator: Emulator, mapping: Mapping
) -> None:
    [calendar_id] = emulator.calendars(1)
    requests = [reminder(calendar_id, n) for n in range(10)]
    stubborn = reminder_event_id(requests[4].key)
    emulator.app.part_faults = {stubborn: [503] * NO_WAIT.max_attempts}
    results = write(emulator, mapping, requests)

    failed = results[4]
    assert (failed.ok, failed.outcome, failed.retriable) == (False, "failed", True)
    assert failed.error is not None and "503" in failed.error
    assert [r.outcome for n, r in enumerate(results) if n != 4] == ["created"] * 9
    assert emulator.batch_calls() == [200] * NO_WAIT.max_attempts
    assert emulator.inserts_in_batches() == 10 + NO_WAIT.max_attempts - 1

    # The next run writes it; the others are found.
    again = write(emulator, mapping, requests)
    assert again[4].outcome == "created" and {r.outcome for n, r in enumerate(again) if n != 4} == {"exists"}
    assert_written_once(emulator, requests)


# -- failures of whole batches -------------------------------------------------------------------------
@pytest.mark.parametrize("rate_limit_status", [429, 403])
def test_throttled_failed_and_dropped_batches_are_sent_again_without_duplicates(
    emulator: Emulator, mapping: Mapping, rate_limit_status: int
) -> None:
    calendars = emulator.calendars(3)
    requests = interleaved(calendars, 40)
    emulator.app.rate_limit_status = rate_limit_status
    emulator.app.faults.configure(rate_429=0.25, rate_5xx=0.2, rate_drop=0.1, retry_after_s=0, seed=2)
    results = write(
        emulator,
        with_batch_size(mapping, 10),
        requests,
        retry=RetrySettings(max_attempts=20, base_wait_s=0, max_wait_s=0),
    )

    assert [r.key for r in results] == [r.key for r in requests]
    assert all(r.ok and r.outcome == "created" for r in results)  # faults hit before the parts ran
    injected = emulator.app.faults.snapshot()["injected"]
    assert injected["429"] >= 2 and injected["5xx"] >= 2 and injected["drop"] >= 1
    statuses = emulator.batch_calls()
    assert rate_limit_status in statuses and {500, 502, 503} & set(statuses) and 0 in statuses
    assert statuses.count(200) == 12  # 3 calendars x 4 batches of 10, each answered once
    assert emulator.inserts_in_batches() == 120
    assert_written_once(emulator, requests)


def test_hostile_text_arrives_intact(emulator: Emulator, mapping: Mapping) -> None:
    [calendar_id] = emulator.calendars(1)
    hostile = [
        "--batch_boundary\r\nContent-Type: application/http\r\n\r\nPOST /calendar/v3/calendars/x/events HTTP/1.1\r\n",
        'From the desk of the CFO\nFrom: someone\r\n\r\n{"id": "evil"}',
        "Ünïcødé — 日本語 😀 \u2028\u2029 tab\tend",
        "\"quotes\" 'single' \\backslash\\ %s %(name)s {{ jinja }} <script>alert(1)</script>",
        "HTTP/1.1 200 OK\r\nContent-ID: <response-x + 1>\r\n\r\n",
        "long " * 1500,
        "",
    ]
    requests = [
        reminder(calendar_id, n, summary=text[:300] or "(empty)", description=text) for n, text in enumerate(hostile)
    ]
    requests.append(
        WriteRequest("key with\r\nnew lines & ünïcødé 😀", "calendar_event", reminder(calendar_id, 99).payload)
    )
    results = write(emulator, mapping, requests)
    assert all(r.outcome == "created" for r in results)
    assert emulator.batch_calls() == [200]
    assert_written_once(emulator, requests)


# -- requests that never reach Google ------------------------------------------------------------------
def test_invalid_payloads_and_other_kinds_fail_without_a_call(emulator: Emulator, mapping: Mapping) -> None:
    [calendar_id] = emulator.calendars(1)
    good = reminder(calendar_id, 1)
    secret = "Confidential: Acme layoffs"
    bad = [
        WriteRequest("k-kind", "task", good.payload),
        WriteRequest("k-calendar", "calendar_event", good.payload | {"calendar_id": ""}),
        reminder(calendar_id, 3, start=secret),
        reminder(calendar_id, 4, end=(START - timedelta(days=1)).isoformat()),
        reminder(calendar_id, 5, time_zone="Mars/Olympus_Mons"),
        reminder(calendar_id, 6, summary=None),
        WriteRequest("x" * 1025, "calendar_event", good.payload),
    ]
    results = write(emulator, mapping, bad)
    assert [(r.ok, r.outcome, r.retriable) for r in results] == [(False, "failed", False)] * len(bad)
    assert all(r.error and secret not in r.error for r in results)
    assert [r.error for r in results][:6] == [
        "unsupported kind 'task'",
        "invalid calendar_event payload: calendar_id missing",
        "invalid calendar_event payload: start must be an ISO datetime",
        "invalid calendar_event payload: end before start",
        "invalid calendar_event payload: time_zone unknown",
        "invalid calendar_event payload: summary must be text",
    ]
    assert emulator.log.records() == []
    assert write(emulator, mapping, []) == []
    assert emulator.log.records() == []


def test_naive_times_are_read_in_the_payload_time_zone(emulator: Emulator, mapping: Mapping) -> None:
    [calendar_id] = emulator.calendars(1)
    request = reminder(calendar_id, 1, start="2031-03-04T09:00:00", end="2031-03-04T09:15:00")
    assert write(emulator, mapping, [request])[0].outcome == "created"
    event = emulator.store.get_event(calendar_id, reminder_event_id(request.key))
    assert datetime.fromisoformat(event["start"]["dateTime"]) == START


# -- credentials -----------------------------------------------------------------------------------------
def test_expired_access_token_is_renewed_inside_the_call(emulator: Emulator, mapping: Mapping) -> None:
    [calendar_id] = emulator.calendars(1)
    emulator.app.expire_credentials()
    results = write(emulator, mapping, [reminder(calendar_id, n) for n in range(5)])
    assert {r.outcome for r in results} == {"created"}
    calls = [(r.endpoint, r.status) for r in emulator.log.records()]
    assert calls == [("batch", 401), ("token", 200), ("batch", 200)]


def test_credentials_that_cannot_be_renewed_fail_the_whole_call(emulator: Emulator, mapping: Mapping) -> None:
    [calendar_id] = emulator.calendars(1)
    settings = GoogleCalendarSettings(
        api_endpoint=emulator.endpoint, token=SecretStr(emulator.credentials.token), retry=NO_WAIT
    )
    emulator.app.expire_credentials()
    writer = CalendarWriter(settings, mapping)
    try:
        with pytest.raises(AuthError) as raised:
            writer.write([reminder(calendar_id, 1)])
    finally:
        writer.close()
    assert emulator.credentials.token not in str(raised.value)
    assert [(r.endpoint, r.status) for r in emulator.log.records()] == [("batch", 401)]
    assert emulator.reminders_in_store(calendar_id) == {}


def test_service_accounts_ask_for_the_events_scope_as_the_calendar_owner(
    emulator: Emulator, mapping: Mapping, tmp_path: Path
) -> None:
    key = _service_account_key(tmp_path / "sa.json", emulator.server.base_url + "/token")
    settings = GoogleCalendarSettings(
        api_endpoint=emulator.endpoint, service_account_file=str(key), delegate_per_calendar=True, retry=NO_WAIT
    )
    [calendar_id] = emulator.calendars(1)
    writer = CalendarWriter(settings, mapping)
    try:
        creds = writer.service(calendar_id)._http.credentials  # googleapiclient keeps the AuthorizedHttp there
        assert creds.scopes == [EVENTS_SCOPE]
        assert creds._subject == calendar_id  # google-auth has no public getter for it
        # The emulator knows only refresh-token grants: the JWT grant is refused, before any insert.
        with pytest.raises(AuthError):
            writer.write([reminder(calendar_id, 1)])
    finally:
        writer.close()
    assert [(r.endpoint, r.status) for r in emulator.log.records()] == [("token", 400)]


# -- helpers -------------------------------------------------------------------------------------------
def owner_service(emulator: Emulator) -> Any:
    """A plain googleapiclient service, for what the calendar's owner does by hand."""
    token = user_credentials.Credentials(emulator.credentials.token)  # type: ignore[no-untyped-call]  # unannotated upstream
    return discovery.build(
        "calendar",
        "v3",
        http=AuthorizedHttp(token, http=httplib2.Http()),
        client_options={"api_endpoint": emulator.endpoint},
        static_discovery=True,
        cache_discovery=False,
    )


def _service_account_key(path: Path, token_uri: str) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "accord-test",
                "private_key_id": "k1",
                "private_key": pem,
                "client_email": "accord-push@accord-test.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": token_uri,
            }
        )
    )
    return path


class CountingService:
    """A Calendar service that counts how often its events resource is built."""

    def __init__(self, service: Any) -> None:
        self._service = service
        self.events_built = 0

    def events(self) -> Any:
        self.events_built += 1
        return self._service.events()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._service, name)


def test_the_events_resource_is_built_once_per_service(emulator: Emulator, mapping: Mapping) -> None:
    # googleapiclient builds every method of a resource (docstrings included) each time it is asked
    # for one: once per reminder made the writer's CPU grow with the reminders, not the batches.
    [calendar_id] = emulator.calendars(1)
    requests = [reminder(calendar_id, n) for n in range(45)]
    writer = CalendarWriter(emulator.settings(), with_batch_size(mapping, 20))
    services: dict[int, CountingService] = {}
    built = writer.service

    def counting(subject: str | None = None) -> Any:
        service = built(subject)
        return services.setdefault(id(service), CountingService(service))

    writer.service = counting  # type: ignore[method-assign]  # spied on, this writer only
    try:
        results = writer.write(requests)
    finally:
        writer.close()
    assert [r.outcome for r in results] == ["created"] * 45
    assert emulator.batch_calls() == [200, 200, 200]
    assert [s.events_built for s in services.values()] == [1]  # one service, three batches
    assert_written_once(emulator, requests)


def test_each_service_gets_its_own_events_resource(emulator: Emulator, mapping: Mapping) -> None:
    made: list[tuple[str, int]] = []

    class Service:
        def __init__(self, name: str) -> None:
            self.name = name

        def events(self) -> tuple[str, int]:
            made.append((self.name, len(made)))
            return made[-1]

    first, second = Service("first"), Service("second")
    writer = CalendarWriter(emulator.settings(), mapping)
    try:
        assert writer._events(first) is writer._events(first) == ("first", 0)
        assert writer._events(second) == ("second", 1)
        assert writer._events(first) == ("first", 2)  # only the last service's is kept
    finally:
        writer.close()
