"""The Google Calendar connector against the sandbox's Calendar emulator, over real HTTP.

Truth comes from the generated world (the first full sync) or from the emulator's own store, read
in-process (after changes). Every test also asserts the requests the connector made, from the
emulator's request log: how many per calendar, and which sync token or window was sent.
"""

from __future__ import annotations

import json
import random
import re
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import httplib2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dateutil.rrule import rrulestr
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account
from google_auth_httplib2 import AuthorizedHttp
from googleapiclient import discovery
from googleapiclient.errors import HttpError
from pydantic import SecretStr, ValidationError

from accord.settings import AccordSettings
from connectors.base import WorkUnit
from connectors.errors import (
    AuthError,
    ConfigError,
    PermanentError,
    QuotaExhaustedError,
    RateLimitedError,
    TransientError,
)
from connectors.google_calendar import CalendarConnector
from connectors.google_calendar import connector as calendar_connector
from connectors.google_calendar.connector import SERVICES_PER_THREAD, ServicePool, _JsonModel
from connectors.google_calendar.credentials import READONLY_SCOPE, build_credentials
from connectors.google_calendar.errors import FullSyncRequiredError, classify
from connectors.incremental import Batch
from connectors.retry import RetrySettings
from connectors.settings import GoogleCalendarSettings
from engagement.mapping import CalendarMapping, IdentityMapping, Mapping, load_mapping
from engagement.records import CalendarEvent, SourceRecord, iso, parse_datetime
from flows.engine import pull_source
from sandbox.google_calendar import PRINCIPAL, EventQuery
from sandbox.google_calendar.store import world_event_id
from sandbox.recorder import RecordedRequest
from sandbox.world import World
from store import Store
from tests.connectors.calendar_emulator import CalendarEmulator, running

SEED = 1
MAPPING_FILE = Path(__file__).resolve().parents[2] / "mappings" / "default.yaml"
NO_WAIT = RetrySettings(max_attempts=10, base_wait_s=0, max_wait_s=0)


# -- the emulator ------------------------------------------------------------------------------------
@dataclass
class Emulator(CalendarEmulator):
    retry: ClassVar[RetrySettings] = NO_WAIT

    def calendars(self) -> list[str]:
        return sorted(u.email for u in self.world.users)

    def busiest(self) -> str:
        return max(self.calendars(), key=lambda c: sum(1 for _ in self.store.calendars[c].events))

    def events_requests(self, calendar_id: str | None = None, since: int = 0) -> list[RecordedRequest]:
        path = None if calendar_id is None else f"/calendars/{calendar_id}/events$"
        return self.log.records(api="google_calendar", endpoint="events.list", path=path, since_seq=since)

    def truth(self, calendar_id: str, upper: datetime, mapping: Mapping) -> dict[str, tuple[str, str]]:
        """record id -> (start, end) of what the emulator holds in the window, read in-process."""
        window = mapping.google_calendar
        query = EventQuery(
            calendar_id=calendar_id,
            single_events=True,
            time_min=upper - timedelta(days=window.past_days),
            time_max=upper + timedelta(days=window.future_days),
            max_results=2500,
        )
        out: dict[str, tuple[str, str]] = {}
        page = self.store.list_events(query)
        while True:
            zone = ZoneInfo(page["timeZone"])
            for item in page["items"]:
                out[f"{calendar_id}/{item['id']}"] = (
                    _instant(item["start"], zone),
                    _instant(item["end"], zone),
                )
            if "nextPageToken" not in page:
                return out
            page = self.store.list_events(
                EventQuery(calendar_id=calendar_id, page_token=page["nextPageToken"], max_results=2500)
            )


def _instant(value: dict[str, str], zone: ZoneInfo) -> str:
    if "date" in value:
        day = datetime.fromisoformat(value["date"])
        return str(iso(day.replace(tzinfo=zone)))
    return str(iso(parse_datetime(value["dateTime"])))


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with running(Emulator, seed=SEED) as emulator:
        yield emulator


@pytest.fixture
def mapping() -> Mapping:
    return load_mapping(MAPPING_FILE)


def with_calendars(mapping: Mapping, **changes: Any) -> Mapping:
    return mapping.model_copy(update={"google_calendar": CalendarMapping(**changes)})


@pytest.fixture
def upper() -> datetime:
    # Event times fall on whole minutes: a bound at :15 s cannot sit on an event's edge.
    return datetime.now(UTC).replace(second=15, microsecond=0)


