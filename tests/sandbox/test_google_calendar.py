"""The Calendar emulator driven by google-api-python-client over HTTP: reads, auth and faults."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import google.auth.exceptions
import pytest
import requests
from google.oauth2.credentials import Credentials
from googleapiclient.errors import HttpError

from sandbox.generator import generate_world
from sandbox.google_calendar import PRINCIPAL
from sandbox.google_calendar.store import world_event_id
from tests.sandbox.test_google_calendar_helpers import ALICE, BOB, BULK, Served, event_id, list_all, serve

BULK_SIZE = 2600


@pytest.fixture(scope="module")
def env() -> Iterator[Served]:
    """Read-only tests share one emulator (nothing here writes)."""
    served = serve(bulk=BULK_SIZE)
    yield served
    served.stop()


@pytest.fixture
def fresh() -> Iterator[Served]:
    """Tests that change credentials, faults or the clock get their own emulator."""
    served = serve()
    yield served
    served.stop()


def rfc(moment: datetime) -> str:
    return moment.isoformat()


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in items]


# -- calendars ---------------------------------------------------------------------------------------
def test_calendar_list_pages_through_every_calendar(env: Served) -> None:
    with env.service() as svc:
        pages = []
        request = svc.calendarList().list(maxResults=2)
        while request is not None:
            page = request.execute()
            pages.append(page)
            request = svc.calendarList().list_next(request, page)
    entries = [e for p in pages for e in p["items"]]
    assert [e["id"] for e in entries] == [PRINCIPAL, ALICE, BOB, BULK]
    assert [e.get("primary", False) for e in entries] == [True, False, False, False]
    assert entries[1]["timeZone"] == "Europe/Berlin" and entries[1]["accessRole"] == "writer"
    assert ["nextPageToken" in p for p in pages] == [True, False]
    assert ["nextSyncToken" in p for p in pages] == [False, True]


def test_primary_is_the_principals_own_calendar(env: Served) -> None:
    with env.service() as svc:
        calendar = svc.calendars().get(calendarId="primary").execute()
        events = svc.events().list(calendarId="primary").execute()
    assert calendar["id"] == PRINCIPAL and calendar["timeZone"] == "UTC"
    assert events["items"] == [] and "nextSyncToken" in events


def test_unknown_calendar_is_404_not_found(env: Served) -> None:
    with env.service() as svc, pytest.raises(HttpError) as caught:
        svc.events().list(calendarId="nobody@agency.example").execute()
    assert caught.value.status_code == 404
    assert caught.value.error_details[0]["reason"] == "notFound"


# -- events.list ---------------------------------------------------------------------------------------
def test_full_sync_pages_with_list_next_and_sync_token_only_on_last_page(env: Served) -> None:
    since = env.log.last_seq
    with env.service() as svc:
        items, pages = list_all(svc.events().list(calendarId=BULK, maxResults=1000), svc)
    assert [len(p["items"]) for p in pages] == [1000, 1000, 600]
    assert ["nextPageToken" in p for p in pages] == [True, True, False]
    assert ["nextSyncToken" in p for p in pages] == [False, False, True]
    assert sorted(ids(items)) == sorted(event_id(f"m-bulk-{i:05d}") for i in range(BULK_SIZE))
    calls = env.log.records(endpoint="events.list", since_seq=since)
    assert len(calls) == 3
    assert all(c.query["maxResults"] == ["1000"] for c in calls)
    assert "pageToken" not in calls[0].query and "pageToken" in calls[2].query


def test_max_results_above_2500_is_clamped(env: Served) -> None:
    with env.service() as svc:
        page = svc.events().list(calendarId=BULK, maxResults=5000).execute()
        default = svc.events().list(calendarId=BULK).execute()
    assert len(page["items"]) == 2500 and "nextPageToken" in page
    assert len(default["items"]) == 250


def test_time_window_is_an_overlap_query_with_exclusive_bounds(env: Served) -> None:
    a = env.anchor
    ten = a + timedelta(days=1, hours=10)  # Kickoff is 09:00-10:00 UTC, Design review 10:00-11:00
    with env.service() as svc:

        def summaries(**kw: Any) -> set[str]:
            page = svc.events().list(calendarId=ALICE, singleEvents=True, **kw).execute()
            return {i["summary"] for i in page["items"]}

        after_ten = summaries(timeMin=rfc(ten), timeMax=rfc(ten + timedelta(hours=1)))
        before_ten = summaries(timeMin=rfc(ten - timedelta(hours=2)), timeMax=rfc(ten))
        # the same instant written with another offset
        berlin = (ten + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S") + "+01:00"
        same = summaries(timeMin=berlin, timeMax=rfc(ten + timedelta(hours=1)))
        # the all-day Offsite covers day 2 in the calendar's zone (Europe/Berlin)
        noon = a + timedelta(days=2, hours=12)
        all_day = summaries(timeMin=rfc(noon), timeMax=rfc(noon + timedelta(minutes=1)))
        late_evening = summaries(
            timeMin=rfc(a + timedelta(days=2, hours=23, minutes=30)),
            timeMax=rfc(a + timedelta(days=3, hours=1)),
        )
    assert after_ten == {"Design review"}
    assert before_ten == {"Kickoff"}
    assert same == after_ten
    assert all_day == {"Offsite"}
    assert "Offsite" not in late_evening  # 23:30 UTC is already the next day in Berlin


def test_empty_time_range_is_400_time_range_empty(env: Served) -> None:
    moment = rfc(env.anchor)
    with env.service() as svc, pytest.raises(HttpError) as caught:
        svc.events().list(calendarId=ALICE, timeMin=moment, timeMax=moment).execute()
    assert caught.value.status_code == 400
    assert caught.value.error_details[0]["reason"] == "timeRangeEmpty"


def test_single_events_expand_rrule_with_exdate_cancelled_and_moved_instances(env: Served) -> None:
    a = env.anchor
    series = event_id("m-weekly")
    start = a + timedelta(hours=15)
    week = timedelta(weeks=1)
    window = {"timeMin": rfc(a), "timeMax": rfc(a + 8 * week)}

    def suffix(moment: datetime) -> str:
        return moment.strftime("%Y%m%dT%H%M%SZ")

    with env.service() as svc:
        live = svc.events().list(calendarId=ALICE, singleEvents=True, **window).execute()["items"]
        with_deleted = svc.events().list(calendarId=ALICE, singleEvents=True, showDeleted=True, **window).execute()
    instances = {i["id"]: i for i in live if i.get("recurringEventId") == series}
    expected = {f"{series}_{suffix(start + k * week)}" for k in (0, 1, 4, 5)}  # week 2 EXDATE, week 3 cancelled
    assert set(instances) == expected
    assert series not in ids(live)  # the master is hidden
    moved = instances[f"{series}_{suffix(start + 4 * week)}"]
    moved_start = datetime.fromisoformat(moved["start"]["dateTime"])
    assert moved_start == start + 4 * week + timedelta(days=1, hours=1)
    assert datetime.fromisoformat(moved["originalStartTime"]["dateTime"]) == start + 4 * week
    first = instances[f"{series}_{suffix(start)}"]
    assert "recurrence" not in first and first["summary"] == "Weekly check-in"
    assert first["start"]["dateTime"].endswith("+01:00") or first["start"]["dateTime"].endswith("+02:00")
    cancelled = [i for i in with_deleted["items"] if i["status"] == "cancelled" and i.get("recurringEventId") == series]
    assert [c["id"] for c in cancelled] == [f"{series}_{suffix(start + 3 * week)}"]
    assert set(cancelled[0]) == {"kind", "etag", "id", "status", "recurringEventId", "originalStartTime"}


def test_without_expansion_masters_and_exceptions_are_returned(env: Served) -> None:
    series = event_id("m-weekly")
    with env.service() as svc:
        plain = svc.events().list(calendarId=ALICE).execute()["items"]
        deleted = svc.events().list(calendarId=ALICE, showDeleted=True).execute()["items"]
    by_id = {i["id"]: i for i in plain}
    assert by_id[series]["recurrence"][0] == "RRULE:FREQ=WEEKLY;COUNT=6"
    exceptions = [i for i in plain if i.get("recurringEventId") == series]
    # the moved instance, and the cancelled one (shown when singleEvents and showDeleted are both false)
    assert sorted(i["status"] for i in exceptions) == ["cancelled", "confirmed"]
    assert event_id("m-dropped") not in by_id
    dropped = next(i for i in deleted if i["id"] == event_id("m-dropped"))
    assert dropped["status"] == "cancelled" and dropped["summary"] == "Dropped sync"


def test_order_by_start_time_and_updated(env: Served) -> None:
    with env.service() as svc:
        by_start = svc.events().list(calendarId=ALICE, singleEvents=True, orderBy="startTime").execute()["items"]
        by_updated = svc.events().list(calendarId=ALICE, orderBy="updated").execute()["items"]
        with pytest.raises(HttpError) as caught:
            svc.events().list(calendarId=ALICE, orderBy="startTime").execute()
    starts = [
        datetime.fromisoformat(i["start"].get("dateTime") or i["start"]["date"] + "T00:00:00+01:00") for i in by_start
    ]
    assert starts == sorted(starts) and len(starts) >= 7
    stamps = [i["updated"] for i in by_updated if i["status"] != "cancelled"]
    assert stamps == sorted(stamps)
    assert caught.value.status_code == 400


def test_instances_and_get_of_an_instance_id(env: Served) -> None:
    series = event_id("m-weekly")
    start = env.anchor + timedelta(hours=15)
    with env.service() as svc:
        instances = svc.events().instances(calendarId=ALICE, eventId=series).execute()["items"]
        second = (
            svc.events()
            .get(
                calendarId=ALICE,
                eventId=f"{series}_{(start + timedelta(weeks=1)).strftime('%Y%m%dT%H%M%SZ')}",
            )
            .execute()
        )
        with pytest.raises(HttpError) as exdated:
            svc.events().get(
                calendarId=ALICE,
                eventId=f"{series}_{(start + timedelta(weeks=2)).strftime('%Y%m%dT%H%M%SZ')}",
            ).execute()
    assert len(instances) == 4
    assert second["recurringEventId"] == series and second["iCalUID"] == f"{series}@google.com"
    assert exdated.value.status_code == 404


def test_text_search_and_event_fields(env: Served) -> None:
    with env.service() as svc:
        found = svc.events().list(calendarId=ALICE, q="kickoff").execute()["items"]
        by_attendee = svc.events().list(calendarId=BOB, q="ann@acme.example").execute()["items"]
    assert [i["summary"] for i in found] == ["Kickoff"]
    event = found[0]
    assert event["id"] == world_event_id("m-kickoff") and event["eventType"] == "default"
    assert event["organizer"] == {"email": ALICE, "displayName": "Alice", "self": True}
    assert event["attendees"][0]["self"] is True and event["attendees"][1]["responseStatus"] == "needsAction"
    assert event["updated"].endswith("Z") and len(event["updated"]) == len("2023-09-16T08:44:36.296Z")
    assert event["etag"].startswith('"') and event["etag"][1:-1].isdigit()
    assert len(by_attendee) == 4


def test_time_zone_and_max_attendees_shape_the_response(env: Served) -> None:
    with env.service() as svc:
        page = svc.events().list(calendarId=ALICE, q="kickoff", timeZone="Asia/Tokyo", maxAttendees=1).execute()
        entry = svc.calendarList().get(calendarId=ALICE).execute()
    event = page["items"][0]
    assert page["timeZone"] == "Asia/Tokyo" and event["start"]["dateTime"].endswith("+09:00")
    assert event["start"]["timeZone"] == "Europe/Berlin"  # the event keeps its own zone
    assert event["attendeesOmitted"] is True and [a["email"] for a in event["attendees"]] == [ALICE]
    assert entry["id"] == ALICE and entry["summary"] == "Alice Example"


def test_updated_min_includes_deletions_and_refuses_old_bounds(env: Served) -> None:
    recent = env.anchor - timedelta(days=3)
    with env.service() as svc:
        items = svc.events().list(calendarId=ALICE, updatedMin=rfc(recent)).execute()["items"]
        with pytest.raises(HttpError) as caught:
            svc.events().list(calendarId=ALICE, updatedMin=rfc(env.clock.now() - timedelta(days=40))).execute()
    assert event_id("m-dropped") in ids(items)  # deleted entries come back without showDeleted
    assert caught.value.status_code == 410
    assert caught.value.error_details[0]["reason"] == "updatedMinTooLongAgo"


def test_a_generated_world_is_served_whole() -> None:
    anchor = datetime.now(UTC).replace(second=0, microsecond=0)
    served = serve(world=generate_world("small", 5, anchor))
    try:
        with served.service() as svc:
            seen: list[str] = []
            for user in served.world.users:
                items, _ = list_all(svc.events().list(calendarId=user.email, showDeleted=True, maxResults=50), svc)
                seen += [i["id"] for i in items if "recurringEventId" not in i]
        assert sorted(seen) == sorted(world_event_id(m.key) for m in served.world.meetings)
    finally:
        served.stop()


# -- authentication ------------------------------------------------------------------------------------
def test_wrong_token_gets_401_and_no_data(fresh: Served) -> None:
    wrong = Credentials("ya29.wrong")  # type: ignore[no-untyped-call] # google-auth is untyped here
    with fresh.service(wrong) as svc, pytest.raises(google.auth.exceptions.RefreshError):
        svc.events().list(calendarId=ALICE).execute()
    statuses = [r.status for r in fresh.log.records(endpoint="events.list")]
    assert statuses and set(statuses) == {401}
    raw = requests.get(
        fresh.endpoint + f"calendars/{ALICE}/events", headers={"Authorization": "Bearer nope"}, timeout=5
    )
    assert raw.status_code == 401 and "invalid_token" in raw.headers["WWW-Authenticate"]
    assert raw.json() == {
        "error": {
            "code": 401,
            "message": "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
            "cookie or other valid authentication credential. See "
            "https://developers.google.com/identity/sign-in/web/devconsole-project.",
            "errors": [
                {
                    "message": "Invalid Credentials",
                    "domain": "global",
                    "reason": "authError",
                    "location": "Authorization",
                    "locationType": "header",
                }
            ],
            "status": "UNAUTHENTICATED",
        }
    }
    missing = requests.get(fresh.endpoint + f"calendars/{ALICE}/events", timeout=5)
    assert missing.status_code == 401 and missing.json()["error"]["errors"][0]["reason"] == "required"


def test_refreshable_credentials_survive_expired_tokens(fresh: Served) -> None:
    credentials = fresh.refreshable()
    with fresh.service(credentials) as svc:
        before = svc.events().list(calendarId=ALICE).execute()
        since = fresh.log.last_seq
        fresh.app.expire_credentials()
        after = svc.events().list(calendarId=ALICE).execute()
    assert ids(after["items"]) == ids(before["items"])
    calls = [(r.endpoint, r.status) for r in fresh.log.records(since_seq=since)]
    assert calls == [("events.list", 401), ("token", 200), ("events.list", 200)]
    assert credentials.token != fresh.creds.token
    old = requests.get(
        fresh.endpoint + "users/me/calendarList",
        headers={"Authorization": f"Bearer {fresh.creds.token}"},
        timeout=5,
    )
    assert old.status_code == 401


def test_issued_tokens_expire_by_the_sandbox_clock_and_bad_refresh_is_invalid_grant(fresh: Served) -> None:
    with fresh.service(fresh.refreshable()) as svc:
        fresh.app.expire_credentials()
        svc.calendarList().list().execute()  # refreshes once
        fresh.clock.advance(3600)
        svc.calendarList().list().execute()  # the issued token is now too old: refreshes again
    assert [r.status for r in fresh.log.records(endpoint="token")] == [200, 200]
    fresh.app.expire_credentials()
    stale = fresh.refreshable("1//not-the-refresh-token")
    refused = pytest.raises(google.auth.exceptions.RefreshError, match="invalid_grant")
    with fresh.service(stale) as svc, refused:
        svc.calendarList().list().execute()


# -- faults --------------------------------------------------------------------------------------------
def test_rate_limit_is_429_and_a_retry_succeeds(fresh: Served) -> None:
    fresh.app.faults.configure(rate_429=1.0)
    with fresh.service() as svc:
        with pytest.raises(HttpError) as caught:
            svc.events().list(calendarId=ALICE).execute()
        request = svc.events().list(calendarId=ALICE)
        request._sleep = lambda _seconds: fresh.app.faults.configure(rate_429=0.0)  # the library's backoff hook
        page = request.execute(num_retries=2)
    assert caught.value.status_code == 429
    assert caught.value.error_details[0]["reason"] == "rateLimitExceeded"
    assert caught.value.resp["retry-after"] == "1"
    assert page["items"]
    assert [r.status for r in fresh.log.records(endpoint="events.list")] == [429, 429, 200]


def test_403_user_rate_limit_variant_is_retried_by_the_library(fresh: Served) -> None:
    fresh.app.rate_limit_status = 403
    fresh.app.faults.configure(rate_429=1.0)
    with fresh.service() as svc:
        with pytest.raises(HttpError) as caught:
            svc.events().list(calendarId=ALICE).execute()
        request = svc.events().list(calendarId=ALICE)
        request._sleep = lambda _seconds: fresh.app.faults.configure(rate_429=0.0)
        request.execute(num_retries=1)
    assert caught.value.status_code == 403
    assert caught.value.error_details[0] == {
        "domain": "usageLimits",
        "reason": "userRateLimitExceeded",
        "message": "Rate Limit Exceeded",
    }


def test_server_errors_are_backend_errors(fresh: Served) -> None:
    fresh.app.faults.configure(rate_5xx=1.0)
    with fresh.service() as svc, pytest.raises(HttpError) as caught:
        svc.calendarList().list().execute()
    assert caught.value.status_code in (500, 502, 503)
    assert caught.value.error_details[0]["reason"] == "backendError"
    body = json.loads(caught.value.content)
    assert body["error"]["code"] == caught.value.status_code