def api_client(emulator: Emulator) -> Any:
    """A plain googleapiclient service with the sandbox token, for the writes people make."""
    token = user_credentials.Credentials(emulator.credentials.token)  # type: ignore[no-untyped-call]  # unannotated upstream
    http = AuthorizedHttp(token, http=httplib2.Http())
    return discovery.build(
        "calendar",
        "v3",
        http=http,
        client_options={"api_endpoint": emulator.endpoint},
        static_discovery=True,
        cache_discovery=False,
    )


def read_all(
    connector: CalendarConnector,
    calendars: list[str],
    cursors: dict[str, str | None],
    upper: datetime,
    **flags: bool,
) -> dict[str, list[Batch]]:
    out: dict[str, list[Batch]] = {}
    for calendar_id in calendars:
        unit = WorkUnit("events", calendar_id)
        out[calendar_id] = list(
            connector.read(
                unit,
                cursors.get(calendar_id),
                upper=upper,
                full=flags.get("full", False),
                reconcile=flags.get("reconcile", False),
            )
        )
    return out


def seen_in(batches: list[Batch]) -> set[str]:
    """The ids a reconciling read says exist, over all its batches (what the engine stages)."""
    return {i for b in batches for i in b.existing_ids()}


def records_of(batches: list[Batch]) -> list[SourceRecord]:
    return [r for b in batches for r in b.records]


def final_cursor(batches: list[Batch]) -> str:
    assert batches[-1].final
    assert batches[-1].cursor
    assert all(b.cursor is None for b in batches[:-1])
    return batches[-1].cursor


# -- truth from the generated world ----------------------------------------------------------------
def world_truth(world: World, upper: datetime, mapping: Mapping) -> dict[str, dict[str, tuple[str, str]]]:
    """Per calendar: record id -> (start, end), series expanded, computed from the world alone."""
    window = mapping.google_calendar
    low = upper - timedelta(days=window.past_days)
    high = upper + timedelta(days=window.future_days)
    users = {u.key: u for u in world.users}
    truth: dict[str, dict[str, tuple[str, str]]] = {u.email: {} for u in world.users}
    for m in world.meetings:
        if m.status == "cancelled":
            continue
        owner = users[m.calendar_owner_key]
        base = world_event_id(m.key)
        spans: list[tuple[str, datetime, datetime]] = []
        if m.recurrence:
            rule = rrulestr("\n".join(m.recurrence), dtstart=m.start, forceset=True)
            for original in rule:
                if original in m.cancelled_occurrences:
                    continue
                start = m.moved_occurrences.get(original, original)
                spans.append((f"{base}_{original:%Y%m%dT%H%M%SZ}", start, start + (m.end - m.start)))
        elif m.all_day:
            zone = ZoneInfo(owner.timezone)
            first = m.start.date()
            last = max(m.end.date(), first + timedelta(days=1))
            spans.append((base, datetime.combine(first, time(), zone), datetime.combine(last, time(), zone)))
        else:
            spans.append((base, m.start, m.end))
        for event_id, start, end in spans:
            if end > low and start < high:
                truth[owner.email][f"{owner.email}/{event_id}"] = (str(iso(start)), str(iso(end)))
    return truth


def spans(records: list[SourceRecord]) -> dict[str, tuple[str, str]]:
    return {r.id: (r.data["start"], r.data["end"]) for r in records if not r.deleted}


# -- full sync ---------------------------------------------------------------------------------------
def test_full_sync_equals_the_world_per_calendar(emulator: Emulator, mapping: Mapping, upper: datetime) -> None:
    connector = CalendarConnector(emulator.settings(page_size=25), mapping)
    try:
        units = connector.work_units()
        batches = read_all(connector, [u.partition for u in units], {}, upper)
    finally:
        connector.close()

    truth = world_truth(emulator.world, upper, mapping)
    assert [u.partition for u in units] == emulator.calendars()
    for calendar_id, got in batches.items():
        records = records_of(got)
        assert spans(records) == truth[calendar_id], calendar_id
        assert len(records) == len(spans(records)), "a full sync lists no tombstones and no duplicates"
        assert got[-1].reconcile and seen_in(got) == set(truth[calendar_id])
        final_cursor(got)
        assert all(r.partition == calendar_id and r.id == f"{calendar_id}/{r.data['event_id']}" for r in records)

    # The world has what makes this interesting: series with cancelled, moved and EXDATE'd
    # instances, and all-day meetings read in the calendar's own zone.
    everything = [r for got in batches.values() for r in records_of(got)]
    assert sum(1 for r in everything if r.data["recurring_event_id"]) > 50
    assert any(r.data["all_day"] for r in everything)
    moved = {
        f"{world_event_id(m.key)}_{o:%Y%m%dT%H%M%SZ}" for m in emulator.world.meetings for o in m.moved_occurrences
    }
    assert moved & {r.data["event_id"] for r in everything}

    # The records carry what the engagement model reads.
    event = CalendarEvent.from_record(next(r for r in everything if len(r.data["attendees"]) > 1))
    assert event is not None and event.organizer and event.attendees and event.start < event.end
    assert any(a.organizer for a in event.attendees)

    # Requests: the window on every page, pages as the page size implies, no sync token.
    for calendar_id, expected in truth.items():
        requests = emulator.events_requests(calendar_id)
        assert len(requests) == max(1, -(-len(expected) // 25)), calendar_id
        for n, r in enumerate(requests):
            assert r.query["singleEvents"] == ["true"]
            assert r.query["timeMin"] == [iso(upper - timedelta(days=180))]
            assert r.query["timeMax"] == [iso(upper + timedelta(days=120))]
            assert r.query["maxResults"] == ["25"]
            assert "syncToken" not in r.query and "showDeleted" not in r.query
            assert ("pageToken" in r.query) == (n > 0)


def test_pages_are_handed_over_before_the_next_page_is_requested(
    emulator: Emulator, mapping: Mapping, upper: datetime
) -> None:
    calendar_id = emulator.busiest()
    connector = CalendarConnector(emulator.settings(page_size=5), mapping)
    try:
        stream = connector.read(WorkUnit("events", calendar_id), None, upper=upper, full=False, reconcile=False)
        assert emulator.events_requests(calendar_id) == []
        first = next(stream)
        assert len(emulator.events_requests(calendar_id)) == 1
        assert len(first.records) == 5 and first.cursor is None and not first.final
        second = next(stream)
        assert len(emulator.events_requests(calendar_id)) == 2
        assert len(second.records) == 5 and second.cursor is None
        rest = list(stream)
    finally:
        connector.close()
    batches = [first, second, *rest]
    assert len(emulator.events_requests(calendar_id)) == len(batches) > 5
    assert all(len(b.records) <= 5 for b in batches)
    final_cursor(batches)
    assert batches[-1].reconcile and seen_in(batches) == {r.id for r in records_of(batches)}


class _Item(dict[str, Any]):
    """A decoded event that can be watched (a plain dict cannot have weak references)."""


def test_a_page_is_gone_before_the_next_is_decoded(
    emulator: Emulator, mapping: Mapping, upper: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read holds one page at a time: when the next answer arrives, neither the events nor the
    records of the pages before are alive (the answer, the page and its items are all dropped)."""
    watched: list[weakref.ref[Any]] = []
    alive_at_answer: list[int] = []
    deserialize, to_record = _JsonModel.deserialize, calendar_connector.to_record

    def watched_deserialize(self: _JsonModel, content: Any) -> Any:
        alive_at_answer.append(sum(1 for ref in watched if ref() is not None))
        decoded = deserialize(self, content)
        if isinstance(decoded, dict) and isinstance(decoded.get("items"), list):
            decoded["items"] = [_Item(item) for item in decoded["items"]]
            watched.extend(weakref.ref(item) for item in decoded["items"])
        return decoded

    def watched_to_record(*args: Any) -> SourceRecord:
        record = to_record(*args)
        watched.append(weakref.ref(record))
        return record

    monkeypatch.setattr(_JsonModel, "deserialize", watched_deserialize)
    monkeypatch.setattr(calendar_connector, "to_record", watched_to_record)
    connector = CalendarConnector(emulator.settings(page_size=5), mapping)
    unit = WorkUnit("events", emulator.busiest())
    pages = 0
    try:
        for batch in connector.read(unit, None, upper=upper, full=True, reconcile=False):
            pages += len(batch.records) > 0
            del batch  # as the engine's pull_unit does once the batch is stored
    finally:
        connector.close()
    assert pages > 2 and len(alive_at_answer) >= pages
    assert alive_at_answer == [0] * len(alive_at_answer)


# -- increments ------------------------------------------------------------------------------------------
def test_incremental_returns_exactly_the_changes_then_one_call_per_calendar(
    emulator: Emulator, mapping: Mapping, upper: datetime
) -> None:
    calendars = emulator.calendars()
    connector = CalendarConnector(emulator.settings(), mapping)
    try:
        initial = read_all(connector, calendars, {}, upper)
        cursors: dict[str, str | None] = {c: final_cursor(b) for c, b in initial.items()}

        # People change things: a mutation round, plus writes through the API.
        changes = emulator.store.mutate(random.Random(11), 14, emulator.clock.now(), late_share=0.0)
        touched = {c.id.split("_")[0] for c in changes}
        api = api_client(emulator)
        target = emulator.busiest()
        zone = ZoneInfo(emulator.store.calendars[target].time_zone)
        day = (upper + timedelta(days=9)).astimezone(zone).date()
        api.events().insert(
            calendarId=target,
            body={
                "id": "offsite0accord01",
                "summary": "Offsite",
                "start": {"date": day.isoformat()},
                "end": {"date": (day + timedelta(days=1)).isoformat()},
                "attendees": [{"email": target}, {"email": "jane@client.example"}],
            },
        ).execute()
        one_off = next(
            r
            for r in records_of(initial[target])
            if not r.data["recurring_event_id"] and r.data["event_id"] not in touched
        )
        api.events().patch(calendarId=target, eventId=one_off.data["event_id"], body={"summary": "Renamed"}).execute()
        other = next(c for c in calendars if c != target and emulator.truth(c, upper, mapping))
        gone = next(
            i.split("/", 1)[1]
            for i in sorted(emulator.truth(other, upper, mapping))
            if i.split("/", 1)[1].split("_")[0] not in touched
        )
        api.events().delete(calendarId=other, eventId=gone).execute()
        api.close()

        mark = emulator.log.last_seq
        batches = read_all(connector, calendars, cursors, upper)
        requests = emulator.events_requests(since=mark)
        second_mark = emulator.log.last_seq
        new_cursors: dict[str, str | None] = {c: final_cursor(b) for c, b in batches.items()}
        quiet = read_all(connector, calendars, new_cursors, upper)
    finally:
        connector.close()

    # Exactly the changes: each record is a changed event (or an instance of a changed series),
    # each change shows, and deletions arrive as deleted records.
    changed = {c.id: c.kind for c in changes}
    changed |= {"offsite0accord01": "create", one_off.data["event_id"]: "update", gone: "delete"}
    got = [r for b in batches.values() for r in records_of(b)]
    assert got

    def covering(r: SourceRecord) -> set[str]:
        return {r.data["event_id"], r.data.get("recurring_event_id")} & set(changed)

    assert all(covering(r) for r in got), [r.id for r in got if not covering(r)]
    covered = set().union(*(covering(r) for r in got))
    assert covered == set(changed)
    for r in got:
        kinds = {changed[i] for i in covering(r)}
        assert r.deleted == bool(kinds & {"delete", "cancel"}), (r.id, kinds)
    by_id = {r.id: r for r in got}
    assert by_id[f"{other}/{gone}"].deleted
    assert by_id[f"{target}/{one_off.data['event_id']}"].data["summary"] == "Renamed"
    offsite = by_id[f"{target}/offsite0accord01"].data
    assert offsite["all_day"] is True
    assert offsite["start"] == iso(datetime.combine(day, time(), zone))
    assert offsite["attendees"][1] == {
        "email": "jane@client.example",
        "response": "needsAction",
        "organizer": False,
    }

    # What changed now matches the emulator (moved instances at their new times, and so on).
    for calendar_id in calendars:
        truth = emulator.truth(calendar_id, upper, mapping)
        for r in records_of(batches[calendar_id]):
            if r.deleted:
                assert r.id not in truth
            elif r.id in truth:
                assert (r.data["start"], r.data["end"]) == truth[r.id]
            else:  # moved out of the window: arrives through the token, harmless
                assert r.data["end"] <= iso(upper - timedelta(days=180)) or r.data["start"] >= iso(
                    upper + timedelta(days=120)
                )

    # Requests: one per calendar, carrying the token of the full sync and nothing of the window.
    assert sorted(q.path for q in requests) == sorted(f"/calendar/v3/calendars/{c}/events" for c in calendars)
    for q in requests:
        calendar_id = q.path.split("/")[4]
        assert q.query["syncToken"] == [cursors[calendar_id]]
        assert q.query["singleEvents"] == ["true"]
        assert not {"timeMin", "timeMax", "showDeleted", "updatedMin", "orderBy"} & set(q.query)
        assert q.status == 200

    # Nothing changed since: one call per calendar, no records, the token moves on regardless.
    quiet_requests = emulator.events_requests(since=second_mark)
    assert len(quiet_requests) == len(calendars)
    assert {r.query["syncToken"][0] for r in quiet_requests} == set(new_cursors.values())
    assert all(records_of(b) == [] and b[-1].cursor for b in quiet.values())


def test_reconcile_means_a_full_sync(emulator: Emulator, mapping: Mapping, upper: datetime) -> None:
    calendar_id = emulator.busiest()
    connector = CalendarConnector(emulator.settings(), mapping)
    try:
        cursor = final_cursor(read_all(connector, [calendar_id], {}, upper)[calendar_id])
        mark = emulator.log.last_seq
        batches = read_all(connector, [calendar_id], {calendar_id: cursor}, upper, reconcile=True)
    finally:
        connector.close()
    requests = emulator.events_requests(calendar_id, since=mark)
    assert len(requests) == 1 and "timeMin" in requests[0].query and "syncToken" not in requests[0].query
    assert batches[calendar_id][-1].reconcile
    assert seen_in(batches[calendar_id]) == set(emulator.truth(calendar_id, upper, mapping))


# -- the sync engine: stale tokens, late changes, partition-scoped reconciliation -------------------------
def test_stale_token_resyncs_that_calendar_alone_through_the_engine(
    emulator: Emulator, mapping: Mapping, upper: datetime, tmp_path: Path
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'accord.sqlite'}")
    store.create_all()
    settings = AccordSettings(
        database_url=f"sqlite:///{tmp_path / 'accord.sqlite'}",
        google_calendar=emulator.settings(page_size=20),
    )
    connectors: list[CalendarConnector] = []

    def factory(source: str, s: AccordSettings, m: Mapping) -> CalendarConnector:
        assert source == "google_calendar" and s.google_calendar is not None
        connectors.append(CalendarConnector(s.google_calendar, m))
        return connectors[-1]

    def pull(at: datetime) -> Any:
        return pull_source(
            "google_calendar",
            settings,
            mapping,
            store,
            upper=at,
            full=False,
            reconcile=False,
            connector_factory=factory,
        )

    def stored(calendar_id: str) -> dict[str, tuple[str, str]]:
        window_low = upper - timedelta(days=180)
        window_high = upper + timedelta(days=120)
        out = {}
        for r in store.iter_records("google_calendar", "events"):
            start, end = parse_datetime(r.data["start"]), parse_datetime(r.data["end"])
            assert start is not None and end is not None
            if r.partition == calendar_id and end > window_low and start < window_high:
                out[r.id] = (r.data["start"], r.data["end"])
        return out

    try:
        first = pull(upper)
        calendars = emulator.calendars()
        assert first.streams["events"].partitions == len(calendars)
        for c in calendars:
            assert stored(c) == emulator.truth(c, upper, mapping)

        # A round of changes, half of them committed late (invisible until the next round).
        emulator.store.mutate(random.Random(5), 20, emulator.clock.now(), late_share=0.5)
        stale = emulator.busiest()
        bystander = next(c for c in calendars if c != stale)
        emulator.store.invalidate_sync_tokens(stale)
        # Records the store holds that neither calendar has any more (e.g. lost tombstones).
        ghost = {
            "event_id": "ghost00001",
            "start": str(iso(upper)),
            "end": str(iso(upper + timedelta(hours=1))),
        }
        for c in (stale, bystander):
            store.apply_batch(
                [
                    SourceRecord(
                        "google_calendar",
                        "events",
                        f"{c}/ghost00001",
                        upper,
                        {**ghost, "calendar": c},
                        partition=c,
                    )
                ]
            )

        mark = emulator.log.last_seq
        second = pull(upper + timedelta(seconds=10))
        requests = emulator.events_requests(since=mark)

        stale_requests = [r for r in requests if f"/calendars/{stale}/" in r.path]
        assert stale_requests[0].status == 410 and "syncToken" in stale_requests[0].query
        assert all("timeMin" in r.query and "syncToken" not in r.query for r in stale_requests[1:])
        assert len(stale_requests) == 1 + -(-len(emulator.truth(stale, upper, mapping)) // 20)
        for c in calendars:
            if c != stale:
                mine = [r for r in requests if f"/calendars/{c}/" in r.path]
                assert len(mine) == 1 and "syncToken" in mine[0].query and "timeMin" not in mine[0].query, c
        assert second.streams["events"].reconciled_deleted >= 1
        live = store.record_ids("google_calendar", "events")
        assert f"{stale}/ghost00001" not in live
        assert f"{bystander}/ghost00001" in live  # other calendars are not reconciled

        # The late half becomes visible; sync tokens catch it (they follow commits, not stamps).
        assert emulator.store.release_pending()
        pull(upper + timedelta(seconds=20))
        for c in calendars:
            expected = emulator.truth(c, upper, mapping)
            if c == bystander:
                expected[f"{c}/ghost00001"] = (ghost["start"], ghost["end"])
            assert stored(c) == expected, c
        tokens = {p: v for (_, stream, p), v in store.cursors("google_calendar").items() if stream == "events"}
        assert set(tokens) == set(calendars) and all(v and v.startswith("C") for v in tokens.values())
    finally:
        store.dispose()
    assert connectors and all(c.open_services == 0 for c in connectors)  # closed by the engine


# -- credentials -----------------------------------------------------------------------------------------
def test_expired_access_token_is_renewed_transparently(emulator: Emulator, mapping: Mapping, upper: datetime) -> None:
    calendar_id = emulator.busiest()
    connector = CalendarConnector(emulator.settings(), mapping)
    try:
        cursor = final_cursor(read_all(connector, [calendar_id], {}, upper)[calendar_id])
        emulator.app.expire_credentials()
        mark = emulator.log.last_seq
        emulator.store.mutate(random.Random(2), 5, emulator.clock.now(), late_share=0.0)
        batches = read_all(connector, [calendar_id], {calendar_id: cursor}, upper)
    finally:
        connector.close()
    final_cursor(batches[calendar_id])
    calls = [(r.endpoint, r.status) for r in emulator.log.records(since_seq=mark)]
    assert calls == [("events.list", 401), ("token", 200), ("events.list", 200)]


def test_token_only_credentials_fail_with_auth_error_and_no_retries(
    emulator: Emulator, mapping: Mapping, upper: datetime
) -> None:
    settings = GoogleCalendarSettings(
        api_endpoint=emulator.endpoint, token=SecretStr(emulator.credentials.token), retry=NO_WAIT
    )
    calendar_id = emulator.busiest()
    emulator.app.expire_credentials()
    connector = CalendarConnector(settings, mapping)
    try:
        with pytest.raises(AuthError) as raised:
            list(connector.read(WorkUnit("events", calendar_id), None, upper=upper, full=False, reconcile=False))
    finally:
        connector.close()
    assert emulator.credentials.token not in str(raised.value)
    assert [(r.endpoint, r.status) for r in emulator.log.records()] == [("events.list", 401)]


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
                "client_email": "accord-sync@accord-test.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": token_uri,
            }
        )
    )
    return path


def test_service_account_credentials_with_delegation(emulator: Emulator, mapping: Mapping, tmp_path: Path) -> None:
    key = _service_account_key(tmp_path / "sa.json", emulator.server.base_url + "/token")
    settings = GoogleCalendarSettings(
        api_endpoint=emulator.endpoint,
        service_account_file=str(key),
        delegate_per_calendar=True,
        retry=NO_WAIT,
    )
    creds = build_credentials(settings, subject="mei.dubois@agency.example")
    assert isinstance(creds, service_account.Credentials)
    assert creds.scopes == [READONLY_SCOPE]
    assert creds._subject == "mei.dubois@agency.example"  # google-auth has no public getter for it

    # The JWT grant goes to the key's token_uri; the emulator only knows refresh-token grants and
    # refuses it, which must surface as an AuthError before any Calendar call.
    listed = with_calendars(mapping, calendars="listed", calendar_ids=["mei.dubois@agency.example"])
    connector = CalendarConnector(settings, listed)
    try:
        with pytest.raises(AuthError):
            list(
                connector.read(
                    WorkUnit("events", "mei.dubois@agency.example"),
                    None,
                    upper=datetime.now(UTC),
                    full=True,
                    reconcile=False,
                )
            )
    finally:
        connector.close()
    assert [(r.endpoint, r.status) for r in emulator.log.records()] == [("token", 400)]

    with pytest.raises(ConfigError, match="service account key"):
        build_credentials(settings.model_copy(update={"service_account_file": str(tmp_path / "missing.json")}))


def test_a_thread_keeps_the_services_of_its_last_delegated_users_only(emulator: Emulator, tmp_path: Path) -> None:
    key = _service_account_key(tmp_path / "sa.json", emulator.server.base_url + "/token")
    settings = GoogleCalendarSettings(
        api_endpoint=emulator.endpoint, service_account_file=str(key), delegate_per_calendar=True, retry=NO_WAIT
    )
    pool = ServicePool(settings)
    try:
        users = [f"user{n}@agency.example" for n in range(3 * SERVICES_PER_THREAD)]
        built = {user: pool.get(user) for user in users}
        assert pool.open_count == SERVICES_PER_THREAD  # the older ones were closed, not kept
        assert pool.get(users[-1]) is built[users[-1]]  # a recent user's service is reused
        assert pool.get(users[0]) is not built[users[0]]  # an evicted one is built again
        assert pool.open_count == SERVICES_PER_THREAD
    finally:
        pool.close()
    assert pool.open_count == 0


def test_settings_refuse_incomplete_credentials() -> None:
    with pytest.raises(ValidationError, match="client_id and client_secret"):
        GoogleCalendarSettings(refresh_token=SecretStr("r"))
    with pytest.raises(ValidationError, match="service_account_file"):
        GoogleCalendarSettings(token=SecretStr("t"), delegate_per_calendar=True)


# -- faults and errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("rate_limit_status", [429, 403])
def test_throttling_server_errors_and_drops_are_retried_by_tenacity(
    emulator: Emulator, mapping: Mapping, upper: datetime, rate_limit_status: int
) -> None:
    calendars = emulator.calendars()
    emulator.app.rate_limit_status = rate_limit_status
    emulator.app.faults.configure(rate_429=0.2, rate_5xx=0.2, rate_drop=0.05, retry_after_s=0, seed=3)
    connector = CalendarConnector(emulator.settings(page_size=15), mapping)
    try:
        assert [u.partition for u in connector.work_units()] == calendars
        batches = read_all(connector, calendars, {}, upper)
    finally:
        connector.close()
    truth = world_truth(emulator.world, upper, mapping)
    for calendar_id in calendars:
        assert spans(records_of(batches[calendar_id])) == truth[calendar_id]
    injected = emulator.app.faults.snapshot()["injected"]
    assert injected["429"] >= 3 and injected["5xx"] >= 3
    statuses = [r.status for r in emulator.log.records()]
    assert rate_limit_status in statuses and {500, 502, 503} & set(statuses)
    # Each page was asked for until it came back: one 200 per page, the faults in between.
    ok = [r for r in emulator.events_requests() if r.status == 200]
    assert len(ok) == sum(max(1, -(-len(t) // 15)) for t in truth.values())


def test_unknown_listed_calendar_is_a_config_error(emulator: Emulator, mapping: Mapping, upper: datetime) -> None:
    listed = with_calendars(mapping, calendars="listed", calendar_ids=["nobody@agency.example"])
    connector = CalendarConnector(emulator.settings(), listed)
    try:
        assert connector.work_units() == [WorkUnit("events", "nobody@agency.example")]
        with pytest.raises(ConfigError, match=re.escape("nobody@agency.example")):
            list(connector.read(connector.work_units()[0], None, upper=upper, full=False, reconcile=False))
    finally:
        connector.close()
    assert [(r.endpoint, r.status) for r in emulator.log.records()] == [("events.list", 404)]


def _http_error(status: int, reason: str | None, headers: dict[str, str] | None = None) -> HttpError:
    body: dict[str, Any] = {"error": {"code": status, "message": "Something (contact jane@client.example)"}}
    if reason:
        body["error"]["errors"] = [{"domain": "x", "reason": reason, "message": "m"}]
    resp = httplib2.Response({"status": status, **(headers or {})})
    return HttpError(resp, json.dumps(body).encode(), uri="https://example.invalid/calendar/v3/x")


@pytest.mark.parametrize(
    ("status", "reason", "expected"),
    [
        (401, "authError", AuthError),
        (403, "forbidden", AuthError),
        (403, "rateLimitExceeded", RateLimitedError),
        (403, "userRateLimitExceeded", RateLimitedError),
        (429, "rateLimitExceeded", RateLimitedError),
        (429, None, RateLimitedError),
        (403, "quotaExceeded", QuotaExhaustedError),
        (403, "dailyLimitExceeded", QuotaExhaustedError),
        (404, "notFound", ConfigError),
        (410, "fullSyncRequired", FullSyncRequiredError),
        (410, "deleted", PermanentError),
        (400, "invalid", PermanentError),
        (500, "backendError", TransientError),
        (503, "backendError", TransientError),
    ],
)
def test_classify_http_errors(status: int, reason: str | None, expected: type[Exception]) -> None:
    error = classify(_http_error(status, reason), "list events of cal@agency.example")
    assert type(error) is expected
    assert error.status == status
    assert error.retriable == (expected in (TransientError, RateLimitedError))
    assert "jane@client.example" not in str(error)  # Google's message text is never copied


def test_classify_reads_retry_after_and_network_errors() -> None:
    limited = classify(_http_error(429, "rateLimitExceeded", {"retry-after": "7"}), "x")
    assert isinstance(limited, RateLimitedError) and limited.retry_after == 7.0
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    dated = classify(_http_error(429, "rateLimitExceeded", {"retry-after": later}), "x")
    assert isinstance(dated, RateLimitedError) and dated.retry_after is not None
    assert 25 <= dated.retry_after <= 30
    assert isinstance(classify(TimeoutError("timed out"), "x"), TransientError)
    assert isinstance(classify(ConnectionResetError(), "x"), TransientError)
    assert isinstance(classify(httplib2.ServerNotFoundError("dns"), "x"), TransientError)


# -- which calendars -------------------------------------------------------------------------------------
def test_internal_calendars_are_filtered_by_domain_across_pages(emulator: Emulator, mapping: Mapping) -> None:
    elsewhere = mapping.model_copy(
        update={"identity": IdentityMapping(internal_domains=["accord-sandbox.iam.gserviceaccount.com"])}
    )
    connector = CalendarConnector(emulator.settings(page_size=4), mapping)
    other = CalendarConnector(emulator.settings(page_size=4), elsewhere)
    try:
        units = connector.work_units()
        assert all(u.stream == "events" for u in units)
        assert [u.partition for u in units] == emulator.calendars()
        assert PRINCIPAL not in {u.partition for u in units}  # visible, but not in an internal domain
        assert [u.partition for u in other.work_units()] == [PRINCIPAL]
    finally:
        connector.close()
        other.close()
    pages = emulator.log.records(endpoint="calendarList.list")
    assert len(pages) == 2 * 3  # 11 calendars, 4 a page
    assert all(r.query["minAccessRole"] == ["reader"] and r.query["maxResults"] == ["4"] for r in pages)
    assert [("pageToken" in r.query) for r in pages] == [False, True, True] * 2


def test_listed_calendars_are_read_as_listed_without_listing(
    emulator: Emulator, mapping: Mapping, upper: datetime
) -> None:
    listed = with_calendars(mapping, calendars="listed", calendar_ids=["noah.dubois@agency.example", PRINCIPAL])
    connector = CalendarConnector(emulator.settings(), listed)
    try:
        units = connector.work_units()
    finally:
        connector.close()
    assert units == [WorkUnit("events", "noah.dubois@agency.example"), WorkUnit("events", PRINCIPAL)]
    assert emulator.log.count(endpoint="calendarList.list") == 0


def test_one_events_resource_per_service_across_calendars_and_pages(
    emulator: Emulator, mapping: Mapping, upper: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """googleapiclient builds a resource's methods anew on every ``service.events()``: the reader
    builds it once per service (per thread and delegated user) and reuses it for every page."""
    built: list[Any] = []
    connector = CalendarConnector(emulator.settings(page_size=5), mapping)
    try:
        service = connector.service()
        real = service.events
        monkeypatch.setattr(service, "events", lambda: built.append(1) or real())
        calendars = emulator.calendars()[:3]
        batches = read_all(connector, calendars, {}, upper, full=True)
        pages = sum(len(b) for b in batches.values())
        assert pages > len(calendars) and len(built) == 1
        connector.close()
        # After close the pool builds a new service, and with it a new resource.
        assert connector.service() is not service
        read_all(connector, calendars[:1], {}, upper, full=True)
        assert len(built) == 1
    finally:
        connector.close()


def test_the_readers_json_model_decodes_as_the_librarys(emulator: Emulator, mapping: Mapping) -> None:
    from googleapiclient.model import JsonModel

    from connectors.google_calendar.connector import _JsonModel

    bodies = [
        b'{"items": [{"id": "e1", "summary": "\xc3\xa9 \\"x\\" <b>", "attendees": []}], "nextSyncToken": "t"}',
        b"{}",
        b"[18446744073709551616]",
        b'["\\ud800"]',
        b"[NaN]",
        b"not json",
        b"",
        b"plain text",
        b"\xef\xbb\xbf{}",
    ]
    ours, library = _JsonModel(data_wrapper=False), JsonModel(data_wrapper=False)
    for body in bodies:
        assert repr(ours.deserialize(body)) == repr(library.deserialize(body)), body
    assert repr(ours.deserialize('{"a": 1}')) == repr(library.deserialize('{"a": 1}'))
    with pytest.raises(UnicodeDecodeError):
        library.deserialize(b'["\xff"]')
    with pytest.raises(UnicodeDecodeError):
        ours.deserialize(b'["\xff"]')
    wrapped_ours, wrapped_library = _JsonModel(data_wrapper=True), JsonModel(data_wrapper=True)
    assert wrapped_ours.deserialize(b'{"data": {"a": 1}}') == wrapped_library.deserialize(b'{"data": {"a": 1}}')
    # The reader's services use it; a writer's pool keeps the library's own.
    connector = CalendarConnector(emulator.settings(), mapping)
    try:
        assert isinstance(connector.service()._model, _JsonModel)
    finally:
        connector.close()
